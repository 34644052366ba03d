"""Check the exported models on real inputs with onnxruntime (and against PyTorch itself).

``python -m bench.models.verify [--cache DIR] [names...]``: exports what is missing, then prints
per model the max |ORT - PyTorch|, the predictions, and whether they make sense. Exit code 1 when
a check fails. The clean-up TVM needs is studied separately (see FINDINGS.md).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import export, inputs

TOLERANCE = 1e-4  # of max |output|: ORT and PyTorch run the same fp32 graph

# The few ImageNet-1k indices these photos should hit (an accepted set per photo).
EXPECTED_CLASSES = {
    "coffee": {504: "coffee mug", 967: "espresso", 968: "cup"},
    "chelsea": {281: "tabby", 282: "tiger cat", 283: "Persian cat", 285: "Egyptian cat"},
    "rocket": {657: "missile", 744: "projectile", 812: "space shuttle"},
    "motorcycle": {665: "moped", 670: "motor scooter"},
}
TOP_K = 5

PARAPHRASES = [
    ("A man is playing a guitar.", "A man plays the guitar.", "The stock market crashed."),
    ("How old are you?", "What is your age?", "Heavy rain is expected this weekend."),
]


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_run(module, feed: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(*(torch.from_numpy(np.array(v)) for v in feed.values())).numpy()


def _max_rel_err(outs: list[np.ndarray], refs: list[np.ndarray]) -> float:
    scale = max(float(np.abs(r).max()) for r in refs)
    return max(float(np.abs(o - r).max()) for o, r in zip(outs, refs)) / scale


def check_classifier(name: str, path, n: int = 10) -> bool:
    """Top-5 on the first ``n`` photo crops must contain an accepted class for known photos."""
    sess, module = _session(path), export.MODELS[name][0]()
    crops = inputs.image_crops(n)
    outs = [sess.run(None, {"input": x})[0] for _, x in crops]
    err = _max_rel_err(outs, [_torch_run(module, {"input": x}) for _, x in crops])
    ok = err <= TOLERANCE
    print(f"{name}: max |ORT - torch| / max|out| = {err:.2e}")
    for (crop, _), logits in zip(crops, outs):
        top = [int(i) for i in np.argsort(-logits[0])[:TOP_K]]
        expected = EXPECTED_CLASSES.get(crop.split("/")[0])
        hit = None if expected is None else bool(set(top) & set(expected))
        ok &= hit is not False
        mark = {None: "", True: " ok", False: " WRONG"}[hit]
        print(f"  {crop:32s} top-{TOP_K} {top}{mark}")
    return ok


def check_minilm(path, n: int = len(inputs.SENTENCES)) -> bool:
    """Unit-norm embeddings equal to PyTorch's, and paraphrases closer than unrelated text."""
    sess, module = _session(path), export.build_minilm()
    feeds = inputs.sentence_batch(n)
    outs = [sess.run(None, f)[0] for f in feeds]
    err = _max_rel_err(outs, [_torch_run(module, f) for f in feeds])
    norms = np.linalg.norm(np.concatenate(outs), axis=1)
    ok = err <= TOLERANCE and bool(np.allclose(norms, 1.0, atol=1e-5))
    print(
        f"minilm: max |ORT - torch| / max|out| = {err:.2e}, norms in [{norms.min():.6f}, "
        f"{norms.max():.6f}]"
    )
    for anchor, para, other in PARAPHRASES:
        a, p, o = (sess.run(None, inputs.tokenize(s))[0][0] for s in (anchor, para, other))
        close, far = float(a @ p), float(a @ o)
        ok &= close > far + 0.3
        print(f"  cos(paraphrase) {close:.3f} vs cos(unrelated) {far:.3f}: {anchor!r}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"among {', '.join(export.MODELS)}")
    parser.add_argument("--cache", help="cache folder (see bench.models.export)")
    args = parser.parse_args(argv)
    ok = True
    for name, path in export.export_all(args.names, args.cache).items():
        ok &= check_minilm(path) if name == "minilm" else check_classifier(name, path)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
