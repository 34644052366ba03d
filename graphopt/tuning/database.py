"""Where tuning records live: one MetaSchedule JSON database per target (and its options)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import TargetError
from ..target_infra import Target

# Target options that choose which kernels exist but not how one kernel compiles: records are
# keyed by the kernel's own structure, so these need not split a database (nor, when a new one
# is added, orphan the databases tuned before it existed).
_NOT_CODEGEN = frozenset({"schedules", "fast_erf", "fast_softmax", "layout"})


def database_dir(db_root: Path, target: Target) -> Path:
    """Per-target sub-directory: the hash of the options that shape code keeps CPUs apart."""
    options = {k: v for k, v in target.options_dict().items() if k not in _NOT_CODEGEN}
    key = f"{target.name}:{sorted(options.items())}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return Path(db_root) / f"{target.name}-{digest}"


def resolve_database(db_root: Path, target: Target) -> Path:
    """The records directory for compile --db; a clear error when there is none.

    `graphopt tune` leaves in `applied/` the records that beat the default schedules; that
    selection is used when present, else every record.
    """
    path = database_dir(db_root, target)
    if (path / "applied" / "database_tuning_record.json").is_file():
        return path / "applied"
    if not (path / "database_tuning_record.json").is_file():
        raise TargetError(
            f"no tuning records for target {target.name} ({target.cache_key()}) in {db_root}; "
            f"run `graphopt tune ... --db {db_root}` with the same target options first"
        )
    return path
