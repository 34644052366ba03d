"""Build the CUDA bundles the GPU device check runs (here, without a GPU; needs nvcc).

    python bench/gpu_check_prepare.py build/gpu_check [--arch sm_90] [--skip-mobilenet]

Writes one directory that travels to the GPU host (under 64 MiB): the runner and the TVM /
CUDA runtime libraries once (`run`, `lib/`), the ONNX models once (`models/`), per case a
folder with `model.so`, `io.txt` and `manifest.json`, and `cases.json` listing the cases.
Cases: MobileNetV2 fp32 and fp16 (from the graphopt model cache) and the generated MobileNet
block and transformer block in fp32 and fp16. `bench/gpu_check.sh` runs them there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _cases(skip_mobilenet: bool) -> list[tuple[str, object, str]]:
    import model_builders as mb

    from graphopt import env

    cases = []
    mnv2 = env.cache_dir() / "models" / "mobilenet_v2.onnx"
    if mnv2.is_file() and not skip_mobilenet:
        cases += [("mobilenet_v2", mnv2, p) for p in ("fp32", "fp16")]
    for name in ("mobilenet_block", "transformer_block"):
        cases += [(name, getattr(mb, name)(), p) for p in ("fp32", "fp16")]
    return cases


def _bundle_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def prepare(out: Path, arch: str, skip_mobilenet: bool) -> list[dict]:
    import onnx

    import graphopt

    out.mkdir(parents=True, exist_ok=True)
    listed = []
    for name, model, precision in _cases(skip_mobilenet):
        case = f"{name}-{precision}"
        full = out / ".bundles" / case
        start = time.perf_counter()
        art = graphopt.compile(
            model, full, target="cuda", target_options={"arch": arch, "precision": precision}
        )
        seconds = time.perf_counter() - start
        if not (out / "run").is_file():  # runner and libraries once for every case
            shutil.copy2(full / "run", out / "run")
            shutil.copytree(full / "lib", out / "lib", dirs_exist_ok=True)
        dest = out / case
        dest.mkdir(exist_ok=True)
        for item in ("model.so", "io.txt", "manifest.json"):
            shutil.copy2(full / item, dest / item)
        onnx_path = out / "models" / f"{name}.onnx"  # once per model, not per precision
        if not onnx_path.is_file():
            onnx_path.parent.mkdir(exist_ok=True)
            onnx_model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
            onnx.save(onnx_model, str(onnx_path))
        stats = next(
            r["stats"] for r in art.manifest["report"]["passes"] if r["pass"] == "schedule-cuda"
        )
        listed.append(
            {
                "case": case,
                "onnx": str(onnx_path.relative_to(out)),
                "precision": precision,
                "compile_seconds": round(seconds, 1),
                "bundle_bytes": _bundle_size(full),
                "rules": {k[10:]: v for k, v in stats.items() if k.startswith("scheduled_") and v},
            }
        )
        print(f"{case}: {seconds:.0f} s, bundle {_bundle_size(full) / 2**20:.1f} MiB", flush=True)
    shutil.rmtree(out / ".bundles")
    (out / "cases.json").write_text(json.dumps(listed, indent=2) + "\n")
    return listed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--skip-mobilenet", action="store_true")
    args = parser.parse_args()
    prepare(args.out, args.arch, args.skip_mobilenet)
    print(f"{args.out}: {_bundle_size(args.out) / 2**20:.1f} MiB to carry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
