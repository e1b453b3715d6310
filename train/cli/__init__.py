"""The minispp command line: `minispp COMMAND --help` for each command's options and examples.

    minispp embedded --out data/embedded
    minispp compare --data data/embedded --out runs/compare --seeds 0,1
    minispp train --data DIR --net zf5 --spp 6,3,2,1 --mode multi --epochs N --batch B --out OUTDIR [--resume]
    minispp test --checkpoint OUTDIR/checkpoint.h5 --data DIR --split val --view center|10view|full|10view-fm|multiview --json RESULT.json
    minispp visualize --checkpoint CKPT --images DIR --layer conv5 [--filters 55,66,118] --out PNG
    minispp features --checkpoint CKPT --voc DIR|--caltech DIR|--folder DIR --split S --layer fc7 --scale 224 --view full --out CACHE.h5
    minispp svm --train CACHE --test CACHE --json RESULT.json
    minispp cache info CACHE.h5
    minispp features-compare --checkpoint CKPT --voc DIR --out runs/features
    minispp proposals --voc DIR --split test --out DIR
    minispp detect-train --voc DIR --checkpoint CKPT --out DETDIR
    minispp detect-test --voc DIR --split test --model DETDIR --json RESULT.json [--scales 688 | --scales 480,576,688,864,1200]
    minispp detect IMAGE... --model DETDIR --out PNGDIR
    minispp detect-time --voc DIR --model DETDIR
    mpiexec -n R minispp train | features | proposals | detect-train ...   (several processes)
"""
# OpenBLAS worker threads spin for about 2^28 cycles after each GEMM, and on a small machine
# they steal the cores from the Numba kernel that follows (im2col after a conv GEMM ran 1.6x
# slower). A short timeout (2^4 cycles) lets them sleep at once. OpenBLAS reads it when NumPy
# loads it, so the entry points (this command line, the benchmarks) set it before anything
# imports NumPy; a program of your own can export OPENBLAS_THREAD_TIMEOUT=4.
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from minispp.distributed import abort_on_uncaught  # noqa: E402

abort_on_uncaught()     # under mpiexec: a rank that fails, even while importing, ends the job

import argparse  # noqa: E402
import sys  # noqa: E402

from train.cli import classify, detection, features  # noqa: E402
from train.cli.common import check_outputs, chosen_device, error_line, tolerant_output  # noqa: E402

PIPELINES = (classify, features, detection)
# the commands that split their work over MPI ranks (README, "Beyond one machine")
SPLIT_COMMANDS = ("train", "features", "proposals", "detect-train")


def parse_args(argv):
    """The parsed arguments; .run is the command's function."""
    ap = argparse.ArgumentParser(prog="minispp", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for pipeline in PIPELINES:
        pipeline.register(sub, argparse.RawDescriptionHelpFormatter)
    return ap.parse_args(argv)


def main(argv=None):
    """Run one command. Expected failures (bad arguments or data: ValueError; files: OSError
    such as PermissionError or FileNotFoundError) end with one line `error: ...` on stderr and
    exit status 2; Ctrl-C outside training with `error: interrupted` and 130.

    Under an MPI launch (or --distributed) the command runs on every rank
    (minispp.distributed.init); a training stop that every rank takes at the same step
    (a signal, a non-finite loss, diverged parameters) ends each rank with its status, and
    any other error on one rank aborts the whole job (MPI_Abort), so no rank waits for ever."""
    a = parse_args(sys.argv[1:] if argv is None else argv)
    tolerant_output()
    from minispp import distributed
    from train.classify.trainer import TrainingStopped
    try:
        comm = distributed.init(getattr(a, "distributed", False) or None, chosen_device(a))
    except ValueError as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    who = f"rank {comm.rank}: " if comm.size > 1 else ""
    try:
        if comm.size > 1 and a.command not in SPLIT_COMMANDS:
            raise ValueError(f"`minispp {a.command}` runs in one process; under mpiexec only "
                             f"{', '.join(SPLIT_COMMANDS)} split their work over ranks")
        check_outputs(a)
        return a.run(a)
    except TrainingStopped as err:
        print(f"error: {who}{err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"error: {who}interrupted", file=sys.stderr)
        if comm.size > 1:
            comm.fail(130)
        return 130
    except (ValueError, OSError) as err:
        print(f"error: {who}{error_line(err)}", file=sys.stderr)
        if comm.size > 1:
            comm.fail(2)
        return 2


if __name__ == "__main__":
    sys.exit(main())
