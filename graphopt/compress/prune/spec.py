"""The `--prune` spec: which zero pattern, how much of it.

unstructured=0.5   half of each layer's weights zero, anywhere
2:4                2 of every 4 consecutive input weights of an output channel zero
block=0.7          70% of each layer's blocks of `block` consecutive output channels of one
                   input channel (of `depth` consecutive input channels with `--prune-block
                   16x4`) zero: what the x86 block-sparse kernels skip (the int8 ones: 16x4)

(`macs=0.75`, structured pruning of whole channels, is another method: compress/channels.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..common.errors import CalibrationError

PATTERNS = ("unstructured", "nm", "block")
MAX_BLOCK = 64


@dataclass(frozen=True)
class PruneSpec:
    pattern: str  # unstructured | nm | block
    sparsity: float  # fraction of weights (unstructured, nm: n/m) or of blocks zero
    n: int = 0  # nm: zeros per group
    m: int = 0  # nm: group length along the input channels
    block: int = 16  # block: output channels per block
    depth: int = 1  # block: input channels per block

    def text(self) -> str:
        if self.pattern == "nm":
            return f"{self.n}:{self.m}"
        if self.pattern == "block":
            return f"block{self.block}x{self.depth}={self.sparsity:g}"
        return f"unstructured={self.sparsity:g}"

    def with_sparsity(self, sparsity: float) -> PruneSpec:
        """The same pattern at another level (N:M levels are fixed by n and m)."""
        if self.pattern == "nm":
            return self
        return PruneSpec(self.pattern, sparsity, self.n, self.m, self.block, self.depth)


def _fraction(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CalibrationError(f"--prune {spec}: '{text}' is not a number") from None
    if not 0.0 < value < 1.0:
        raise CalibrationError(
            f"--prune {spec}: sparsity must lie strictly between 0 and 1 (0.5 is half zero)"
        )
    return value


# Block depths: powers of two, so a block of input channels never straddles SparseGPT's lazy
# blocks of 128 rows.
DEPTHS = (1, 2, 4, 8, 16, 32, 64)


def parse_block(text: str | int) -> tuple[int, int]:
    """`--prune-block` B or BxD: output channels and input channels per block."""
    out, x, depth = str(text).strip().lower().partition("x")
    if not (out.isdigit() and (not x or depth.isdigit())):
        raise CalibrationError(f"--prune-block '{text}': use B or BxD (16, 16x4)")
    block, depth_ = int(out), int(depth) if x else 1
    if not 1 <= block <= MAX_BLOCK:
        raise CalibrationError(f"--prune-block must be between 1 and {MAX_BLOCK}, not {block}")
    if depth_ not in DEPTHS:
        raise CalibrationError(f"--prune-block {text}: the depth must be one of {DEPTHS}")
    return block, depth_


def parse_spec(text: str, block: str | int = 16) -> PruneSpec:
    """A PruneSpec from `--prune` text; one-line CalibrationError (exit 2) when malformed."""
    text = text.strip()
    width, depth = parse_block(block)
    key, eq, value = text.partition("=")
    if eq and key == "unstructured":
        return PruneSpec("unstructured", _fraction(value, text))
    if eq and key == "block":
        return PruneSpec("block", _fraction(value, text), block=width, depth=depth)
    n, colon, m = text.partition(":")
    if colon and n.isdigit() and m.isdigit():
        n_, m_ = int(n), int(m)
        if not 0 < n_ < m_ <= MAX_BLOCK:
            raise CalibrationError(f"--prune {text}: N:M needs 0 < N < M <= {MAX_BLOCK} (e.g. 2:4)")
        return PruneSpec("nm", n_ / m_, n=n_, m=m_)
    raise CalibrationError(
        f"--prune '{text}' is not a pruning spec: use unstructured=0.5, block=0.7, 2:4 or macs=0.75"
    )
