"""Calibration data: an .npz of samples, a directory of .npy files, or a directory of images.

Every loader returns a list of feeds, one dict {input name: array of the model's exact input
shape and dtype} per model run. Samples are grouped into the model's batch size (dim 0); a last
incomplete batch is dropped (with a static batch there is nothing honest to pad it with).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import CalibrationError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Spec(Protocol):
    name: str
    shape: tuple  # ints; symbolic dims as SymDim-likes (name, lo, hi) or bare names
    dtype: str


def _fits(size: int, dim) -> bool:
    """A sample's size against an input dim: equal to a static one, inside a symbolic one's
    range (any size when the range is unknown)."""
    if isinstance(dim, int):
        return size == dim
    lo, hi = getattr(dim, "lo", None), getattr(dim, "hi", None)
    return (lo is None or size >= lo) and (hi is None or size <= hi)


def _batch(shape: tuple) -> int:
    """Samples per feed: the static batch, a symbolic batch's smallest size (at least 1)."""
    if not shape:
        return 1
    dim = shape[0]
    return dim if isinstance(dim, int) else max(1, getattr(dim, "lo", None) or 1)


def _describe(dim) -> str:
    if isinstance(dim, int):
        return str(dim)
    lo, hi = getattr(dim, "lo", None), getattr(dim, "hi", None)
    name = getattr(dim, "name", dim)
    return f"{name}:{lo}..{hi}" if lo is not None else str(name)


