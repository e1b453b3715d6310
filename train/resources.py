"""What a run costs the machine: the peak resident memory of this process (and of the worker
processes it waited for, such as selective search's), as the README's memory figures quote
it (README, "Memory and disk at VOC 2007's size")."""
import resource
import sys


def peak_rss_mb(children=False):
    """The largest resident set size so far, in MiB, of this process (children=True: of the
    largest finished child process). Linux reports KiB, macOS bytes."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    peak = resource.getrusage(who).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 1024)


def return_free_memory():
    """Give freed heap memory back to the system (a collection, then glibc's malloc_trim
    where there is one): after a stage that freed many mid-sized arrays (fine-tuning's
    pooled windows), the C heap otherwise keeps those pages resident."""
    import ctypes
    import gc
    gc.collect()
    try:
        # by name, not ctypes.util.find_library: that runs ldconfig in a child process, whose
        # peak resident size Linux starts at this process's (and peak_rss_mb(children=True)
        # would report it)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):     # not glibc: nothing to do
        pass
