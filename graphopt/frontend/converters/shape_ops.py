"""Shape-changing operators whose shape operand is a run-time input."""
