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


def paired_times(fns, rounds, warmup=1):
    """{name: [seconds per round]} of several variants of one job, run interleaved: each round
    runs every variant once, in an order rotated by one each round, so that a slow spell of a
    shared machine falls on every variant alike. Compare variants by the median of per-round
    ratios."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times
