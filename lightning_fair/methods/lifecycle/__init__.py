"""What every method's fit shares: scale calibration, per-split artifacts, schedules, checkpoints, diagnostics."""
