"""Data-parallel ZF-5 SPP training steps (README, "Beyond one machine"): images/s with
1 rank x 2 threads, 1 rank x 1 thread and 2 ranks x 1 thread (mpiexec -n 2), and the time of
the one fused allreduce per step.

A step is what minispp.train's data-parallel step does (train.classify.trainer): forward and
backward of this rank's share of the global batch at 224x224 (the loss sum), one
GradientAllreduce of every gradient with the step's statistics, the division by the global
count, and the SGD update. Inputs are random arrays made before timing (no data loading), so
the figures are the computation and the communication. Every configuration runs in its own
process(es) with OpenBLAS and Numba pinned to its thread count; the median step is reported.

    python benchmarks/bench_distributed.py --batch 8 --steps 3
The scaling efficiency is (2 ranks' images/s) / (2 x 1 rank x 1 thread's images/s); against
1 rank x 2 threads it says whether two processes use two cores better than two threads do.
NCCL (several GPUs) is not measured here: the machine this was written on has no GPU.
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")     # as the command line sets it

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(batch, steps, threads, classes):
    """Time `steps` steps (after one warm-up step) on this process's rank; rank 0 prints one
    JSON line: images/s, seconds per step, allreduce seconds per step."""
    sys.path.insert(0, ROOT)
    from threadpoolctl import threadpool_limits

    import nets
    from minispp import distributed
    from minispp.layer import finite_checks
    from minispp.solver import SGD

    comm = distributed.init(None)
    import numba
    numba.set_num_threads(threads)
    share = len(distributed.batch_share(np.arange(batch), comm.rank, comm.size))
    model = nets.build("zf5", num_classes=classes, spp=(6, 3, 2, 1), rng=np.random.default_rng(0))
    net = model.instance(share, (224, 224))
    rng = np.random.default_rng(comm.rank + 1)
    x = rng.normal(0, 50, (share, 3, 224, 224)).astype(np.float32)
    labels = rng.integers(0, classes, share)
    solver = SGD(model.params, lr=1e-4)
    reducer = distributed.GradientAllreduce(comm, model.params, 3) if comm.size > 1 else None
    times, reduce_times, fused_times, compute_times, sgd_times = [], [], [], [], []
    with threadpool_limits(limits=threads, user_api="blas"):
        for step in range(steps + 1):
            comm.barrier()
            t0 = time.perf_counter()
            before = reducer.seconds if reducer else 0.0
            model.params.zero_grad()
            with finite_checks(False):
                loss = net.loss(x, labels, train=True)
                # one process: the mean's gradient, no buffer (the trainer's R = 1 path)
                net.backward(float(share) if comm.size > 1 else 1.0)
            t1 = time.perf_counter()
            if comm.size > 1:
                reducer.reduce([loss * share, 0.0, share], count=2)
            t2 = time.perf_counter()
            solver.step()
            t3 = time.perf_counter()
            comm.barrier()
            if step:                                   # step 0: warm-up
                times.append(time.perf_counter() - t0)
                reduce_times.append(reducer.seconds - before if reducer else 0.0)
                fused_times.append(t2 - t1)
                compute_times.append(t1 - t0)
                sgd_times.append(t3 - t2)
    distributed.check_identical(comm, model.params, "after the benchmark")
    if comm.is_root:
        step_s = statistics.median(times)
        print(json.dumps({"ranks": comm.size, "threads": threads, "batch": batch,
                          "step_s": step_s, "images_per_s": batch / step_s,
                          "allreduce_s": statistics.median(reduce_times),
                          "pack_allreduce_unpack_s": statistics.median(fused_times),
                          "forward_backward_s": statistics.median(compute_times),
                          "sgd_s": statistics.median(sgd_times),
                          "fused_mb": reducer.buf.nbytes / 2 ** 20 if reducer else 0.0}),
              flush=True)


def launch(ranks, threads, args):
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_RANK", "PMI_SIZE")}
    env.update(OPENBLAS_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads),
               PYTHONPATH=ROOT)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
           "--batch", str(args.batch), "--steps", str(args.steps), "--classes", str(args.classes)]
    if ranks > 1:
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        cmd = [mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec"), "-n", str(ranks)] + cmd
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="global batch (split over the ranks)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2,
                    help="each configuration this many times, in an order rotated each round "
                         "(a slow spell of the shared machine falls on every one); medians")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.batch, args.steps, args.threads, args.classes)
    configs = [(1, 2), (1, 1), (2, 1)]
    runs = {c: [] for c in configs}
    for k in range(args.rounds):
        for c in configs[k % 3:] + configs[:k % 3]:
            runs[c].append(launch(*c, args))
            print(f"round {k + 1}: {c[0]} rank(s) x {c[1]} thread(s): "
                  f"{runs[c][-1]['images_per_s']:.2f} images/s", flush=True)
    rows = {}
    for (ranks, threads), got in runs.items():
        r = {key: statistics.median(g[key] for g in got) if isinstance(got[0][key], float)
             else got[0][key] for key in got[0]}
        rows[ranks, threads] = r
        print(f"{ranks} rank(s) x {threads} thread(s): {r['images_per_s']:.2f} images/s, "
              f"{r['step_s']:.2f} s per step of {args.batch} images (forward+backward "
              f"{r['forward_backward_s']:.2f} s, SGD {r['sgd_s']:.2f} s)"
              + (f", MPI_Allreduce {r['allreduce_s'] * 1e3:.0f} ms per step (with packing and "
                 f"the division {r['pack_allreduce_unpack_s'] * 1e3:.0f} ms; "
                 f"{r['fused_mb']:.0f} MB fused buffer)" if ranks > 1 else ""),
              flush=True)
    one, two_threads, two = rows[1, 1], rows[1, 2], rows[2, 1]
    print(f"\nscaling efficiency, 2 ranks x 1 thread vs 2 x (1 rank x 1 thread): "
          f"{two['images_per_s'] / (2 * one['images_per_s']):.0%}")
    print(f"2 ranks x 1 thread / 1 rank x 2 threads: {two['images_per_s'] / two_threads['images_per_s']:.2f}x")
    print(f"share of the 2-rank step in the fused allreduce (packing included): "
          f"{two['pack_allreduce_unpack_s'] / two['step_s']:.0%}")
    print(json.dumps({f"{r}x{t}": v for (r, t), v in rows.items()}))


if __name__ == "__main__":
    main()
