"""Build the int8 ops of `lower-int8` for the target's dot-product scheme, constants packed.

`lower-int8` leaves portable kernels that carry their recipe (`graphopt.int8_ops`), with the
op's constants in natural layout (int8 weights, int32 `corr`, fp32 scale and bias) in each
call. This pass, first in the CPU schedule stage, picks the scheme of the target being
compiled for (`isa_for_target`: vnni, avx2, sdot, else generic), replaces every portable kernel
by the CPU kernel for that scheme (`targets/cpu/int8/materialize.py`) and packs each call's
constants for it at compile time. Retargeting an int8 graph is running another target's
stage on the same lowered module. `isa` forces a scheme (tests, benchmarks; `auto`: the
current target, else this host); kernels a forced run already built are kept as they are
(their constants are packed: packing starts from the natural layout only).

Matmuls and NHWC convs whose int8 weights are mostly zero blocks (one dot instruction's
worth: 16 output x 4 input channels on vnni) take the block-sparse kernel instead
(`targets/cpu/int8/sparse.py`), decided per call from its constant weight; `sparse=false`
keeps every layer dense. Counters: `layers_sparse`, `layers_dense` (matmul-shaped layers with
zero blocks that stayed dense), `layers_scattered_zeros` (among them, those at least half
zeros: the zeros are not in whole blocks) and the int8 weight bytes of the sparse layers
before and after (`sparse_bytes_dense`, `sparse_bytes_stored`: values plus one int32 index
per block).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.int8_ops import Recipe, recipe_of
from graphopt.kernel_swap import materialize, packed_constants
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.targets.cpu.int8 import kernels as K
from graphopt.targets.cpu.int8 import materialize as M
from graphopt.targets.cpu.int8 import sparse as SP


@register_pass
class MaterializeInt8(GraphPass):
    """Portable int8 kernels -> the target's int8 kernels (block-sparse where the weights are
    mostly zero blocks), constants packed for them."""

    name = "materialize-int8"

    @dataclass(frozen=True)
    class Options:
        # Dot-product scheme: auto (the current target's, else this host's) | vnni | avx2 |
        # sdot | generic.
        isa: str = "auto"
        # Block-sparse kernels for layers with at most `max_density` nonzero weight blocks
        # (0: the scheme's measured threshold, `sparse.MAX_DENSITY`).
        sparse: bool = True
        max_density: float = 0.0

    def run(self, mod: tvm.IRModule) -> PassResult:
        isa = K.resolve_isa(self.options.isa)
        stats = {"kernels": 0, "calls": 0, "already_built": 0, f"isa_{isa.name}": 1}
        recipes = {}
        for gvar, func in mod.functions.items():
            recipe = recipe_of(func)
            if recipe is None:
                continue
            if recipe.isa is not None:  # built by an earlier materialize-int8{isa=..}: kept
                stats["already_built"] += 1
                continue
            recipes[gvar] = recipe
        threshold = self.options.max_density or SP.MAX_DENSITY.get(isa.name, SP.DEFAULT_MAX_DENSITY)
        rule = _SparseRule(isa, threshold if self.options.sparse else -1.0)
        densities = _call_densities(mod, recipes, rule)
        built = {gvar: _Built.of(r, isa, densities.get(gvar, [])) for gvar, r in recipes.items()}
        stats["kernels"] = len(built)
        new, changed = materialize(
            mod, built, rule.operands, stats, kernel_of=lambda entry: entry.kernels()
        )
        stats.update(rule.stats)
        return PassResult(new, changed, stats)


@dataclass
class _Built:
    """A portable kernel's replacements: the dense kernel, the block-sparse one, or both
    (calls choose by their weights), with their packers."""

    recipe: Recipe
    dense: tuple | None  # (kernel, pack)
    sparse: tuple | None

    @classmethod
    def of(cls, recipe: Recipe, isa: K.Isa, densities: list) -> _Built:
        sparse = [d for d in densities if d is not None]
        dense = M.build(recipe, isa) if len(sparse) < len(densities) or not densities else None
        return cls(recipe, dense, M.build_sparse(recipe, isa, max(sparse)) if sparse else None)

    def kernels(self):
        if self.sparse is None:
            return self.dense[0]
        variants = {"dense": self.dense, "sparse": self.sparse}
        return {name: v[0] for name, v in variants.items() if v is not None}


class _SparseRule:
    """Per call: does it take the sparse kernel (from its constant weight), and its operands."""

    def __init__(self, isa: K.Isa, max_density: float) -> None:
        self.isa, self.max_density = isa, max_density
        self.stats = {"layers_sparse": 0, "layers_dense": 0, "layers_scattered_zeros": 0}
        self.stats.update(sparse_bytes_dense=0, sparse_bytes_stored=0)

    def density(self, recipe: Recipe, call: relax.Call) -> float | None:
        """The block density of the call's weight (None: no matmul weight, too small, or
        sparse kernels are off)."""
        if self.max_density < 0 or not M.has_matmul_weight(recipe):
            return None
        weight = _args(call)[M.input_count(recipe)]
        if not isinstance(weight, tvm.ir.GenericConst):
            return None
        kn = M.matmul_weight(recipe, self.isa, _tvm.constant_value(weight))
        return None if kn.size < SP.MIN_WEIGHTS else SP.block_density(kn, self.isa)

    def takes_sparse(self, density: float | None) -> bool:
        return density is not None and density <= self.max_density

    def operands(self, call: relax.Call, entry: _Built):
        """The call's operands with the chosen kernel's constants packed for it ((variant,
        operands) when the entry has a sparse variant)."""
        args, recipe = _args(call), entry.recipe
        first = M.input_count(recipe)
        consts = args[first : first + M.constant_count(recipe)]
        density = self.density(recipe, call)
        sparse = entry.sparse is not None and self.takes_sparse(density)
        packed = packed_constants(
            "materialize-int8", call, consts, (entry.sparse if sparse else entry.dense)[1]
        )
        operands = [*args[:first], *packed, *args[first + len(consts) :]]
        if sparse:
            self._count_sparse(consts[0], packed)
        elif density is not None:
            weight = _tvm.constant_value(consts[0])
            scattered = np.count_nonzero(weight) <= weight.size // 2
            self.stats["layers_dense"] += int(density < 1.0 or scattered)
            self.stats["layers_scattered_zeros"] += int(scattered)
        if entry.sparse is None:
            return operands
        return ("sparse" if sparse else "dense"), operands

    def _count_sparse(self, weight, packed) -> None:
        self.stats["layers_sparse"] += 1
        self.stats["sparse_bytes_dense"] += _tvm.constant_value(weight).nbytes
        values, indices = (_tvm.constant_value(c) for c in packed[:2])
        self.stats["sparse_bytes_stored"] += values.nbytes + indices.nbytes


def _args(call: relax.Call) -> list:
    return list(call.args[1].fields)


def _call_densities(mod: tvm.IRModule, recipes: dict, rule: _SparseRule) -> dict:
    """Portable GlobalVar -> the sparse decision (`rule.density`) of each of its calls."""
    found: dict = {}

    @relax.expr_functor.visitor
    class _Calls(relax.PyExprVisitor):
        def visit_call_(self, call: relax.Call) -> None:
            super().visit_call_(call)
            is_call_tir = isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"
            if is_call_tir and call.args[0] in recipes:
                density = rule.density(recipes[call.args[0]], call)
                found.setdefault(call.args[0], []).append(
                    density if rule.takes_sparse(density) else None
                )

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            _Calls().visit_expr(func)
    return found
