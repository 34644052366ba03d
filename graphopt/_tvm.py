"""The one place that touches TVM APIs which move between versions (see docs/TVM_NOTES.md).

Everything else in graphopt goes through these helpers, so a TVM upgrade is one file's work.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

NATIVE_LOG = "tvm.log"


@contextlib.contextmanager
def native_log(path: str | Path | None) -> Iterator[None]:
    """Send what TVM's C++ code writes on stderr (file descriptor 2) to `path` meanwhile.

    TVM's runtime logs through C++ streams, not Python's logging: saving and loading an int8
    executable prints one `Scope Saving:` / `Scope Loaded:` warning per constant scope, which
    buries graphopt's own lines. Within this block fd 2 is appended to `path` (created 0644 if
    missing); where `path` is None or cannot be opened, it goes to /dev/null. Python's
    `sys.stderr` writes during the block land there too, so keep the block to the TVM call.
    Exceptions still propagate as usual (they are raised, not printed).
    """
    fd = -1
    if path is not None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            fd = -1
    if fd < 0:
        fd = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def load_module(path: str | Path, log: str | Path | None = None) -> Any:
    """`tvm.runtime.load_module`, its native log lines sent to `log` (see `native_log`)."""
    with native_log(log):
        return tvm.runtime.load_module(str(path))


def export_library(executable: Any, path: str | Path, **kwargs: Any) -> None:
    """`executable.export_library(path)`, its native log lines sent to `tvm.log` beside it."""
    with native_log(Path(path).parent / NATIVE_LOG):
        executable.export_library(str(path), **kwargs)


def structural_equal(a: Any, b: Any) -> bool:
    """Structural equality of two IR objects (moved to tvm_ffi in TVM 0.27)."""
    return bool(tvm_ffi.structural_equal(a, b, map_free_vars=True))


def to_script(mod: tvm.IRModule, show_meta: bool = False) -> str:
    """TVMScript text without terminal colours, for dumps and --print-after."""
    return mod.script(show_meta=show_meta)


def relax_pass_class(name: str) -> Callable[..., tvm.transform.Pass] | None:
    """`relax.transform.<name>`, or `relax.<a>.<Name>` for dotted names, if it makes passes."""
    parts = name.split(".")
    if not parts[-1][:1].isupper():
        return None
    obj: Any = relax.transform if len(parts) == 1 else relax
    for part in parts:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if callable(obj) else None


def relax_pass_names() -> list[str]:
    """Names of TVM's Relax passes that take no required argument (usable in text pipelines)."""
    names = []
    for name in dir(relax.transform):
        ctor = relax_pass_class(name)
        if ctor is None or inspect.isclass(ctor) and not _returns_pass(ctor):
            continue
        try:
            sig = inspect.signature(ctor)
        except (TypeError, ValueError):
            continue
        required = [
            p
            for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if not required:
            names.append(name)
    return names


def _returns_pass(cls: type) -> bool:
    return issubclass(cls, tvm.transform.Pass)


def make_target(spec: dict[str, Any] | str) -> tvm.target.Target:
    """TVM 0.27 rejects option strings ("llvm -mcpu=x"); targets are dicts or tags."""
    return tvm.target.Target(spec)


def host_cpu_name() -> str:
    """The CPU name LLVM detects for this host (e.g. "znver3"), as used for -mcpu."""
    get = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName", allow_missing=True)
    return str(get()) if get is not None else "generic"


def host_cpu_features() -> set[str]:
    """LLVM feature names the host CPU has (e.g. "avx2", "fma")."""
    get = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures", allow_missing=True)
    if get is None:
        return set()
    return {str(k) for k, v in dict(get()).items() if bool(v)}


def iter_relax_calls(mod: tvm.IRModule) -> Iterator[relax.Call]:
    """Every Call in every Relax function of the module."""
    calls: list[relax.Call] = []

    def collect(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call):
            calls.append(expr)

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, collect)
    return iter(calls)


def op_counts(mod: tvm.IRModule) -> dict[str, int]:
    """How many times each Relax operator (or call_tir kernel) is called."""
    counts: dict[str, int] = {}
    for call in iter_relax_calls(mod):
        op = call.op
        if isinstance(op, tvm.ir.Op):
            name = op.name
        elif isinstance(op, tvm.ir.GlobalVar):
            name = "call:" + op.name_hint
        else:
            name = "call:<local>"
        counts[name] = counts.get(name, 0) + 1
    return counts


