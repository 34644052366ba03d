"""A bounded, fixed-seed mutation fuzz of `graphopt compile` over a few seed models.

Each case (byte flips, truncation, attribute and input-shape mutations) runs the real CLI in a
subprocess with a timeout. Asserted: no traceback, exit code 0 (compiled), 2 (user error) or
3 (internal error naming the pass), no hang, and nothing written outside the case's own
directory. The fast suite runs a small slice, the slow suite a larger one; the outcome counts
are printed (pytest -s) for the record.
"""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
from pathlib import Path

import model_builders as mb
import onnx
import pytest

SEEDS = {"mlp": mb.mlp, "cnn": mb.cnn, "mobilenet_block": mb.mobilenet_block}
TIMEOUT_S = 180
HUGE = [0, -1, -7, 1 << 31, 1 << 40, 3]


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def _attribute(model: onnx.ModelProto, rng: random.Random) -> bytes:
    nodes = [n for n in model.graph.node if any(a.type in (2, 7) for a in n.attribute)]
    if not nodes:
        return _shape(model, rng)
    attr = rng.choice([a for a in rng.choice(nodes).attribute if a.type in (2, 7)])
    if attr.type == onnx.AttributeProto.INT:
        attr.i = rng.choice(HUGE)
    elif attr.ints:
        attr.ints[rng.randrange(len(attr.ints))] = rng.choice(HUGE)
    return model.SerializeToString()


def _shape(model: onnx.ModelProto, rng: random.Random) -> bytes:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dim = dims[rng.randrange(len(dims))]
    dim.Clear()
    if rng.random() < 0.2:
        dim.dim_param = "n"
    else:
        dim.dim_value = max(0, rng.choice(HUGE))
    return model.SerializeToString()


def _opset(model: onnx.ModelProto, rng: random.Random) -> bytes:
    model.opset_import[0].version = rng.choice([1, 6, 99, 10**6])
    return model.SerializeToString()


def make_case(index: int) -> tuple[str, bytes]:
    """Case `index` of the corpus: the same bytes on every machine and run."""
    rng = random.Random(1000 + index)
    seed = rng.choice(sorted(SEEDS))
    model = SEEDS[seed]()
    kind = rng.choice(["flip", "flip", "truncate", "attribute", "attribute", "shape", "opset"])
    if kind == "flip":
        data = _flip(model.SerializeToString(), rng)
    elif kind == "truncate":
        data = _truncate(model.SerializeToString(), rng)
    else:
        data = {"attribute": _attribute, "shape": _shape, "opset": _opset}[kind](model, rng)
    return f"{index:03d}-{seed}-{kind}", data


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in root.rglob("*"):
        if skip in path.parents or path == skip:
            continue
        info = path.lstat()
        out[str(path)] = (info.st_size, info.st_mtime_ns)
    return out


def run_case(tmp_path: Path, index: int) -> str:
    """Run one case; returns its outcome ('compiled', 'user-error', 'internal-error')."""
    name, data = make_case(index)
    case = tmp_path / name
    case.mkdir()
    (case / "model.onnx").write_bytes(data)
    before = _snapshot(tmp_path, case)
    env = {k: v for k, v in os.environ.items() if k != "GRAPHOPT_DEBUG"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "graphopt.cli", "compile", "model.onnx", "-o", "out", "-q"]
            + ["-O", str(index % 4)],
            cwd=case,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env={**env, "GRAPHOPT_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: no answer within {TIMEOUT_S}s (hang)")
    assert "Traceback" not in proc.stderr, f"{name}:\n{proc.stderr[-3000:]}"
    assert proc.returncode in (0, 2, 3), f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    if proc.returncode:
        assert proc.stderr.strip().splitlines()[0].startswith("error: "), proc.stderr
        assert not (case / "out").exists(), f"{name}: failed but wrote out/"
    assert _snapshot(tmp_path, case) == before, f"{name} touched files outside its directory"
    assert sorted(p.name for p in case.iterdir()) <= ["model.onnx", "out"], name
    return {0: "compiled", 2: "user-error", 3: "internal-error"}[proc.returncode]


def _campaign(tmp_path: Path, indices) -> collections.Counter:
    outcomes = collections.Counter(run_case(tmp_path, i) for i in indices)
    print(f"\nfuzz: {sum(outcomes.values())} cases: {dict(outcomes)}")
    return outcomes


def test_fuzz_small_slice(tmp_path):
    """Fast suite: 8 cases (about 30 s)."""
    _campaign(tmp_path, range(8))


@pytest.mark.slow
def test_fuzz_campaign(tmp_path):
    """Slow suite: 150 cases."""
    _campaign(tmp_path, range(8, 158))
