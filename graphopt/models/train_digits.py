"""Train the bundled digits CNN and export it to ONNX.

graphopt needs a small but real, labelled model so that optimisation runs can report accuracy
next to speed. This script regenerates ``digits_cnn.onnx`` and ``digits_eval.npz`` next to it.
torch is only needed here, never at graphopt runtime, so it is imported inside ``main()``.

Usage: ``python -m graphopt.models.train_digits`` (needs ``pip install torch==2.13.0``).
"""

from __future__ import annotations

import argparse
import random
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
SEED = 0
BATCH = 64


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified 75/25 split, pixels scaled from 0..16 to [0, 1]."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)


def build_model():
    """Small MobileNet-flavoured CNN: plain convs, then a depthwise-separable block."""
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> list[nn.Module]:
        conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)
        return [conv, nn.BatchNorm2d(cout)]

    return nn.Sequential(
        *conv_bn(1, 16, 3), nn.ReLU(),
        *conv_bn(16, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        *conv_bn(32, 32, 3, groups=32), nn.ReLU6(),  # depthwise
        *conv_bn(32, 64, 1), nn.ReLU(),  # pointwise
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )  # fmt: skip


def shift(xb, max_shift: int = 1):
    """Light augmentation: shift each image by up to ``max_shift`` pixels (zero padded)."""
    import torch

    n, size = xb.shape[0], xb.shape[-1]
    padded = torch.nn.functional.pad(xb, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n))
    rows = dy[:, None] + torch.arange(size)[None, :]
    cols = dx[:, None] + torch.arange(size)[None, :]
    idx = torch.arange(n)[:, None, None]
    return padded[idx, 0, rows[:, :, None], cols[:, None, :]][:, None]


def evaluate(model, x: np.ndarray, y: np.ndarray) -> float:
    """Held-out accuracy of ``model`` in eval mode."""
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def main(argv: list[str] | None = None) -> None:
    """Train with fixed seeds, then write the ONNX model and the held-out split."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    x_tr, x_te, y_tr, y_te = load_split()
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    loss_fn = torch.nn.CrossEntropyLoss()

    steps = len(xt) // BATCH  # drop the ragged last batch: BatchNorm stats on 3 samples are noise
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(xt)).split(BATCH)[:steps]:
            opt.zero_grad()
            loss = loss_fn(model(shift(xt[idx])), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        if (epoch + 1) % 10 == 0:
            acc = evaluate(model, x_te, y_te)
            print(f"epoch {epoch + 1:3d}  loss {total / steps:.4f}  test acc {acc:.4f}")

    model.eval()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out_dir / "digits_cnn.onnx"
    with warnings.catch_warnings():
        # The legacy TorchScript exporter is deliberate: it gives a plain, predictable opset-17
        # graph and, without constant folding, keeps BatchNormalization for graphopt to fold.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            onnx_path,
            opset_version=17,
            dynamo=False,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["logits"],
        )
    np.savez_compressed(args.out_dir / "digits_eval.npz", x=x_te, y=y_te)
    print(f"test acc {evaluate(model, x_te, y_te):.4f}; wrote {onnx_path} and digits_eval.npz")


if __name__ == "__main__":
    main()
