"""Package settings read once at import."""

CACHE = True  # numba's on-disk cache for the CPU kernels
