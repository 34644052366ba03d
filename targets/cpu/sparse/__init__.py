"""Block-sparse kernels of the CPU targets (`sparsify`'s op) and the rule that decides when a
layer takes them."""
