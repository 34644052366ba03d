"""Kernel part of bench_prune: block-sparse vs dense graphopt kernels, one layer at a time.

Each layer (MobileNetV2's 1x1 convs in NHWC with bias and relu6 where the model has it, its
classifier as a batch-1 GEMV, MiniLM's matmuls over 128 tokens) is built as a Relax module
through the x86 stages twice: dense kernels (`sparse=false`) and with `sparsify` on, once per
sparsity (16x1 blocks; 8x1 where the channels are no multiple of 16). Outputs are checked
against numpy; all builds of a layer are timed interleaved in this process (TVM's own
`time_evaluator` per sample, medians).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# (name, kind, dims (conv: H, W; matmul: x's leading dims), K, N, activation) of the layers
LAYERS = [
    ("mnv2 112x112 16->96", "conv", (112, 112), 16, 96, True),
    ("mnv2 56x56 24->144", "conv", (56, 56), 24, 144, True),
    ("mnv2 28x28 192->32", "conv", (28, 28), 192, 32, False),
    ("mnv2 14x14 64->384", "conv", (14, 14), 64, 384, True),
    ("mnv2 7x7 960->160", "conv", (7, 7), 960, 160, False),
    ("mnv2 7x7 320->1280", "conv", (7, 7), 320, 1280, True),
    ("mnv2 classifier 1280->1000", "matmul", (1,), 1280, 1000, False),
    ("minilm 128x384->384", "matmul", (1, 128), 384, 384, False),
    ("minilm 128x384->1536", "matmul", (1, 128), 384, 1536, False),
    ("minilm 128x1536->384", "matmul", (1, 128), 1536, 384, False),
    ("gemv 1x384->1536", "matmul", (1,), 384, 1536, False),
]
SPARSITIES = (0.5, 0.7, 0.9)


def layer_module(kind, dims, w, act):
    from tests.sparse_models import conv1x1_nhwc, dense

    return conv1x1_nhwc(w, hw=dims, clip=act) if kind == "conv" else dense(w, dims, act)


def _reference(w, x, act, conv):
    n = w.shape[1]
    y = x.reshape(-1, w.shape[0]) @ w + np.linspace(-1, 1, n, dtype=np.float32)
    if act:
        y = np.clip(y, 0, 6) if conv else np.maximum(y, 0)
    return y


def _build(mod, sparse: bool, threads: int):
    import tvm
    from tvm import relax

    from graphopt.build import compile_module, run_stages
    from graphopt.sparse_ops import spec_of
    from graphopt.target_infra import make_target

    opts = {"num_cores": str(threads), "sparse": "true" if sparse else "false"}
    target = make_target("x86", opts)
    scheduled = run_stages(mod, target, ("legalize", "schedule"))
    kernels = [spec_of(f) for f in scheduled.functions.values() if spec_of(f) is not None]
    vm = relax.VirtualMachine(compile_module(mod, target), tvm.cpu())
    return vm, kernels


def bench_layer(layer, rounds: int, threads: int, say) -> dict[str, Any]:
    """Dense and sparse builds of one layer, checked and timed interleaved."""
    import tvm

    from tests.sparse_models import block_sparse

    name, kind, dims, k, n, act = layer
    block = 16 if n % 16 == 0 else 8
    rows = int(np.prod(dims))
    x = np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32)
    builds, entry = {}, {"layer": name, "rows": rows, "k": k, "n": n, "block": block}
    for sparsity in (0.0, *SPARSITIES):
        w = block_sparse(k, n, block, 1.0 - sparsity if sparsity else 0.5, seed=2)
        mod = layer_module(kind, dims, w, act)
        shape = [int(d) for d in mod["main"].params[0].ty.shape]
        vm, kernels = _build(mod, sparsity > 0, threads)
        key = f"sparse_{round(sparsity * 100)}" if sparsity else "dense"
        if sparsity and not kernels:
            raise RuntimeError(f"{name}: no sparse kernel at {sparsity:.0%}")
        arg = tvm.runtime.tensor(x.reshape(shape))
        got = vm["main"](arg).numpy().reshape(rows, n)
        want = _reference(w, x, act, kind == "conv")
        entry[f"max_abs_err_{key}"] = float(np.abs(got - want).max())
        number = _number(vm, arg)
        timer = vm.time_evaluator("main", tvm.cpu(), number=number, repeat=1)
        builds[key] = (timer, arg, vm, number)
    say(f"  {name}: timing {', '.join(builds)} ({rounds} rounds)")
    samples = _interleaved(builds, rounds)
    for clock in ("wall", "cpu"):
        us = {key: round(float(np.median(s[clock])) * 1e6, 1) for key, s in samples.items()}
        entry[f"{clock}_us"] = us
        entry[f"{clock}_speedup"] = {k: round(us["dense"] / v, 2) for k, v in us.items()}
    return entry


def _number(vm, arg) -> int:
    """Calls per sample: about 5 ms of work."""
    import time

    start = time.perf_counter()
    vm["main"](arg)
    once = time.perf_counter() - start
    return max(1, min(200, int(0.005 / max(once, 1e-6))))


def _interleaved(builds: dict, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per build: wall seconds per call (TVM's time_evaluator) and process CPU seconds per
    call (a loop of the same length: idle threads do not spin here, so it is the work done,
    which other processes disturb less)."""
    import time

    names = list(builds)
    for name in names:  # warm-up
        builds[name][0](builds[name][1])
    samples = {n: {"wall": [], "cpu": []} for n in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            timer, arg, vm, number = builds[name]
            samples[name]["wall"].append(timer(arg).mean)
            start = time.process_time()
            for _ in range(number):
                vm["main"](arg)
            samples[name]["cpu"].append((time.process_time() - start) / number)
    return samples


def markdown(layers: list[dict[str, Any]], clock: str) -> str:
    """The table of one clock ("wall" or "cpu"): us per call and speed-up over dense."""
    from graphopt.tables import format_table

    keys = [f"sparse_{round(s * 100)}" for s in SPARSITIES]
    head = ["layer", "block", "dense us", *(f"{round(s * 100)}% sparse us (x)" for s in SPARSITIES)]
    rows = []
    for e in layers:
        us, up = e[f"{clock}_us"], e[f"{clock}_speedup"]
        cells = [f"{us[k]} ({up[k]}x)" for k in keys]
        rows.append([e["layer"], f"{e['block']}x1", str(us["dense"]), *cells])
    return format_table(head, rows)
