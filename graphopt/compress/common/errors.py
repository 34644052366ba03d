"""The user-facing error of the quantization flow."""

from __future__ import annotations

from ...errors import GraphoptError


class CalibrationError(GraphoptError):
    """Bad calibration data or quantization settings; the message says what to fix."""
