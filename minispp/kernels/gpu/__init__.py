"""CuPy bodies of the hot loops (RawKernel / cuDNN). Empty for now: every layer runs on the
CPU, and a CuPy array reaching a layer is refused with a clear TypeError."""
