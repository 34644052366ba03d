"""A corpus of real model topologies that nobody on this team designed, for compile testing.

Three sources, all reachable without a network at run time:
- ONNX files shipped inside PyPI packages (PaddleOCR models in rapidocr-onnxruntime, a CRNN
  captcha reader, Silero VAD), used as shipped;
- ONNX's own model-zoo topologies (the "light" models in the onnx wheel, opset 9 Caffe2 exports
  whose weights are ConstantOfShape fills): the fills are replaced by seeded random tensors;
- PyTorch exports made once: torchvision 0.28 architectures and `transformers` models built
  from small configs, both randomly initialized (weights do not matter to compile correctness).

Each export is written once into the model cache (see `export.cache_dir`) under ``corpus/``.
Every entry says which inputs it takes (fixed shapes where the model is dynamic), how to make
seeded inputs, its error bound against onnxruntime, and, for models graphopt cannot compile,
the operator its clean `error:` must name.

CLI: ``python -m bench.models.corpus [--table bench/results/corpus.md] [-O 0 1 2 3] [names...]``
compiles every model at each level, compares with onnxruntime, and writes the results table.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .export import cache_dir, package_dir, torch_export

IMAGE = (1, 3, 64, 64)
REL_BOUND = 1e-3
SEED = 0


@dataclass(frozen=True)
class Entry:
    name: str
    source: str  # where the topology comes from, for the table
    make: Callable[[Path], None]  # writes the ONNX file to the given path
    inputs: dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, static shape)
    bound: float = REL_BOUND
    bound_reason: str = ""
    unsupported: str | None = None  # the operator graphopt's error must name
    shipped: Callable[[], Path] | None = None  # a file used as is, not written to the cache
    int_high: dict[str, int] = field(default_factory=dict)  # exclusive max of integer inputs
    fixed: dict[str, Callable[[], np.ndarray]] = field(default_factory=dict)
    known_bugs: dict[int, str] = field(default_factory=dict)  # opt level -> graphopt bug

    def input_shapes(self) -> dict[str, list[int]]:
        return {k: list(shape) for k, (_dtype, shape) in self.inputs.items()}


# --- torchvision (pure-Python model code only) -------------------------------------------

TORCHVISION = "torchvision==0.28.0"  # the release built for torch 2.13


def torchvision_dir() -> Path:
    """Where the Makefile installs torchvision *outside* site-packages (`pip --target`).

    torchvision's PyPI wheel links CUDA libraries that this CPU torch lacks, so its native ops
    do not load and `import torchvision` fails; worse, once installed in site-packages it
    breaks `transformers`, which imports torchvision whenever it is present. So it lives in a
    folder of its own that only the export subprocess puts on sys.path. Override with
    $GRAPHOPT_TORCHVISION_DIR.
    """
    raw = os.environ.get("GRAPHOPT_TORCHVISION_DIR")
    return Path(raw) if raw else Path(sys.prefix) / "torchvision-0.28"


def torchvision_available() -> bool:
    return (torchvision_dir() / "torchvision" / "models").is_dir()


def torchvision_models():
    """`torchvision.models` from `torchvision_dir()`, imported without the native ops.

    Only `_meta_registrations` needs the native library (it registers fake kernels for
    `torchvision::nms` and friends); the model definitions are plain PyTorch. An empty
    stand-in for that one module lets the rest import.
    """
    path = str(torchvision_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    name = "torchvision._meta_registrations"
    sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision.models

    return torchvision.models


def export_torchvision(builder: str, dest: str) -> None:
    """Export a torchvision classifier (random init, seeded); runs in a subprocess."""
    import torch

    def build():
        torch.manual_seed(SEED)
        return getattr(torchvision_models(), builder)(weights=None).eval()

    torch_export(build, lambda: (torch.zeros(IMAGE),), ["input"], ["logits"], Path(dest))


def _tv(builder: str) -> Callable[[Path], None]:
    def make(dest: Path) -> None:
        if not torchvision_available():
            raise ModuleNotFoundError(
                f"{TORCHVISION} is not in {torchvision_dir()} (make test-slow installs it)"
            )
        code = (
            "from bench.models.corpus import export_torchvision; "
            f"export_torchvision({builder!r}, {str(dest)!r})"
        )
        root = Path(__file__).resolve().parents[2]
        subprocess.run([sys.executable, "-c", code], cwd=root, check=True)

    return make


# --- transformers (small configs, random init) -------------------------------------------


def _gpt2(dest: Path) -> None:
    import torch

    def build():
        from transformers import GPT2Config, GPT2Model

        torch.manual_seed(SEED)
        cfg = GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4)
        model = GPT2Model(cfg).eval()

        class Hidden(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids):
                # An explicit all-ones mask keeps transformers off its packed-sequence path
                # (torch.diff, which the TorchScript exporter cannot export).
                mask = torch.ones_like(input_ids)
                out = self.m(input_ids=input_ids, attention_mask=mask, use_cache=False)
                return out.last_hidden_state

        return Hidden(model).eval()

    example = lambda: (torch.zeros((1, 32), dtype=torch.int64),)  # noqa: E731
    torch_export(build, example, ["input_ids"], ["hidden"], dest)


def _hifigan(dest: Path) -> None:
    import torch

    def build():
        from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

        torch.manual_seed(SEED)
        cfg = SpeechT5HifiGanConfig(
            model_in_dim=32,
            upsample_initial_channel=64,
            upsample_rates=[4, 4],
            upsample_kernel_sizes=[8, 8],
            resblock_kernel_sizes=[3, 7],
            resblock_dilation_sizes=[[1, 3], [1, 3]],
            normalize_before=False,
        )
        return SpeechT5HifiGan(cfg).eval()

    example = lambda: (torch.zeros((1, 20, 32)),)  # noqa: E731
    torch_export(build, example, ["spectrogram"], ["waveform"], dest)


# --- ONNX's own model-zoo topologies -------------------------------------------------------


def onnx_light(name: str) -> Callable[[Path], None]:
    """One of onnx's `backend/test/data/light` models with random weights in place of fills.

    Those files keep the topology of the model zoo's Caffe2 exports (opset 9) and replace each
    weight by ConstantOfShape(0.02); constant weights make every channel alike, which hides
    wrong indexing. Each fill becomes a seeded random initializer: He-normal convolution and
    dense weights, batch-norm scales and variances near 1, small biases and means. The last
    Softmax is dropped (see below).
    """

    def make(dest: Path) -> None:
        import onnx
        from onnx import numpy_helper

        src = Path(onnx.__file__).parent / "backend/test/data/light" / f"light_{name}.onnx"
        model = onnx.load(src)
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        rng = np.random.default_rng(SEED)
        keep, new_inits, dropped = [], [], set()
        for node in graph.node:
            if node.op_type == "ConstantOfShape" and node.input[0] in inits:
                shape = [int(d) for d in numpy_helper.to_array(inits[node.input[0]])]
                value = _random_weight(node.output[0], shape, rng)
                new_inits.append(numpy_helper.from_array(value, node.output[0]))
                dropped.add(node.input[0])
            else:
                keep.append(node)
        # The final Softmax saturates on random weights (a one-hot both sides agree on
        # exactly), which would hide any error: compare the logits instead.
        if keep and keep[-1].op_type == "Softmax" and keep[-1].output[0] == graph.output[0].name:
            logits = keep.pop().input[0]
            graph.output[0].name = logits
        del graph.node[:]
        graph.node.extend(keep)
        rest = [t for t in graph.initializer if t.name not in dropped]
        del graph.initializer[:]
        graph.initializer.extend(rest + new_inits)
        # IR 3 lists every initializer among the inputs; keep that form for the new weights.
        inputs = [i for i in graph.input if i.name not in dropped]
        listed = {i.name for i in inputs}
        for t in new_inits:
            if t.name not in listed:
                inputs.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
        del graph.input[:]
        graph.input.extend(inputs)
        onnx.checker.check_model(model)
        _save(model, dest)

    return make


def _random_weight(name: str, shape: list[int], rng) -> np.ndarray:
    base = name.rsplit("/", 1)[-1].lower()
    if len(shape) >= 2:  # conv / dense weight: He-normal over fan-in
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if any(k in base for k in ("_s_", "scale", "riv", "_var")):  # positive, near 1
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (rng.standard_normal(shape) * 0.1).astype(np.float32)


def _save(model, dest: Path) -> None:
    import onnx

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".onnx.tmp", dir=dest.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- ONNX files shipped in PyPI packages ----------------------------------------------------


def _shipped(package: str, rel: str) -> Callable[[], Path]:
    return lambda: package_dir(package) / rel


def _no_make(_dest: Path) -> None:
    raise AssertionError("shipped models are not written")


CORPUS: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "resnet18",
            "torchvision 0.28 `resnet18` (random init)",
            _tv("resnet18"),
            {"input": ("float32", IMAGE)},
        ),
        Entry(
            "shufflenet_v2",
            "torchvision 0.28 `shufflenet_v2_x0_5` (random init)",
            _tv("shufflenet_v2_x0_5"),
            {"input": ("float32", IMAGE)},
        ),
        Entry(
            "squeezenet1_1",
            "torchvision 0.28 `squeezenet1_1` (random init)",
            _tv("squeezenet1_1"),
            {"input": ("float32", IMAGE)},
        ),
        Entry(
            "shufflenet_v1_zoo",
            "onnx 1.23 wheel `light_shufflenet.onnx` (model zoo Caffe2 export, opset 9), "
            "random weights",
            onnx_light("shufflenet"),
            {"gpu_0/data_0": ("float32", (1, 3, 224, 224))},
        ),
        Entry(
            "inception_v1_zoo",
            "onnx 1.23 wheel `light_inception_v1.onnx` (model zoo, opset 9), random weights",
            onnx_light("inception_v1"),
            {"data_0": ("float32", (1, 3, 224, 224))},
        ),
        Entry(
            "ppocr_det",
            "rapidocr-onnxruntime 1.4.4 `ch_PP-OCRv4_det_infer.onnx` (DBNet text detector)",
            _no_make,
            {"x": ("float32", (1, 3, 64, 64))},
            shipped=_shipped("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
        ),
        Entry(
            "ppocr_rec",
            "rapidocr-onnxruntime 1.4.4 `ch_PP-OCRv4_rec_infer.onnx` (SVTR text recognizer)",
            _no_make,
            {"x": ("float32", (1, 3, 48, 160))},
            shipped=_shipped("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"),
        ),
        Entry(
            "captcha_crnn",
            "captcha-whisperer 0.1.0 `captcha_crnn.onnx` (CNN + unrolled BiLSTM + CTC head)",
            _no_make,
            {"image": ("float32", (1, 3, 60, 160))},
            shipped=_shipped("captcha_whisperer", "models/captcha_crnn.onnx"),
        ),
        Entry(
            "gpt2_tiny",
            "transformers 5.23 `GPT2Model` (2 layers, 64 wide, random init)",
            _gpt2,
            {"input_ids": ("int64", (1, 32))},
            int_high={"input_ids": 1000},
        ),
        Entry(
            "hifigan_tiny",
            "transformers 5.23 `SpeechT5HifiGan` vocoder (1-D conv, ConvTranspose1d; random init)",
            _hifigan,
            {"spectrogram": ("float32", (1, 20, 32))},
        ),
        Entry(
            "silero_vad",
            "silero-vad 6.2.3 `silero_vad_16k_sequence.onnx` (STFT conv, LSTM)",
            _no_make,
            {
                "input": ("float32", (4, 576)),
                "h": ("float32", (1, 1, 128)),
                "c": ("float32", (1, 1, 128)),
            },
            shipped=_shipped("silero_vad", "data/silero_vad_16k_sequence.onnx"),
        ),
    ]
}


def model_path(name: str, cache: str | os.PathLike | None = None) -> Path:
    """The ONNX file of a corpus model, exporting it into the cache the first time."""
    entry = CORPUS[name]
    if entry.shipped is not None:
        return entry.shipped()
    dest = cache_dir(cache) / "corpus" / f"{name}.onnx"
    if not dest.exists():
        entry.make(dest)
    return dest


def make_inputs(name: str, seed: int = SEED) -> dict[str, np.ndarray]:
    """Seeded inputs: standard normal floats, integers uniform below `int_high` (default 100)."""
    entry = CORPUS[name]
    rng = np.random.default_rng(seed)
    feeds = {}
    for key, (dtype, shape) in entry.inputs.items():
        if key in entry.fixed:
            feeds[key] = entry.fixed[key]()
        elif np.issubdtype(np.dtype(dtype), np.integer):
            feeds[key] = rng.integers(0, entry.int_high.get(key, 100), shape).astype(dtype)
        else:
            feeds[key] = rng.standard_normal(shape).astype(dtype)
    return feeds


def op_summary(path: Path) -> str:
    """Operator types of a model (subgraphs included), most frequent first."""
    import onnx

    counts: collections.Counter = collections.Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(onnx.load(path, load_external_data=False).graph)
    counts.pop("Constant", None)
    return ", ".join(f"{op} {n}" for op, n in counts.most_common())


@dataclass
class Result:
    name: str
    opt_level: int
    ok: bool
    max_error: float | None = None
    error: str = ""
    seconds: float = 0.0


def check(name: str, opt_level: int, workdir: Path) -> Result:
    """Compile at `opt_level` for x86 and compare with onnxruntime fp32 on seeded inputs."""
    import graphopt
    from graphopt.instrument import max_relative_error
    from graphopt.reference import ort_run, ort_session

    entry = CORPUS[name]
    path = model_path(name)
    start = time.perf_counter()
    art = graphopt.compile(
        path,
        workdir / f"{name}-O{opt_level}",
        target="x86",
        opt_level=opt_level,
        input_shapes=entry.input_shapes(),
    )
    seconds = time.perf_counter() - start
    feeds = make_inputs(name)
    ref = ort_run(ort_session(str(path)), feeds)
    got = art.run(feeds)
    names = sorted(ref)
    err = max_relative_error([ref[k] for k in names], [got[k] for k in names])
    return Result(name, opt_level, err <= entry.bound, err, "", seconds)


def check_unsupported(name: str, workdir: Path) -> Result:
    """`graphopt compile` must exit 2 with one `error:` line naming the unsupported operator."""
    entry = CORPUS[name]
    cmd = [sys.executable, "-m", "graphopt.cli", "compile", str(model_path(name))]
    for key, shape in entry.input_shapes().items():
        cmd += ["--input-shape", f"{key}={','.join(map(str, shape))}"]
    cmd += ["-o", str(workdir / f"{name}-unsupported"), "-q"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    ok = (
        proc.returncode == 2
        and len(lines) == 1
        and f"{entry.unsupported} [" in lines[0]
        and "Traceback" not in proc.stderr
    )
    message = lines[0] if lines else proc.stderr.strip().splitlines()[-1:]
    return Result(name, -1, ok, None, str(message), seconds)


def table(results: list[Result]) -> str:
    """The markdown results table: model, source, ops, O0..O3, max error."""
    by_model: dict[str, dict[int, Result]] = collections.defaultdict(dict)
    for r in results:
        by_model[r.name][r.opt_level] = r
    levels = sorted({r.opt_level for r in results if r.opt_level >= 0}) or [0, 1, 2, 3]
    head = ["model", "source", "ops"] + [f"O{lvl}" for lvl in levels] + ["max rel. error"]
    lines = [
        "# Real-model corpus: graphopt vs onnxruntime fp32, x86",
        "",
        "Generated by `python -m bench.models.corpus --table bench/results/corpus.md` (the same",
        "checks as `tests/e2e/test_corpus.py`, slow suite). Each model is compiled for x86 at each",
        "level and run on seeded inputs; error = max|graphopt - ort| / max(1, max|ort|) over all",
        f"outputs, bound {REL_BOUND:g} unless the model says otherwise. Unsupported models must",
        "fail with exit 2 and one `error:` line naming the operator.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, entry in CORPUS.items():
        if name not in by_model:
            continue
        rs = by_model[name]
        ops = op_summary(model_path(name))
        if entry.unsupported:
            r = rs[-1]
            verdict = "clean error" if r.ok else "**BAD ERROR**"
            cells = [f"{verdict}: `{r.error}`"] + [""] * (len(levels) - 1) + ["-"]
        else:
            cells = []
            for lvl in levels:
                r = rs.get(lvl)
                if r is None:
                    cells.append("-")
                elif r.error:
                    known = " (known bug, below)" if lvl in entry.known_bugs else ""
                    cells.append(f"**fail**{known}")
                else:
                    cells.append(f"{'pass' if r.ok else '**FAIL**'} ({r.seconds:.0f} s)")
            errs = [r.max_error for r in rs.values() if r.max_error is not None]
            cells.append(f"{max(errs):.1e}" if errs else "-")
        lines.append("| " + " | ".join([name, entry.source, ops] + cells) + " |")
    lines.append("")
    lines.append("Seconds are compile times on the 2-core dev box (shared, so +-2x).")
    failures = [r for r in results if r.error and r.opt_level >= 0]
    if failures:
        lines += ["", "## Failures", ""]
        for r in failures:
            lines.append(f"- {r.name} -O{r.opt_level}: `{r.error}`")
    bugs = {bug for e in CORPUS.values() for bug in e.known_bugs.values()}
    for bug in sorted(bugs):
        names = [n for n, e in CORPUS.items() if bug in e.known_bugs.values()]
        lines.append(f"- known bug ({', '.join(names)}): {bug}")
    return "\n".join(lines) + "\n"


def run(names: list[str], levels: list[int], workdir: Path, log=print) -> list[Result]:
    results = []
    for name in names:
        if CORPUS[name].unsupported:
            results.append(check_unsupported(name, workdir))
            log(results[-1])
            continue
        for lvl in levels:
            try:
                results.append(check(name, lvl, workdir))
            except Exception as err:  # noqa: BLE001 - recorded in the table
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                results.append(Result(name, lvl, False, None, f"{type(err).__name__}: {first}"))
            log(results[-1])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"among {', '.join(CORPUS)} (default: all)")
    parser.add_argument("-O", dest="levels", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--table", help="write the markdown results table here")
    parser.add_argument("--export-only", action="store_true", help="only fill the cache")
    parser.add_argument("--json", help="append each result to this JSON-lines file")
    parser.add_argument("--from-json", help="write the table from this file; compile nothing")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in CORPUS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    names = args.names or list(CORPUS)
    if args.from_json:
        lines = Path(args.from_json).read_text().splitlines()
        results = [Result(**json.loads(line)) for line in lines if line.strip()]
        Path(args.table).write_text(table(results))
        return 0
    if args.export_only:
        for name in names:
            print(f"{name}: {model_path(name)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="graphopt-corpus-") as tmp:

        def log(result: Result) -> None:
            print(result)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(dataclasses.asdict(result)) + "\n")

        results = run(names, args.levels, Path(tmp), log)
    if args.table:
        Path(args.table).write_text(table(results))
    bad = [r for r in results if not r.ok]
    print(f"{len(results) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
