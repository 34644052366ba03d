"""int8 post-training quantization: calibration data, range observers, QDQ helpers, sensitivity.

The flow (see docs/INT8.md): run the fp32 graph on calibration samples with the inputs of every
quantizable layer as extra outputs (`calibrate`), turn the observed distributions into ranges
(`observers`), then the `quantize` pass inserts quantize/dequantize pairs (the QDQ form documented
in `passes/quantize.py`) using those ranges.
"""

from __future__ import annotations

from ..common.errors import CalibrationError

__all__ = ["CalibrationError"]
