"""LSTM, GRU and RNN (TVM 0.27's ONNX importer has none), unrolled over the static sequence.

Each time step is the ONNX cell equation written with Relax matmuls and element-wise ops, so
graphopt's matmul kernels and fusion apply as to any other layer. Both directions, `layout`,
`clip`, peepholes, `linear_before_reset`, the usual activations, and per-batch
`sequence_lens` for forward directions (a finished sequence keeps its state and emits zeros).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from . import converter
from ._util import i64, static_shape

OP = relax.op
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def _activation(name: str, alpha, beta):
    simple = {"Sigmoid": OP.sigmoid, "Tanh": OP.tanh, "Relu": OP.nn.relu}
    if name in simple:
        return simple[name]
    if name == "LeakyRelu":
        return lambda x: OP.nn.leakyrelu(x, alpha if alpha is not None else 0.01)
    if name == "HardSigmoid":
        a, b = alpha if alpha is not None else 0.2, beta if beta is not None else 0.5
        return lambda x: OP.clip(OP.add(OP.multiply(x, relax.const(a)), relax.const(b)), 0, 1)
    raise NotImplementedError(f"RNN activation {name} is not supported")


def _acts(op: str, attrs: dict, num_dir: int) -> list[list]:
    names = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    per = len(_DEFAULT_ACTS[op])
    names = names or _DEFAULT_ACTS[op] * num_dir
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    fns = [
        _activation(n, alphas[i] if i < len(alphas) else None, betas[i] if i < len(betas) else None)
        for i, n in enumerate(names)
    ]
    return [fns[d * per : (d + 1) * per] for d in range(num_dir)]


def _gate(x, i: int, hidden: int, axis: int = 1):
    return OP.strided_slice(x, [axis], [i * hidden], [(i + 1) * hidden])


class _Dir:
    """One direction's weights, split by gate where the cell needs it."""

    def __init__(self, bb, op, inputs, d, hidden, dtype):
        w, r = inputs[1], inputs[2]
        self.w_t = bb.normalize(OP.permute_dims(OP.take(w, i64(d), axis=0)))
        self.r = bb.normalize(OP.take(r, i64(d), axis=0))
        g = _GATES[op] * hidden
        b = inputs[3] if len(inputs) > 3 and inputs[3] is not None else None
        bias = OP.take(b, i64(d), axis=0) if b is not None else relax.const(np.zeros(2 * g, dtype))
        self.wb = bb.normalize(OP.strided_slice(bias, [0], [0], [g]))
        self.rb = bb.normalize(OP.strided_slice(bias, [0], [g], [2 * g]))
        self.r_t = bb.normalize(OP.permute_dims(self.r))
        p = inputs[7] if op == "LSTM" and len(inputs) > 7 else None
        self.p = bb.normalize(OP.take(p, i64(d), axis=0)) if p is not None else None


def _clip(x, clip):
    return OP.clip(x, -clip, clip) if clip is not None else x


def _step(op, bb, w: _Dir, x_t, h, c, acts, hidden, attrs):
    """One cell update: (new h, new c or None)."""
    clip = attrs.get("clip")
    xw = OP.add(OP.matmul(x_t, w.w_t), w.wb)
    if op == "RNN":
        return acts[0](_clip(OP.add(xw, OP.add(OP.matmul(h, w.r_t), w.rb)), clip)), None
    hr = OP.add(OP.matmul(h, w.r_t), w.rb)
    if op == "GRU":
        f, g = acts
        z = f(_clip(OP.add(_gate(xw, 0, hidden), _gate(hr, 0, hidden)), clip))
        rg = f(_clip(OP.add(_gate(xw, 1, hidden), _gate(hr, 1, hidden)), clip))
        if attrs.get("linear_before_reset", 0):
            cand = OP.multiply(rg, _gate(hr, 2, hidden))
        else:
            rh = OP.matmul(OP.multiply(rg, h), _gate(w.r_t, 2, hidden))
            cand = OP.add(rh, OP.strided_slice(w.rb, [0], [2 * hidden], [3 * hidden]))
        ht = g(_clip(OP.add(_gate(xw, 2, hidden), cand), clip))
        one = relax.const(np.ones((), str(x_t.ty.dtype)))
        return OP.add(OP.multiply(OP.subtract(one, z), ht), OP.multiply(z, h)), None
    f, g, hact = acts
    gates = OP.add(xw, hr)
    peep = [None] * 3 if w.p is None else [_gate(w.p, k, hidden, axis=0) for k in range(3)]

    def with_peep(x, k, state):
        return x if peep[k] is None else OP.add(x, OP.multiply(peep[k], state))

    i = f(_clip(with_peep(_gate(gates, 0, hidden), 0, c), clip))
    fg = f(_clip(with_peep(_gate(gates, 2, hidden), 2, c), clip))
    c_new = bb.normalize(
        OP.add(OP.multiply(fg, c), OP.multiply(i, g(_clip(_gate(gates, 3, hidden), clip))))
    )
    o = f(_clip(with_peep(_gate(gates, 1, hidden), 1, c_new), clip))
    return OP.multiply(o, hact(c_new)), c_new


