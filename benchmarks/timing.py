"""The one timing rule of the benchmarks: warm-up runs first (Numba compiles or loads its
cache, allocators settle), then the median of timed runs."""
import statistics
import time


def median_time(fn, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
