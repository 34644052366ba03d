"""What every compression method shares: layer discovery (layers.py), calibration data
(data.py), accuracy metrics (metrics.py), the user-facing error (errors.py)."""