def specialize_dims(func: tvm.tirx.PrimFunc, sizes: Mapping[str, int]) -> tvm.tirx.PrimFunc | None:
    """The function with each symbolic dim at its size (by name), through buffers of static
    shape and scalar parameters (PrimFunc.specialize binds the dims from them: a strided conv
    takes `hw` as a scalar and its buffers are `(hw - 1) // 2 + 1` high); None when some
    shape stays symbolic or nothing is bound."""
    tirx = tvm.tirx
    binds = {}
    for param in func.params:
        if isinstance(param.ty, tvm.ir.PrimType):
            if param.name in sizes:
                binds[param] = tirx.IntImm(str(param.ty.dtype), sizes[param.name])
            continue
        shape = getattr(param.ty, "shape", None)
        if shape is None or all(isinstance(d, tirx.IntImm) for d in shape):
            continue
        if not all(isinstance(d, tirx.IntImm) or getattr(d, "name", None) in sizes for d in shape):
            continue  # an expression of the dims: static once they are bound elsewhere
        static = [
            d if isinstance(d, tirx.IntImm) else tirx.IntImm(str(d.ty), sizes[d.name])
            for d in shape
        ]
        binds[param] = tirx.decl_buffer(
            static,
            param.ty.dtype,
            param.name,
            data=param.data,
            elem_offset=param.elem_offset,
            data_alignment=param.data_alignment,
            offset_factor=param.offset_factor,
        )
    if not binds:
        return None
    out = func.specialize(binds)
    for param in out.params:
        shape = getattr(param.ty, "shape", None) or []
        if not all(isinstance(d, tirx.IntImm) for d in shape):
            return None
    return out


def estimate_flops(mod: tvm.IRModule, sizes: Mapping[str, int] | None = None) -> int:
    """Floating point operations of every TIR kernel, times how often the graph calls it.

    Kernels with symbolic dims count at `sizes` (name -> size); without sizes, or when a
    kernel cannot be specialized, they are left out (their loop counts are unknown)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    from graphopt.kernel_flops import recipe_flops

    calls: dict[str, int] = {}
    for call in iter_relax_calls(mod):
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir":
            callee = call.args[0]
            calls[callee.name_hint] = calls.get(callee.name_hint, 0) + 1
    total = 0
    for gvar, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and gvar.name_hint in calls:
            known = recipe_flops(func, sizes or {})
            if known is not None:  # generated kernels count their op (graphopt.kernel_flops)
                total += known * calls[gvar.name_hint]
                continue
            if _symbolic(func):
                func = specialize_dims(func, sizes or {}) if sizes else None
                if func is None:
                    continue
            try:
                flops = estimate_tir_flops(tvm.IRModule({"main": func}))
            except Exception:  # noqa: BLE001 - kernels with opaque loops have no estimate
                continue
            total += int(flops) * calls[gvar.name_hint]
    return total


def _symbolic(func: tvm.tirx.PrimFunc) -> bool:
    return any(
        not isinstance(d, tvm.tirx.IntImm)
        for p in func.params
        for d in (getattr(p.ty, "shape", None) or [])
    )


def well_formed_error(mod: tvm.IRModule) -> str | None:
    """None if the module is well-formed, else the reason (0.27's well_formed raises)."""
    try:
        relax.analysis.well_formed(mod)
    except Exception as err:  # noqa: BLE001 - TVM raises its own error types
        return str(err).strip().splitlines()[-1]
    return None


def static_shape(ty: Any) -> list[int] | None:
    """The dims of a Relax tensor type when every one is a known integer, else None."""
    from tvm import relax

    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return [int(d) for d in ty.shape.values]
    except (TypeError, AttributeError):
        return None


def constant_value(const: Any) -> np.ndarray:
    """The numpy value of a Relax constant (`tvm.ir.GenericConst.value` in 0.27)."""
    return const.value.numpy()


def is_constant(expr: Any) -> bool:
    """Whether a Relax expression is a constant (`tvm.ir.GenericConst` in 0.27)."""
    return isinstance(expr, tvm.ir.GenericConst)


def onnx_convert_map() -> dict[str, Any]:
    """TVM's ONNX converter table, op type -> converter class (a private function in 0.27)."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return _get_convert_map()


def onnx_importer_class() -> type:
    """TVM's ONNX graph importer, which graphopt's importer subclasses."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    return ONNXGraphImporter


def single_block_store(func: Any, num_params: int) -> Any | None:
    """The BufferStore of a PrimFunc made of one block with `num_params` params, else None.

    How graph rewrites recognize the importer's small `call_tir` kernels (pad, Clip's
    maximum/minimum) by structure instead of by name.
    """
    from tvm import tirx
    from tvm.s_tir import Schedule

    if not isinstance(func, tirx.PrimFunc) or len(func.params) != num_params:
        return None
    try:
        sch = Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - not a schedulable kernel
        return None
    if len(blocks) != 1:
        return None
    store = sch.get(blocks[0]).body
    return store if isinstance(store, tirx.BufferStore) else None
