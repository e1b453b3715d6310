"""Host batches onto the device with the copy overlapping the compute (README, "The GPU path").

``device_batches(batches, device)`` wraps a loader's ``(b, x, ...)`` batches. On the CPU
it yields them as they are. On the GPU each batch's images go, one batch ahead, through
page-locked (pinned) host memory to the device on a copy stream of their own: while the net
computes on batch b on CuPy's current stream, batch b + 1 is already crossing the bus.

The ordering, in CUDA stream terms:
  * the compute stream waits for an event recorded after a batch's copy before it reads it;
  * a batch's device buffer is allocated on the compute stream (CuPy's pool reuses memory in
    that stream's order), so its copy first waits for the compute queued at allocation time;
  * two pinned buffers alternate, and one is refilled only after its last copy finished.
What follows x (labels, image indices) stays on the host (the loss checks the labels there).
On the simulated device (the CPU-only tests) the copy is a plain one: no streams to overlap.
"""
import numpy as np

from minispp.backend import check_device, gpu_module


def device_batches(batches, device):
    """The (b, x, ...) tuples of `batches` with x on `device` ("cpu": unchanged)."""
    if check_device(device) == "cpu":
        yield from batches
        return
    xp = gpu_module()
    if not hasattr(xp, "cuda"):             # the simulated device
        for b, x, *rest in batches:
            yield (b, xp.asarray(x), *rest)
        return
    yield from PinnedFeed(xp).run(batches)


class PinnedFeed:
    """The copy stream and the two pinned buffers of one pass over a loader (CuPy)."""

    def __init__(self, cupy):
        self.cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.slots = [None, None]            # [pinned memory, uint8 view, last copy's event]
        self.turn = 0

    def _pinned(self, x):
        """x copied into the next pinned buffer (grown when too small); (slot, view)."""
        slot = self.slots[self.turn]
        if slot is not None and slot[2] is not None:
            slot[2].synchronize()             # its previous copy has left it
        if slot is None or slot[1].nbytes < x.nbytes:
            mem = self.cupy.cuda.alloc_pinned_memory(x.nbytes)
            slot = [mem, np.frombuffer(mem, np.uint8, x.nbytes), None]
            self.slots[self.turn] = slot
        self.turn ^= 1
        view = slot[1][:x.nbytes].view(x.dtype).reshape(x.shape)
        view[...] = x
        return slot, view

    def send(self, x):
        """Start x's copy; returns (device array, event recorded after the copy)."""
        compute = self.cupy.cuda.get_current_stream()
        dev = self.cupy.empty(x.shape, x.dtype)           # allocated in the compute order
        slot, view = self._pinned(np.ascontiguousarray(x))
        self.stream.wait_event(compute.record())
        dev.set(view, stream=self.stream)
        slot[2] = self.stream.record()
        return dev, slot[2]

    def run(self, batches):
        pending = None
        for b, x, *rest in batches:
            started = (b, *self.send(x), rest)             # b + 1's copy, before b is used
            if pending is not None:
                yield self._ready(pending)
            pending = started
        if pending is not None:
            yield self._ready(pending)

    def _ready(self, item):
        b, dev, copied, rest = item
        self.cupy.cuda.get_current_stream().wait_event(copied)
        return (b, dev, *rest)
