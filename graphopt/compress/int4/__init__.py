"""int4 weight-only compression: group-wise 4-bit matmul weights, packed two per byte
(`quant.py`), round-to-nearest or GPTQ-style error compensation (`gptq.py`) from calibration
activations (`hessian.py`), the `Int4` method (`method.py`)."""
