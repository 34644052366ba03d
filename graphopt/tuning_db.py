"""Where tuning records live: one MetaSchedule JSON database per target (and its options)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import TargetError
from .target_infra import Target


def database_dir(db_root: Path, target: Target) -> Path:
    """Per-target sub-directory: the target's options hash keeps CPUs apart."""
    digest = hashlib.sha256(target.cache_key().encode()).hexdigest()[:10]
    return Path(db_root) / f"{target.name}-{digest}"


def resolve_database(db_root: Path, target: Target) -> Path:
    """The records directory for compile --db; a clear error when there is none."""
    path = database_dir(db_root, target)
    if not (path / "database_tuning_record.json").is_file():
        raise TargetError(
            f"no tuning records for target {target.name} ({target.cache_key()}) in {db_root}; "
            f"run `graphopt tune ... --db {db_root}` with the same target options first"
        )
    return path
