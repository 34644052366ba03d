"""The probe graph's per-layer elementwise work as one TE kernel each (`probe.py`).

Written as Relax ops, a layer's epilogue is about twenty ops, each legalized, laid out and
scheduled on its own before FuseOps merges them: most of the probe's build time. One
`call_te` per layer computes the same expressions in the same order and dtypes (so the same
bits: LLVM contracts `v * scale + fbias` into one FMA as the int8 kernels' does, both inside
one kernel), and FuseOps still fuses it into its conv's kernel.
"""

from __future__ import annotations

import tvm
from tvm import relax, te


def _at(tensor: te.Tensor, idx) -> tuple:
    """`tensor`'s index for output index `idx` under numpy broadcasting."""
    nd, out_nd = len(tensor.shape), len(idx)

    def one(dim) -> bool:  # a symbolic dim (rows of a symbolic batch) is not broadcast
        return isinstance(dim, tvm.tirx.IntImm) and int(dim) == 1

    return tuple(idx[out_nd - nd + d] if not one(tensor.shape[d]) else 0 for d in range(nd))


def emit_epilogue(
    bb: relax.BlockBuilder, acc, low, inp: dict, xs, fp32, static: bool
) -> relax.Expr:
    """where(f, the int8 kernel's epilogue of `acc` (+ 16 * ... `low`), fp32) as one kernel:
    t = f32(int32(acc) + corr); v = t * scale [* xs]; requantize (r): round(v) + zp_o, else
    v + fbias; clamp to [lo, hi]; requantized: (q - zp_o) * s_o (`graphopt.int8_ops`)."""
    names = ["corr", "scale", "fbias", "lo", "hi", "r", "zpo", "so", "f"]
    extra = [t for t in (low, xs) if t is not None]

    def compute(acc_t, fp32_t, *rest):
        c = dict(zip(names, rest[: len(names)]))
        more = list(rest[len(names) :])
        low_t = more.pop(0) if low is not None else None
        xs_t = more.pop(0) if xs is not None else None

        def value(*idx):
            a = acc_t[idx].astype("int32")
            if low_t is not None:
                a = a * tvm.tirx.const(16, "int32") + low_t[idx].astype("int32")
            t = (a + c["corr"][_at(c["corr"], idx)]).astype("float32")
            v = t * c["scale"][_at(c["scale"], idx)]
            if xs_t is not None:
                v = v * xs_t[_at(xs_t, idx)]
            out = v + c["fbias"][_at(c["fbias"], idx)]
            if static:
                out = tvm.tirx.Select(c["r"][0], te.round(v) + c["zpo"][0], out)
            out = te.min(te.max(out, c["lo"][0]), c["hi"][0])
            if static:
                out = tvm.tirx.Select(c["r"][0], (out - c["zpo"][0]) * c["so"][0], out)
            return tvm.tirx.Select(c["f"][0], out, fp32_t[idx])

        return te.compute(fp32_t.shape, value, name="int8_epilogue")

    args = [acc, fp32, *(inp[n] for n in names), *extra]
    return bb.call_te(compute, *args, primfunc_name_hint="int8_epilogue")


def emit_input(bb: relax.BlockBuilder, x, s, zp, f, qmin: float, qmax: float) -> relax.Expr:
    """where(f, clip(round(x / s) + zp, qmin, qmax) - zp, x) as one kernel: the layer's
    input as `R.quantize` computes it, centered, or x."""

    def compute(x_t, s_t, zp_t, f_t):
        def value(*idx):
            q = te.round(x_t[idx] / s_t[0]) + zp_t[0]
            q = te.min(te.max(q, tvm.tirx.const(qmin, "float32")), tvm.tirx.const(qmax, "float32"))
            return tvm.tirx.Select(f_t[0], q - zp_t[0], x_t[idx])

        return te.compute(x_t.shape, value, name="int8_input")

    return bb.call_te(compute, x, s, zp, f, primfunc_name_hint="int8_input")
