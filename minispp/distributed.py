"""Several processes as one run: data-parallel SGD and sharded extraction over MPI
(docs/design.md, "Beyond one machine").

``mpiexec -n R minispp train ...`` starts R copies of the same command. Each copy calls
``init()``, which decides the communicator in one place:

  Single     one process (no MPI launch, no --distributed): every collective is a no-op;
  MPI        mpi4py on host buffers (NumPy): MPI_Allreduce of one fused buffer per step;
  NCCL       CuPy arrays (--device gpu): each rank takes the GPU of its local rank and the
             fused buffer is allreduced on the device with cupy.cuda.nccl; the small control
             messages (checksums, the NCCL id, barriers) still go over MPI.

A launch is recognised by the variables the launchers set (MPICH/Hydra and Intel MPI:
PMI_RANK, PMI_SIZE; Open MPI: OMPI_COMM_WORLD_SIZE; PMIx: PMIX_RANK; Slurm's srun with
--mpi=pmi2 or pmix sets the PMI ones). Nothing here is a process pool or a protocol of its
own: the collectives are MPI's (or NCCL's).

Failure: a rank that fails must not leave the others waiting in a collective for ever. An
error on one rank ends the whole job with MPI_Abort (``fail()``, and ``sys.excepthook`` for
an uncaught exception); a rank killed outright is noticed by the launcher (mpiexec ends the
others). Errors that every rank meets at the same point (an agreed stop, the same bad
argument) end every rank in the ordinary way.

The gradient arithmetic: each rank backpropagates the *sum* of its images' losses
(``Net.backward(dloss=n_local)``), the sums and the image counts go through one allreduce,
and every rank divides by the global count: the mean over the global batch, whatever R, and
the same value on every rank (MPI's reduction of two or more buffers gives every rank the
same bits in the libraries used here; ``check_identical`` verifies it every N steps).
"""
import os
import sys
import time
import zlib

import numpy as np

from minispp.backend import get_array_module, to_numpy

# variables that the MPI launchers set in every rank's environment
LAUNCH_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                    "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
INSTALL_HINT = "pip install -e '.[mpi]' (mpi4py and the MPICH wheel)"


def launched_by_mpi(environ=None):
    """True when this process was started by an MPI launcher (mpiexec, mpirun, srun)."""
    environ = os.environ if environ is None else environ
    return any(v in environ for v in LAUNCH_VARIABLES)


def mpi_available():
    """True when mpi4py can be imported (without initialising MPI)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


class ParametersDiverged(RuntimeError):
    """The ranks' parameters are no longer bit-identical."""


class Single:
    """One process: rank 0 of 1; the collectives return their input."""

    kind = "single"
    rank, size, local_rank, local_size = 0, 1, 0, 1

    @property
    def is_root(self):
        return self.rank == 0

    def allreduce_sum(self, buf):
        """Sum buf over the ranks, in place; returns buf."""
        return buf

    def allreduce_max(self, values):
        """Element-wise maximum of a small NumPy array over the ranks, in place."""
        return values

    def broadcast(self, values, root=0):
        """values (a NumPy array) from rank root, in place."""
        return values

    def barrier(self):
        pass

    def fail(self, code):
        """End this rank and, under MPI, the whole job, with exit status code."""
        sys.exit(code)

    def describe(self):
        return "1 process"


