"""CPU features are real: +dotprod code contains `sdot`, runs on a Cortex-A76 and is rejected
(SIGILL) by a Cortex-A53, as qemu emulates each core's instruction set."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import tvm
from aarch64_tools import needs_aarch64_tools
from tvm.script import ir as I
from tvm.script import relax as R

from graphopt import bundle
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.target_infra import STAGES, make_target

pytestmark = [
    pytest.mark.arm,
    needs_aarch64_tools,
]

M, K, N = 8, 64, 16


@I.ir_module
class Int8Matmul:
    @R.function
    def main(a: R.Tensor((8, 64), "int8"), b: R.Tensor((64, 16), "int8")):
        with R.dataflow():
            c = R.matmul(a, b, out_dtype="int32")
            R.output(c)
        return c


def build_bundle(directory, options: dict) -> None:
    """The arm target's stages and export on a Relax module, plus the bundle files."""
    target = make_target("arm", options)
    mod = Int8Matmul
    with target.tvm_target():
        for stage, names in target.stages().items():
            assert stage in STAGES
            mod = run_passes(mod, instantiate(parse_pipeline(",".join(names))), stage=stage)
    executable = tvm.compile(mod, target=target.tvm_target(), relax_pipeline=None)
    directory.mkdir()
    target.export(executable, directory / "model.so")
    manifest = {
        "library": "model.so",
        "inputs": [
            {"name": "a", "shape": [M, K], "dtype": "int8"},
            {"name": "b", "shape": [K, N], "dtype": "int8"},
        ],
        "outputs": [{"name": "c", "shape": [M, N], "dtype": "int32"}],
    }
    target.export_bundle(directory, manifest)


def sdot_count(library) -> int:
    asm = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(library)], capture_output=True, text=True
    ).stdout
    return sum(1 for line in asm.splitlines() if "\tsdot\t" in line)


@pytest.fixture(scope="module")
def dotprod_bundle(tmp_path_factory):
    # schedules=false: LLVM's loop vectorizer turns the int8 reduction into sdot; the
    # schedule-cpu matmul tile vectorizes over columns instead (smull), without sdot.
    out = tmp_path_factory.mktemp("isa") / "dotprod"
    build_bundle(out, {"mattr": "+dotprod", "schedules": "false"})
    return out


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a": rng.integers(-128, 128, (M, K)).astype(np.int8),
        "b": rng.integers(-128, 128, (K, N)).astype(np.int8),
    }


def test_dotprod_emits_sdot_and_runs_on_a76(dotprod_bundle):
    assert sdot_count(dotprod_bundle / "model.so") > 0
    feeds = inputs()
    got = bundle.run_emulated(dotprod_bundle, feeds, cpu="cortex-a76")["c"]
    want = feeds["a"].astype(np.int32) @ feeds["b"].astype(np.int32)
    np.testing.assert_array_equal(got, want)


def test_dotprod_is_rejected_by_a53(dotprod_bundle):
    with pytest.raises(bundle.BundleError, match="SIGILL"):
        bundle.run_emulated(dotprod_bundle, inputs(), cpu="cortex-a53")


def test_generic_build_has_no_sdot_and_runs_on_a53(tmp_path):
    build_bundle(tmp_path / "generic", {"schedules": "false"})
    assert sdot_count(tmp_path / "generic" / "model.so") == 0
    feeds = inputs()
    got = bundle.run_emulated(tmp_path / "generic", feeds, cpu="cortex-a53")["c"]
    np.testing.assert_array_equal(got, feeds["a"].astype(np.int32) @ feeds["b"].astype(np.int32))
