"""CPU kernels of the int4-weight matmul of `lower-int4` (kernels.py: the W4 x fp32 kernel and
its panel layout; materialize.py: the natural constants repacked for it)."""
