"""Hot loops, one function per op with two bodies: ``cpu/`` (Numba) and ``gpu/`` (CuPy).

The layers call the CPU bodies directly on NumPy arrays; ``minispp.backend.require_cpu``
turns a CuPy array reaching an op without a GPU body into a clear error.
"""
