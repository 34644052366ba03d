"""Kernel part of bench_prune_int8: block-sparse vs dense int8 kernels, one layer at a time.

The layers of bench/prune_kernels.py (MobileNetV2's 1x1 convs over NHWC pixels and its
classifier GEMV with uint8 activations requantized to int8; MiniLM's matmuls over 128 tokens
as the dynamic int8 flow runs them: fp32 tokens quantized per row in the kernel, fp32 out),
each as the generated int8 kernel alone for this host's dot-product scheme (what
`materialize-int8` builds), dense and block-sparse at 50/70/90% zero blocks (the scheme's
block: 16x4 on VNNI). The sparse outputs must equal the dense ones bit for bit; all builds of
a layer are timed interleaved in this process (TVM's `time_evaluator`, medians).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.prune_kernels import SPARSITIES


def _layer_data(layer, isa, sparsity: float, rng):
    """The spec, x's shape, x and the block-pruned int8 weight of one layer."""
    from graphopt.targets.cpu.int8 import kernels as K

    name, kind, dims, k, n, _act = layer
    shape = (1, *dims, k) if kind == "conv" else (*dims, k)
    rows = int(np.prod(shape[:-1]))
    minilm = name.startswith("minilm")
    spec = K.MatmulSpec(rows, k, n, "int8" if minilm else "uint8", fused_quant=minilm)
    x = (
        rng.standard_normal(shape).astype(np.float32)
        if minilm
        else rng.integers(0, 256, shape).astype(np.uint8)
    )
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    keep = rng.random((-(-k // isa.kpack), -(-n // isa.lanes))) >= sparsity
    mask = np.repeat(np.repeat(keep, isa.kpack, 0), isa.lanes, 1)[:k, :n]
    return spec, shape, x, np.where(mask, w, 0).astype(np.int8)


def _kernel(spec, shape, w, isa, sparse: bool, epilogue, density: float):
    """The built kernel and its operands (constants packed as materialize-int8 packs them)."""
    import tvm

    from graphopt import _tvm
    from graphopt.targets.cpu.int8 import kernels as K
    from graphopt.targets.cpu.int8 import sparse as S

    plan = S.sparse_plan(spec, isa) if sparse else K.matmul_plan(spec, isa)
    if sparse:
        func = S.sparse_matmul_kernel(spec, plan, shape, 3, epilogue, density)
        weights = S.pack_bsr(w, isa)
    else:
        func = K.matmul_kernel(spec, plan, shape, 3, epilogue)
        weights = [K.pack_matmul_weight(w, plan)]
    n = spec.n
    channels = [np.zeros(plan.n_pad, np.int32), np.zeros(plan.n_pad, np.float32)]
    channels[1][:n] = np.linspace(0.001, 0.01, n)
    channels.append(np.zeros(plan.n_pad, np.float32))
    target = _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=target)
    return lib, [*weights, *channels, np.array(1.0, np.float32)]


def bench_layer(layer, rounds: int, say) -> dict[str, Any]:
    """Dense and sparse int8 kernels of one layer, checked bit for bit and timed interleaved
    (the dense kernel's speed does not depend on the zeros: it is timed once)."""
    from graphopt.targets.cpu.int8 import kernels as K

    isa = K.resolve_isa("auto")
    rng = np.random.default_rng(2)
    name = layer[0]
    entry: dict[str, Any] = {"layer": name, "isa": isa.name, "block": f"{isa.lanes}x{isa.kpack}"}
    builds = {}
    for sparsity in SPARSITIES:
        spec, shape, x, w = _layer_data(layer, isa, sparsity, rng)
        ep = K.Epilogue("float32") if spec.fused_quant else K.Epilogue("int8")
        dense, sparse = (
            _timed(spec, shape, x, w, isa, is_sparse, ep, 1.0 - sparsity)
            for is_sparse in (False, True)
        )
        if not np.array_equal(dense[2], sparse[2]):
            raise RuntimeError(f"{name}: the sparse int8 kernel differs from the dense one")
        builds.setdefault("dense", dense[:2])
        builds[f"sparse_{round(sparsity * 100)}"] = sparse[:2]
    say(f"  {name}: timing {', '.join(builds)} ({rounds} rounds)")
    us = _interleaved(builds, rounds)
    entry["wall_us"] = us
    entry["wall_speedup"] = {k: round(us["dense"] / v, 2) for k, v in us.items()}
    return entry


def _timed(spec, shape, x, w, isa, sparse: bool, epilogue, density: float):
    """(timer, call arguments, output) of one kernel run once."""
    import tvm

    lib, consts = _kernel(spec, shape, w, isa, sparse, epilogue, density)
    out = tvm.runtime.tensor(np.zeros((*shape[:-1], spec.n), epilogue.out_dtype))
    args = [*(tvm.runtime.tensor(a) for a in (x, *consts)), out]
    lib["main"](*args)
    timer = lib.time_evaluator("main", tvm.cpu(), number=_number(lib, args))
    return timer, args, out.numpy()


def _number(lib, args) -> int:
    """Calls per sample: about 5 ms of work."""
    import time

    start = time.perf_counter()
    lib["main"](*args)
    once = time.perf_counter() - start
    return max(1, min(500, int(0.005 / max(once, 1e-6))))


def _interleaved(builds: dict, rounds: int) -> dict[str, float]:
    """Median us per call of each build, samples alternated A B C .. C B A."""
    names = list(builds)
    for name in names:  # warm-up
        builds[name][0](*builds[name][1])
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            timer, args = builds[name]
            samples[name].append(timer(*args).mean)
    return {n: round(float(np.median(s)) * 1e6, 1) for n, s in samples.items()}


def markdown(layers: list[dict[str, Any]]) -> str:
    """us per call and speed-up over the dense int8 kernel."""
    from graphopt.tables import format_table

    keys = [f"sparse_{round(s * 100)}" for s in SPARSITIES]
    head = ["layer", "block", "dense us", *(f"{round(s * 100)}% sparse us (x)" for s in SPARSITIES)]
    rows = []
    for e in layers:
        us, up = e["wall_us"], e["wall_speedup"]
        cells = [f"{us[k]} ({up[k]}x)" for k in keys]
        rows.append([e["layer"], e["block"], str(us["dense"]), *cells])
    return format_table(head, rows)
