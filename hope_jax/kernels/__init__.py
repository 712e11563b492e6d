"""Pallas kernels for the inner loops (model.memory.kernel; README.md here)."""
