"""Type and lower every numba.cuda kernel of minispp/kernels/gpu/ for the real CUDA target
(compute capability 9.0), float32 and float64, without a GPU.

The simulator runs kernels as plain Python, so it accepts code the CUDA target rejects (a
NumPy call, a type that does not unify, a builtin that needs a device to compile). This
script compiles each kernel to LLVM IR through Numba's CUDA front end, which needs no driver
and no toolkit; with --ptx it goes on to PTX, which needs NVVM (a CUDA toolkit, e.g. the
`nvidia-cuda-nvcc-cu12` wheel with CUDA_HOME pointing at its nvidia/cuda_nvcc folder).

    python tests/gpu_lowering_check.py [--ptx]

Run by tests/test_gpu_kernels.py in a child process with NUMBA_ENABLE_CUDASIM=0. Prints one
line per kernel and dtype; exits 1 when any fails.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CC = (9, 0)


def signatures(f):
    """(kernel, argument types) for every kernel, with floats of type f, as the launchers
    pass them (Python ints are int64, flags boolean, arrays C-contiguous)."""
    from numba import types

    from minispp.kernels.gpu import dropout, im2col, lrn, maxpool, sgd, spp
    i64, i32, b = types.int64, types.int32, types.boolean

    def A(dt, nd):
        return types.Array(dt, nd, "C")
    return [
        (maxpool._maxpool_forward, (A(f, 4),) + (i64,) * 6 + (A(f, 4), A(i32, 4), b)),
        (maxpool._maxpool_gather, (A(f, 4), A(i32, 4)) + (i64,) * 6 + (f, A(f, 4))),
        (maxpool._max_scatter_planes, (A(f, 3), A(i32, 3), A(f, 3))),
        (spp._spp_forward, (A(f, 4), A(i64, 1)) + (A(i64, 2),) * 6 + (A(f, 2), A(i32, 2), b)),
        (spp._zero3, (A(f, 3),)),
        (spp._spp_backward, (A(f, 2), A(i32, 2), A(i64, 1), A(i64, 2), A(f, 3))),
        (lrn._lrn_forward, (A(f, 3), i64, i64, f, f, f, A(f, 3), A(f, 3), A(f, 3))),
        (lrn._lrn_ratio, (A(f, 3),) * 5),
        (lrn._lrn_dx, (A(f, 3),) * 4 + (i64, i64, types.float64, f, A(f, 3))),
        (im2col._im2col, (A(f, 4),) + (i64,) * 8 + (A(f, 2),)),
        (im2col._col2im, (A(f, 2),) + (i64,) * 8 + (f, A(f, 4))),
        (sgd._sgd_momentum, (A(f, 1),) * 3 + (f, f, f)),
        (dropout._dropout_mask, (A(types.uint64, 1), types.uint64, f, A(f, 2))),
    ]


def main(argv):
    from numba import cuda, types
    from numba.core import config
    if config.ENABLE_CUDASIM:
        print("run with NUMBA_ENABLE_CUDASIM=0: the simulator has no CUDA front end")
        return 2
    from numba.cuda import dispatcher
    from numba.cuda.compiler import compile_cuda
    # a device function (the dropout kernel's Philox rounds) is compiled for the current
    # device's compute capability: with no device, name the target's
    dispatcher.get_current_device = lambda: type("Target", (), {"compute_capability": CC})()
    ptx = "--ptx" in argv
    failed = 0
    for f in (types.float32, types.float64):
        for kernel, sig in signatures(f):
            name = kernel.py_func.__name__
            try:
                if ptx:
                    cuda.compile_ptx(kernel.py_func, sig, cc=CC)
                else:
                    compile_cuda(kernel.py_func, types.void, sig, cc=CC)
                print(f"ok {name} {f}")
            except Exception as err:        # report every kernel, then fail
                failed += 1
                print(f"FAIL {name} {f}: {type(err).__name__}: {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
