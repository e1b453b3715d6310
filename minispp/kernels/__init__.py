"""Hot loops, one function per op with two bodies: ``cpu/`` (Numba) and ``gpu/`` (CuPy).

A layer's ``_forward_cpu`` / ``_backward_cpu`` call the CPU bodies on NumPy arrays;
``minispp.Layer`` picks the body by the array type, and a CuPy array reaching a layer
without a GPU body raises ``minispp.layer.NoGPUBody``.
"""
