"""Building and calling one generated int8 kernel in the tests: the kernel alone, built for
an LLVM CPU, called on numpy arrays (the output buffer last, as the kernels take it)."""

from __future__ import annotations

import numpy as np
import tvm


def build_kernel(func, mcpu: str):
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    return tvm.tirx.build(tvm.IRModule({"main": func}), target=target)


def random_ints(rng, shape, dtype):
    """Uniform over the dtype's whole range."""
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def call_kernel(lib, args, out_shape, out_dtype):
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    lib["main"](*[tvm.runtime.tensor(np.require(a, requirements="C")) for a in args], out)
    return out.numpy()


def padded(values, length: int, dtype=None):
    """Values padded with zeros along their last axis to `length` (the channels a kernel
    reads past the real ones)."""
    values = np.asarray(values)
    out = np.zeros((*values.shape[:-1], length), dtype or values.dtype)
    out[..., : values.shape[-1]] = values
    return out
