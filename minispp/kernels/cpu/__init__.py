"""Numba bodies of the hot loops. Compiled with cache=True: the first run of a fresh checkout
compiles each kernel once per dtype (float32, float64) and later runs load the cache."""
