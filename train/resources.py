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
