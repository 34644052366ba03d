"""Post-training weight pruning (`compile --prune ...`): magnitude or SparseGPT masks,
unstructured, N:M or output-channel blocks (docs/SPARSITY.md)."""