class MPIComm(Single):
    """MPI_COMM_WORLD through mpi4py; buffers are host (NumPy) arrays."""

    kind = "mpi"

    def __init__(self):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        # the ranks on this machine (MPI-3 shared-memory split): threads and GPUs are shared
        # among them, so a rank's local rank picks its GPU
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    def allreduce_sum(self, buf):
        if get_array_module(buf) is not np:
            raise TypeError("MPIComm reduces host arrays; device arrays go through NCCLComm")
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def allreduce_max(self, values):
        self.comm.Allreduce(self.MPI.IN_PLACE, values, op=self.MPI.MAX)
        return values

    def broadcast(self, values, root=0):
        self.comm.Bcast(values, root=root)
        return values

    def barrier(self):
        self.comm.Barrier()

    def fail(self, code):
        """MPI_Abort: the launcher ends every rank (the others may be waiting in a
        collective that this rank will never join)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.size > 1:
            self.comm.Abort(int(code) or 1)
        sys.exit(code)

    def describe(self):
        return f"{self.size} MPI ranks ({self.local_size} on this machine)"


def nccl_communicator(nccl, bcast, size, rank):
    """An NCCL communicator of `size` ranks: the NCCL id (128 bytes) is made on rank 0 and
    broadcast with bcast(int8 array, root=0) (MPI's Bcast). CuPy 14 gives and takes the id
    as bytes; older CuPy as a tuple of 128 small ints: both are handled."""
    uid = np.zeros(128, dtype=np.int8)                        # NCCL_UNIQUE_ID_BYTES
    if rank == 0:
        made = nccl.get_unique_id()
        uid[:] = (np.frombuffer(made, np.int8) if isinstance(made, (bytes, bytearray))
                  else np.array(made, dtype=np.int64).astype(np.int8))
    bcast(uid, root=0)
    try:
        return nccl.NcclCommunicator(size, uid.tobytes(), rank)
    except TypeError:                                         # the tuple form
        return nccl.NcclCommunicator(size, tuple(int(v) for v in uid), rank)


class NCCLComm(MPIComm):
    """MPI for control, NCCL (cupy.cuda.nccl) for the gradient buffer on the device. Each
    rank uses GPU local_rank (mod the GPUs it sees). Written for CuPy's NCCL binding; it has
    not been run on a machine with several GPUs (README, "Beyond one machine")."""

    kind = "nccl"

    def __init__(self):
        super().__init__()
        import cupy
        from cupy.cuda import nccl
        self.cupy, self.nccl = cupy, nccl
        cupy.cuda.Device(self.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
        self.nccl_comm = nccl_communicator(nccl, self.comm.Bcast, self.size, self.rank)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def allreduce_sum(self, buf):
        if get_array_module(buf) is np:
            return super().allreduce_sum(buf)
        stream = self.cupy.cuda.get_current_stream()
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._types[buf.dtype],
                                 self.nccl.NCCL_SUM, stream.ptr)
        stream.synchronize()
        return buf

    def describe(self):
        return f"{self.size} MPI ranks, gradients over NCCL on GPU {self.local_rank}"


_WORLD = Single()


def world():
    """The communicator of this process (Single until init() made another)."""
    return _WORLD


def init(distributed=None, device=None):
    """Decide this process's communicator, once, and return it.

    distributed: True (--distributed), False, or None: MPI when launched by an MPI launcher.
    device: "gpu" gives NCCLComm when there are several ranks (CuPy arrays), else MPI;
    None: minispp.backend.device().
    Under MPI with several ranks an uncaught exception on any rank aborts the job, and the
    Numba kernels of the ranks on one machine share its cores."""
    global _WORLD
    if device is None:                  # not given: where new arrays go (MINISPP_DEVICE)
        from minispp.backend import device as current_device
        device = current_device()
    if distributed is None:
        distributed = launched_by_mpi()
    if not distributed:
        _WORLD = Single()
        return _WORLD
    if not mpi_available():
        raise ValueError(f"--distributed (or a launch by mpiexec) needs mpi4py: {INSTALL_HINT}")
    comm = MPIComm()
    if device == "gpu" and comm.size > 1:
        comm = NCCLComm()
    _WORLD = comm
    if comm.size > 1:
        abort_on_uncaught()
        _share_cores(comm.local_size)
    return comm


def abort_on_uncaught():
    """Under an MPI launch, make an uncaught exception end the whole job with MPI_Abort:
    the other ranks would otherwise wait for ever, in MPI_Init or in a collective, for a
    rank that is gone (Hydra ends the job when a rank is killed by a signal, not when one
    exits with an error). The command line installs it before its own imports, so that a
    rank failing while it imports is covered too; installing it again is a no-op."""
    if not launched_by_mpi() or getattr(sys.excepthook, "minispp_abort", False):
        return
    previous = sys.excepthook

    def abort_job(kind, value, tb):
        rank = os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "?"))
        print(f"rank {rank}: uncaught {kind.__name__}; aborting every rank", file=sys.stderr)
        previous(kind, value, tb)
        sys.stderr.flush()
        # MPI_Abort ends the launcher's forwarding of this rank's output too: give it a moment
        # to pass on the lines above first
        time.sleep(0.5)
        try:
            from mpi4py import MPI
            MPI.COMM_WORLD.Abort(1)
        except Exception:           # no mpi4py: nothing else to end
            pass
    abort_job.minispp_abort = True
    sys.excepthook = abort_job


def _share_cores(local_size):
    """Numba threads per rank: the machine's cores divided among its ranks (the kernels'
    results do not depend on the thread count: README, "Training"). OpenBLAS threads are a
    recorded training setting (--blas-threads) and are left to it."""
    if "NUMBA_NUM_THREADS" in os.environ:
        return
    try:
        import numba
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS,
                                         (os.cpu_count() or 1) // local_size)))
    except (ImportError, ValueError):
        pass


def shard(items, comm=None):
    """This rank's share of a sequence: every R-th item from position rank (interleaved, so
    consecutive images, often of one size, spread over the ranks)."""
    comm = comm or world()
    return items[comm.rank::comm.size]


def batch_share(indices, rank, size):
    """Rank's part of one global batch: a contiguous slice, the parts in rank order and
    differing in length by at most one (the last, smaller batch of an epoch may give a rank
    nothing)."""
    n = len(indices)
    return indices[rank * n // size:(rank + 1) * n // size]


class GradientAllreduce:
    """One fused buffer for a step: every parameter's gradient, then a few statistics.

    reduce(stats, count) packs the gradients (sums over this rank's images) and the stats,
    allreduces the buffer once, divides every gradient by the global count (stats[count]
    after the sum) and returns the summed stats as float64. .seconds: time in the
    allreduce itself; .calls: how many."""

    def __init__(self, comm, params, n_stats):
        self.comm, self.params = comm, list(params.values())
        xp = get_array_module(self.params[0].value)
        self.offsets, total = [], 0
        for p in self.params:
            self.offsets.append((total, total + p.value.size))
            total += p.value.size
        self.n_grad = total
        self.buf = xp.empty(total + int(n_stats), dtype=params.dtype)
        self.seconds, self.calls = 0.0, 0

    def reduce(self, stats, count):
        buf, n = self.buf, self.n_grad
        for p, (a, b) in zip(self.params, self.offsets):
            buf[a:b] = p.grad.reshape(-1)
        buf[n:] = get_array_module(buf).asarray(np.asarray(stats, dtype=buf.dtype))
        t0 = time.perf_counter()
        self.comm.allreduce_sum(buf)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        total = to_numpy(buf[n:]).astype(np.float64)
        scale = buf.dtype.type(1.0 / total[count]) if total[count] > 0 else buf.dtype.type(0)
        for p, (a, b) in zip(self.params, self.offsets):
            get_array_module(buf).multiply(buf[a:b], scale, out=p.grad.reshape(-1))
        return total


def parameters_checksum(params):
    """A 32-bit checksum of every parameter value's bits (CRC-32 on the host; on the device
    a sum of the values' 32-bit words, so the parameters are not copied back)."""
    crc = 0
    for name, p in params.items():
        v = p.value
        xp = get_array_module(v)
        if xp is np:
            crc = zlib.crc32(np.ascontiguousarray(v).view(np.uint8).reshape(-1), crc)
        else:
            words = xp.ascontiguousarray(v).reshape(-1).view(xp.uint32)
            crc = zlib.crc32(np.int64(int(words.sum(dtype=xp.uint64)) % (1 << 63)).tobytes(), crc)
    return crc


def check_identical(comm, params, where):
    """ParametersDiverged (on every rank) unless every rank holds the same parameter bits:
    one allreduce(max) of (checksum, -checksum)."""
    if comm.size == 1:
        return
    c = parameters_checksum(params)
    both = comm.allreduce_max(np.array([c, -c], dtype=np.int64))
    if int(both[0]) != -int(both[1]):
        raise ParametersDiverged(
            f"the parameters of the {comm.size} ranks differ {where} (checksums from "
            f"{-int(both[1]):08x} to {int(both[0]):08x}): the ranks no longer apply the same "
            f"update (an MPI library whose sums differ between ranks, or a rank's memory "
            f"changed); stopping. Resume from the last checkpoint")