def load_calibration(
    path: str | Path, specs: Sequence[Spec], limit: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Feeds for calibration from `path` (see the module docstring); at most `limit` feeds."""
    path = Path(path)
    if not specs:
        raise CalibrationError("the model has no inputs to calibrate")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        npys = [p for p in files if p.suffix == ".npy"]
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if npys:
            arrays = {_single(specs, path).name: _stack_npy(npys)}
        elif images:
            arrays = {_single(specs, path).name: load_images(images, specs[0])}
        else:
            raise CalibrationError(f"calibration directory {path} has no .npy or image files")
    elif path.is_file() and path.suffix == ".npz":
        arrays = _load_npz(path, specs)
    elif path.is_file() and path.suffix == ".npy":
        arrays = {_single(specs, path).name: _load_npy(path)}
    else:
        raise CalibrationError(
            f"calibration data {path} not found (give an .npz, an .npy, or a directory of "
            ".npy files or images)"
        )
    feeds = batch_feeds(arrays, specs)
    return feeds[:limit] if limit else feeds


def batch_feeds(arrays: dict[str, np.ndarray], specs: Sequence[Spec]) -> list[dict]:
    """Split per-input sample arrays into feeds of the model's input shapes."""
    counts = {}
    for spec in specs:
        if spec.name not in arrays:
            raise CalibrationError(
                f"calibration data has no samples for input '{spec.name}' "
                f"(has: {', '.join(sorted(arrays)) or 'nothing'})"
            )
        arr = np.asarray(arrays[spec.name])
        shape = tuple(spec.shape)
        if arr.ndim == len(shape) + 1 and _all_fit(arr.shape[1:], shape):
            arr = arr.reshape(-1, *arr.shape[2:]) if shape else arr
        if arr.ndim != len(shape) or (shape and not _all_fit(arr.shape[1:], shape[1:])):
            want = ", ".join(_describe(d) for d in shape[1:])
            raise CalibrationError(
                f"calibration samples for '{spec.name}' have shape {list(arr.shape)}; expected "
                f"[N, {want}] (samples of the input [{', '.join(_describe(d) for d in shape)}])"
            )
        arrays[spec.name] = _cast(arr, spec)
        counts[spec.name] = arr.shape[0] // _batch(shape) if shape and _batch(shape) else 1
    n = min(counts.values())
    if n == 0:
        raise CalibrationError(
            "calibration data is empty or smaller than one batch "
            f"({', '.join(f'{k}: {arrays[k].shape[0]} samples' for k in counts)})"
        )
    feeds = []
    for i in range(n):
        feed = {}
        for spec in specs:
            b = _batch(tuple(spec.shape))
            feed[spec.name] = arrays[spec.name][i * b : (i + 1) * b]
        feeds.append(feed)
    return feeds


def _all_fit(sizes: tuple, dims: tuple) -> bool:
    return len(sizes) == len(dims) and all(_fits(s, d) for s, d in zip(sizes, dims))


def _cast(arr: np.ndarray, spec: Spec) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if arr.dtype == want:
        return arr
    if want.kind == "f" and arr.dtype.kind in "fiu":
        return arr.astype(want)
    if want.kind in "iu" and arr.dtype.kind in "iu":
        return arr.astype(want)
    raise CalibrationError(
        f"calibration samples for '{spec.name}' have dtype {arr.dtype}; the input is {want}"
    )


def _single(specs: Sequence[Spec], path: Path) -> Spec:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise CalibrationError(
            f"{path}: the model has {len(specs)} inputs ({names}); give an .npz keyed by them"
        )
    return specs[0]


def _load_npz(path: Path, specs: Sequence[Spec]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise CalibrationError(f"{path} is not a valid .npz file: {err}") from err
    if not arrays:
        raise CalibrationError(f"calibration file {path} holds no arrays")
    names = {s.name for s in specs}
    if names <= set(arrays):
        return {k: arrays[k] for k in names}
    samples = {k: v for k, v in arrays.items() if k != "y"}
    if len(specs) == 1 and ("x" in samples or len(samples) == 1):
        return {specs[0].name: samples.get("x", next(iter(samples.values())))}
    missing = ", ".join(sorted(names - set(arrays)))
    raise CalibrationError(
        f"{path} has arrays {', '.join(sorted(arrays))} but no samples for input(s) {missing}"
    )


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CalibrationError(f"{path} is not a valid .npy file: {err}") from err


def _stack_npy(paths: Sequence[Path]) -> np.ndarray:
    arrays = [_load_npy(p) for p in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise CalibrationError(
            f".npy files in {paths[0].parent} have different shapes: {sorted(shapes)[:4]}"
        )
    return np.concatenate(arrays) if arrays[0].ndim and len(arrays) > 1 else np.stack(arrays)


def load_images(paths: Sequence[Path], spec: Spec) -> np.ndarray:
    """Images resized (shorter side), centre-cropped to the input's H x W, scaled to [0, 1] and
    normalized with ImageNet's mean/std, laid out as the input (NCHW or NHWC, 3 or 1 channels)."""
    try:
        from PIL import Image
    except ImportError as err:
        raise CalibrationError(
            "a directory of images needs Pillow, which is not installed; "
            "give an .npz or .npy files instead"
        ) from err
    shape = tuple(spec.shape)
    if len(shape) != 4:
        raise CalibrationError(f"images need a 4-D image input; '{spec.name}' is {list(shape)}")
    nchw = shape[1] in (1, 3)
    channels, h, w = (shape[1], shape[2], shape[3]) if nchw else (shape[3], shape[1], shape[2])
    if channels not in (1, 3):
        raise CalibrationError(f"input '{spec.name}' {list(shape)} is not an image layout")
    out = []
    for p in paths:
        try:
            img = Image.open(p).convert("RGB" if channels == 3 else "L")
        except OSError as err:
            raise CalibrationError(f"cannot read image {p}: {err}") from err
        ratio = max(h / img.height, w / img.width)
        img = img.resize((max(w, round(img.width * ratio)), max(h, round(img.height * ratio))))
        left, top = (img.width - w) // 2, (img.height - h) // 2
        arr = np.asarray(img.crop((left, top, left + w, top + h)), np.float32) / 255.0
        if channels == 3:
            arr = (arr - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
        else:
            arr = arr[..., None]
        out.append(arr.transpose(2, 0, 1) if nchw else arr)
    return np.stack(out)


# Fewer calibration samples than this: layer-wise fits (SparseGPT's Hessians, least-squares
# refits, bias corrections) follow those few photos or sentences rather than the data they
# stand for. A rule of thumb (MobileNetV2 was measured with 32 crops of 8 photos), not a tuned
# value.
FEW_SAMPLES = 32


def fitting_feeds(path, specs: Sequence[Spec], limit: int | None, say, what: str) -> list[dict]:
    """Calibration feeds for a method that fits weights to them, with a one-line warning
    when they are few."""
    feeds = load_calibration(path, specs, limit=limit)
    batch = specs[0].shape[0] if specs and specs[0].shape else 1
    if len(feeds) * batch < FEW_SAMPLES:
        say(
            f"warning: {what}: {len(feeds) * batch} calibration samples; with fewer than "
            f"{FEW_SAMPLES} the fitted layers follow those samples rather than the data they "
            "stand for"
        )
    return feeds
