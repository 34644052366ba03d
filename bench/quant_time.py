"""How long int8 quantization takes: calibration plus sensitivity and the --max-drop search.

    python -m bench.quant_time [--models mobilenet_v2,efficientnet_lite0] [--repeats 3]

Runs compile's quantization step (`quantize_step`: the probe build, calibration, equalization,
bias correction, per-layer sensitivity, the budget search) on the real models after the O2
graph passes, with the bench split's 32 calibration crops, without and with `--max-drop 1`,
and reports the seconds the manifest records (`quantization.seconds`), medians over repeats.
The artifact build and its budget check come after and are not counted. Time on a quiet
machine: anything else running shows up one for one. Writes bench/results/quant_time.*.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

from bench.bench_int8 import calibration_images
from bench.writing import write_results
from graphopt.compress.int8.flow import QuantOptions, quantize_step
from graphopt.frontend import import_onnx
from graphopt.machine import machine_info
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.tables import format_table
from graphopt.target_infra import host_target

RESULTS = Path(__file__).resolve().parent / "results"
GRAPH_PASSES = "fold-constants,simplify,fold-batchnorm,fold-constants,cse,dce"  # O2's, before fuse


def one_run(model, calib: Path, max_drop: float | None) -> dict[str, float]:
    target = host_target()
    with target.tvm_target():
        mod = run_passes(model.mod, instantiate(parse_pipeline(GRAPH_PASSES)), stage="graph")
    opts = QuantOptions(str(calib), "mse", sensitivity_samples=32, max_drop=max_drop)
    step = quantize_step(mod, model.inputs, opts, target)
    q = step.manifest
    acc = q.get("accuracy") or {}
    seconds = {**q["seconds"], **{f"sensitivity_{k}": v for k, v in acc["seconds"].items()}}
    seconds["total"] = q["seconds"]["calibration"] + q["seconds"].get("sensitivity", 0.0)
    return seconds


def main() -> None:
    from bench.models.export import export

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows, data = [], {"machine": machine_info(), "load_average": os.getloadavg(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, input=np.concatenate(calibration_images()))
        for name in args.models.split(","):
            model = import_onnx(export(name))
            for max_drop in (None, 1.0):
                runs = [one_run(model, calib, max_drop) for _ in range(args.repeats)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                config = "--max-drop 1" if max_drop else "every layer int8"
                data["rows"].append({"model": name, "config": config, "runs": runs, "median": med})
                rows.append(
                    [name, config, f"{med['calibration']:.1f}", f"{med['sensitivity_layers']:.1f}",
                     f"{med['sensitivity_search']:.1f}", f"{med['total']:.1f}"]
                )  # fmt: skip
                print(format_table(["model", "config", "calibration s", "rows s", "search s",
                                    "total s"], rows[-1:]), flush=True)  # fmt: skip
    header = ["model", "config", "calibration s", "per-layer rows s", "search s", "total s"]
    m = data["machine"]
    text = (
        f"# int8 quantization time\n\n{m['date']}, {m['cpu']} ({m['llvm_cpu']}), "
        f"{m['cores']} cores, load average {data['load_average'][0]:.2f} at the start; medians "
        f"of {args.repeats} runs. Calibration includes building the probe graph.\n\n"
        + format_table(header, rows)
        + "\n"
    )
    write_results(args.out, "quant_time", data, text)


if __name__ == "__main__":
    main()
