"""Convolution through the cuDNN Frontend's Python graph API (PyPI ``nvidia-cudnn-frontend``,
imported as ``cudnn``, over the ``nvidia-cudnn-cu13`` library): the Conv layer's GPU body
where it is installed, for float32. CuPy 14 dropped its own cuDNN module, hence this.
Written against Frontend 1.20 (the version setup.py's gpu extra pins: its calls and keyword
names were read from that wheel; building a graph needs libcudnn and a GPU, so nothing here
has run yet).

One graph per (operation, shapes, stride, pad, device): ``conv_fprop`` (y from x, W),
``conv_dgrad`` (dx from dy, W) or ``conv_wgrad`` (dW from x, dy), NCHW and contiguous. A graph
is built once: cuDNN's heuristics (mode A, then the fallback list) rank the engines, engines
that need more than WORKSPACE_BYTES of workspace are deselected, and so are the Tensor Core
(TF32) engines, so float32 is float32 as on the CPU. The built plan is cached and executed
on CuPy's current stream with device pointers and one shared workspace buffer. A shape that
cuDNN does not support, or a Frontend without these calls, is remembered as unsupported and
the layer uses its im2col + cuBLAS body instead (``plan`` returns None).

Never imported on the CPU path: layers/conv.py imports it inside its GPU body. Nothing here
runs under Numba's CUDA simulator (``usable`` says no there), so it is checked only on a
GPU machine (tests/test_gpu.py), against the im2col body and the CPU body.
"""
import numpy as np

from minispp.lru import LRUCache

try:
    import cudnn
except Exception:           # not installed, or libcudnn failed to load: the im2col + cuBLAS
    cudnn = None            # body is used instead

WORKSPACE_BYTES = 256 << 20      # the most workspace one convolution may use
_plans = LRUCache(64)            # key -> built graph and its tensors, or None (unsupported):
                                 # the 64 most recently used, as test-time forwards see a new
                                 # shape for nearly every image
_handles = {}                    # device id -> cuDNN handle
_workspace = {}                  # device id -> CuPy uint8 buffer


def usable(x):
    """True when x (a CuPy array) can go through cuDNN: the Frontend imports, float32, and
    not the simulated device."""
    if cudnn is None or x.dtype != np.float32:
        return False
    import cupy
    return isinstance(x, cupy.ndarray)


def _contiguous_strides(shape):
    strides, s = [], 1
    for d in reversed(shape):
        strides.append(s)
        s *= d
    return list(reversed(strides))


def _tensor(graph, name, shape):
    return graph.tensor(name=name, dim=list(shape), stride=_contiguous_strides(shape),
                        data_type=cudnn.data_type.FLOAT)


def _build(op, x_shape, w_shape, y_shape, stride, pad, handle):
    f32 = cudnn.data_type.FLOAT
    g = cudnn.pygraph(io_data_type=f32, intermediate_data_type=f32, compute_data_type=f32,
                      handle=handle)
    geometry = dict(pre_padding=list(pad), post_padding=list(pad), stride=list(stride),
                    dilation=[1, 1])
    if op == "fprop":
        a, b = _tensor(g, "x", x_shape), _tensor(g, "w", w_shape)
        out, out_shape = g.conv_fprop(image=a, weight=b, compute_data_type=f32, **geometry), y_shape
    elif op == "dgrad":
        a, b = _tensor(g, "dy", y_shape), _tensor(g, "w", w_shape)
        out, out_shape = g.conv_dgrad(loss=a, filter=b, compute_data_type=f32, **geometry), x_shape
    else:
        a, b = _tensor(g, "x", x_shape), _tensor(g, "dy", y_shape)
        out, out_shape = g.conv_wgrad(image=a, loss=b, compute_data_type=f32, **geometry), w_shape
    out.set_output(True).set_dim(list(out_shape)).set_stride(
        _contiguous_strides(out_shape)).set_data_type(f32)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.deselect_workspace_greater_than(WORKSPACE_BYTES)
    notes = getattr(cudnn, "numerical_note", None)
    if notes is not None and hasattr(notes, "TENSOR_CORE"):
        g.deselect_numeric_notes([notes.TENSOR_CORE])     # no TF32 for float32
    g.build_plans()
    return g, (a, b, out)


def plan(op, x_shape, w_shape, y_shape, stride, pad):
    """The built graph for one convolution op, or None where cuDNN cannot run it."""
    import cupy
    dev = cupy.cuda.Device().id
    key = (op, tuple(x_shape), tuple(w_shape), tuple(y_shape), tuple(stride), tuple(pad), dev)
    return _plans.get_or_make(key, lambda: _new_plan(op, x_shape, w_shape, y_shape, stride,
                                                     pad, dev))


def _new_plan(op, x_shape, w_shape, y_shape, stride, pad, dev):
    global cudnn
    try:
        handle = _handles.get(dev)
        if handle is None:
            handle = _handles[dev] = cudnn.create_handle()
    except Exception as e:      # libcudnn missing or unloadable: im2col for this process
        import warnings
        warnings.warn(f"cuDNN unusable ({type(e).__name__}: {e}); convolutions use im2col "
                      f"+ cuBLAS")
        cudnn = None
        return None
    try:
        return _build(op, x_shape, w_shape, y_shape, stride, pad, handle)
    except Exception:           # cudnnGraphNotSupportedError, or an older Frontend
        return None


def execute(built, a, b, out):
    """Run a built graph on CuPy's current stream: inputs a, b and the output out (CuPy
    arrays, C-contiguous float32, in the graph's order)."""
    import cupy
    graph, tensors = built
    dev = cupy.cuda.Device().id
    need = max(1, int(graph.get_workspace_size()))
    ws = _workspace.get(dev)
    if ws is None or ws.size < need:
        ws = _workspace[dev] = cupy.empty(need, dtype=cupy.uint8)
    handle = _handles[dev]
    cudnn.set_stream(handle=handle, stream=cupy.cuda.get_current_stream().ptr)
    graph.execute({t: int(v.data.ptr) for t, v in zip(tensors, (a, b, out))}, int(ws.data.ptr),
                  handle=handle)
    return out
