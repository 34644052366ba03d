"""16-bit (bf16 / fp16) weight matmul kernels for the CPU targets (docs/PRECISION.md)."""
