"""The 16-bit matmul on aarch64 CPUs with a widening multiply-add: fp16 with FMLAL / FMLAL2
(FEAT_FHM, LLVM `+fp16fml`: Neoverse-V1/N2/V2, Cortex-A510..) and bf16 with BFMLALT / BFMLALB
(FEAT_BF16, `+bf16`, the same cores).

Each multiplies 16-bit values and adds the exact product to an fp32 lane with one rounding,
following the FPCR like any fp32 FMA (no flushing unless the program asks for it). A product
of two 16-bit numbers is exact in fp32, so one step equals the fallback kernel's widen + fp32
FMA, and the kernels, summing in the op's pair order, equal `precision_ops.reference_matmul`
bit for bit. What they save is the widening: the fallback spends a `shll` / `fcvtl` per four
weights before each FMA.

Not BFDOT or BFMMLA: they add a pair's two products before one rounding (and BFMMLA flushes
denormals), a different sum from the op's. Not fp16 FMLA on `.8h` vectors (`+fullfp16`): it
sums in fp16, and the op sums in fp32.

The kernel is the pair kernel of `dpbf16.py` (words of a k pair, register tiles of rows x
16-channel panels) with one of these as its instruction, reached through an LLVM IR function
imported into the kernel, since TVM 0.27 holds no fp16/bf16 vectors to code generation:

- bf16: weights as `vdpbf16ps` wants them, one (k even, k odd) word per channel. A 128-bit
  register holds 4 channels' words; BFMLALT takes the odd halves (k odd), BFMLALB the even.
- fp16 (`split` words): a k pair's 64 bytes hold the 16 channels at k even, then at k odd, so
  FMLAL / FMLAL2 take the low / high four channels of a register of eight at one k.

The register tiles are smaller than x86's: a 16-lane fp32 accumulator is four of the 32 NEON
registers, so a tile holds 4 of them (16 registers), rows x panels 4 x 1 or 2 x 2.
"""

from __future__ import annotations

from graphopt.targets.cpu.precision.dpbf16 import PairInstruction

_TILE_ROWS = ((4, 1), (3, 1), (2, 2), (1, 4))
_SIGNATURE = "(<16 x float> %acc, <16 x i32> %x, <16 x i32> %wi)"


def _shuffle(dst: str, src: str, elem: str, width: int, indices) -> str:
    """IR: %dst = the elements `indices` of %src (<width x elem>)."""
    idx = ", ".join(f"i32 {i}" for i in indices)
    vec = f"<{width} x {elem}>"
    return f"  %{dst} = shufflevector {vec} %{src}, {vec} poison, <{len(indices)} x i32> <{idx}>"


def _slices(name: str, count: int, elem: str, width: int) -> list[str]:
    """IR: %{name}0 .. %{name}{count-1}, consecutive `width`-element slices of %{name}."""
    total = count * width
    return [
        _shuffle(f"{name}{q}", name, elem, total, range(q * width, q * width + width))
        for q in range(count)
    ]


def _concat(parts: list[str]) -> list[str]:
    """IR: four <4 x float> values joined into the returned <16 x float>."""
    lo, all16 = ", ".join(f"i32 {i}" for i in range(8)), ", ".join(f"i32 {i}" for i in range(16))
    join = "shufflevector <4 x float> %{}, <4 x float> %{}, <8 x i32> <{}>"
    return [
        f"  %c0 = {join.format(parts[0], parts[1], lo)}",
        f"  %c1 = {join.format(parts[2], parts[3], lo)}",
        f"  %r = shufflevector <8 x float> %c0, <8 x float> %c1, <16 x i32> <{all16}>",
        "  ret <16 x float> %r",
    ]


def _function(name: str, declares: list[str], elem: str, x_lines: list[str], steps) -> str:
    """IR: the instruction function: weights and x as <32 x elem>, the accumulator in
    quarters of 4 lanes, `steps`, the quarters joined."""
    operands = f"(<4 x float>, <8 x {elem}>, <8 x {elem}>)"
    return "\n".join(
        [
            *(f"declare <4 x float> @llvm.aarch64.neon.{d}{operands}" for d in declares),
            f"define <16 x float> @{name}{_SIGNATURE} {{",
            f"  %w = bitcast <16 x i32> %wi to <32 x {elem}>",
            f"  %xv = bitcast <16 x i32> %x to <32 x {elem}>",
            *x_lines,
            *_slices("w", 4, elem, 8),
            *_slices("acc", 4, "float", 4),
            *steps,
            *_concat([f"s{q}" for q in range(4)]),
            "}",
        ]
    )


def _call(dst: str, intrinsic: str, acc: str, w: str, x: str, elem: str) -> str:
    return (
        f"  %{dst} = call <4 x float> @llvm.aarch64.neon.{intrinsic}("
        f"<4 x float> %{acc}, <8 x {elem}> %{w}, <8 x {elem}> %{x})"
    )


def _bfmlal_ir(name: str) -> str:
    """w: one (k even, k odd) word per channel; x: the pair's word, as 4 words (8 halves)."""
    steps = []
    for q in range(4):  # channels 4q .. 4q + 3: the odd k (top halves), then the even k
        steps.append(_call(f"t{q}", "bfmlalt", f"acc{q}", f"w{q}", "x8", "bfloat"))
        steps.append(_call(f"s{q}", "bfmlalb", f"t{q}", f"w{q}", "x8", "bfloat"))
    x8 = _shuffle("x8", "xv", "bfloat", 32, [0, 1] * 4)
    return _function(name, ["bfmlalb", "bfmlalt"], "bfloat", [x8], steps)


def _fmlal_ir(name: str) -> str:
    """w: [16 channels at k even | 16 at k odd] halves; x: (k even, k odd) words."""
    fmlal = ("fmlal.v4f32.v8f16", "fmlal2.v4f32.v8f16")
    steps = []
    for k_odd, src, dst in ((1, "acc", "t"), (0, "t", "s")):  # the odd k first: pair order
        for q in range(4):  # channels 4q .. 4q + 3: the low / high half of register q // 2
            reg = 2 * k_odd + q // 2
            steps.append(
                _call(f"{dst}{q}", fmlal[q % 2], f"{src}{q}", f"w{reg}", f"x{k_odd}", "half")
            )
    splats = [_shuffle(f"x{i}", "xv", "half", 32, [i] * 8) for i in (0, 1)]
    return _function(name, list(fmlal), "half", splats, steps)


BFMLAL = PairInstruction(
    "bfmlal", "bf16", "graphopt_bfmlal", _bfmlal_ir("graphopt_bfmlal"), _TILE_ROWS, row_panels=2
)
FMLAL = PairInstruction(
    "fmlal",
    "fp16",
    "graphopt_fmlal",
    _fmlal_ir("graphopt_fmlal"),
    _TILE_ROWS,
    row_panels=2,
    split=True,
)
