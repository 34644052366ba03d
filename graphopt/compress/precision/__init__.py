"""`--precision bf16|fp16|mixed`: 16-bit weights and activations per layer (docs/PRECISION.md)."""
