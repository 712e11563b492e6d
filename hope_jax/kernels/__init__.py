"""Pallas kernels for the inner loops (model.memory.kernel; KERNEL_NOTES.md)."""