def _initial(bb, inputs, idx, d, batch, hidden, dtype, layout):
    state = inputs[idx] if len(inputs) > idx and inputs[idx] is not None else None
    if state is None:
        return relax.const(np.zeros((batch, hidden), dtype))
    axis = 1 if layout else 0
    return bb.normalize(OP.take(state, i64(d), axis=axis))


@converter("LSTM", "GRU", "RNN")
def recurrent(bb, op, inputs, attrs, opset):
    x = inputs[0]
    shape, w_shape = static_shape(x), static_shape(inputs[1])
    if shape is None or w_shape is None:
        return None
    layout, dtype = attrs.get("layout", 0), str(x.ty.dtype)
    if layout:
        x = bb.normalize(OP.permute_dims(x, [1, 0, 2]))
    steps, batch = (shape[1], shape[0]) if layout else (shape[0], shape[1])
    direction = attrs.get("direction", b"forward").decode()
    num_dir, hidden = w_shape[0], w_shape[1] // _GATES[op]
    lens = inputs[4] if len(inputs) > 4 and inputs[4] is not None else None
    if lens is not None and direction != "forward":
        raise NotImplementedError(f"{op}: sequence_lens with direction {direction}")
    acts = _acts(op, attrs, num_dir)
    ys, hs, cs = [], [], []
    for d in range(num_dir):
        w = _Dir(bb, op, inputs, d, hidden, dtype)
        h = _initial(bb, inputs, 5, d, batch, hidden, dtype, layout)
        c = _initial(bb, inputs, 6, d, batch, hidden, dtype, layout) if op == "LSTM" else None
        reverse = direction == "reverse" or d == 1
        outs = [None] * steps
        for t in reversed(range(steps)) if reverse else range(steps):
            x_t = bb.normalize(OP.take(x, i64(t), axis=0))
            h_new, c_new = _step(op, bb, w, x_t, h, c, acts[d], hidden, attrs)
            h_new = bb.normalize(h_new)
            if lens is not None:
                live = OP.reshape(OP.less(i64(t), OP.astype(lens, "int64")), [batch, 1])
                live = bb.normalize(live)
                zero = relax.const(np.zeros((), dtype))
                outs[t] = bb.normalize(OP.where(live, h_new, zero))
                h = bb.normalize(OP.where(live, h_new, h))
                c = bb.normalize(OP.where(live, c_new, c)) if c is not None else None
            else:
                outs[t], h, c = h_new, h_new, c_new
        ys.append(OP.stack(outs, axis=0))  # [T, B, H]
        hs.append(h)
        cs.append(c)
    y = OP.stack(ys, axis=1)  # [T, num_dir, B, H]
    y_h, y_c = OP.stack(hs, axis=0), OP.stack(cs, axis=0) if op == "LSTM" else None
    if layout:
        y = OP.permute_dims(y, [2, 0, 1, 3])
        y_h = OP.permute_dims(y_h, [1, 0, 2])
        y_c = OP.permute_dims(y_c, [1, 0, 2]) if y_c is not None else None
    return relax.Tuple([y, y_h] + ([y_c] if y_c is not None else []))
