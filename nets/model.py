"""A model: one network definition and one Params store, instantiated at fixed sizes.

Like cuda-convnet's fixed-size networks, every input size gets its own Net (its own shapes,
SPP bins and buffers), and all of them are the same parameters: ``model.instance(size=(224,
224))`` and ``model.instance(size=(180, 180))`` read and write one Params store, which is how
multi-size training (paper Sec. 2.3) shares everything between the 224 and 180 networks.

A model lives on one device: ``build(..., device="gpu")`` or ``model.to("gpu")`` moves its
Params store, and every instance, made before or after, then runs its GPU bodies when it is
fed device arrays. Checkpoints are written from host copies and load on either device.
"""

import numpy as np

import minispp
from layers import Conv, MaxPool, ReLU, SoftmaxLoss
from minispp import Net, Params
from minispp import backend
from minispp.backend import module_of, to_device, to_numpy
from minispp.storage.checkpoint import read_checkpoint, read_weights, save_checkpoint, write_weights
from minispp.geometry import receptive_field
from minispp.layer import as_pair
from minispp.lru import LRUCache
from minispp.pyramid import check_levels

from .definitions import DEFINITIONS

CANONICAL_SIZE = (224, 224)   # the size parameters are created at (Table 1's map sizes)
MAX_CACHED = 8                # instances kept per model (full images come in many sizes)


def parse_size(size):
    """(H, W) from 224, (224, 224), "224" or "427x640" (height x width)."""
    if isinstance(size, str):
        parts = size.lower().split("x")
        try:
            vals = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"size {size!r} is not N or HxW") from None
        if len(vals) not in (1, 2):
            raise ValueError(f"size {size!r} is not N or HxW")
        size = vals[0] if len(vals) == 1 else tuple(vals)
    h, w = as_pair(size, "size")
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def input_normalization(extras, mean="image"):
    """(mean, pixel_scale) of a run from its extra arrays: the network input is
    (pixels - mean) * pixel_scale, with mean the training set's mean image (mean="image")
    or a constant (the run's --mean), and pixel_scale 1 / the training pixels' standard
    deviation (docs/design.md, "Input normalization")."""
    m = extras["mean_image"] if mean == "image" else float(mean)
    return m, 1.0 / float(extras["pixel_std"])


def parse_spp(text):
    """None for "none", else a tuple of levels from "6,3,2,1"."""
    if text is None or str(text).lower() == "none":
        return None
    if isinstance(text, str):
        try:
            text = [int(t) for t in text.split(",")]
        except ValueError:
            raise ValueError(f"--spp must be 'none' or levels like 6,3,2,1, got {text!r}") from None
    return check_levels(text)        # the one check of a pyramid's levels (minispp.pyramid)


class Model:
    """definition: a name in nets.DEFINITIONS. args: its arguments (num_classes, spp, form).
    params: the Params store (created here when None). rng: Generator for the initial
    weights and the dropout masks of every instance."""

    def __init__(self, definition, args, params=None, rng=None, dtype=np.float32):
        if definition not in DEFINITIONS:
            raise ValueError(f"unknown net {definition!r}; known: {sorted(DEFINITIONS)}")
        self.definition = definition
        self.args = dict(args)
        self.specs = DEFINITIONS[definition](**self.args)
        self.params = params if params is not None else Params(dtype)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.meta = {}
        self.extras = {}
        self.checksum = None          # of the checkpoint it was loaded from
        self._instances = LRUCache(MAX_CACHED)
        self.instance(batch=1, size=CANONICAL_SIZE)       # creates every parameter

    @property
    def spp(self):
        return self.args.get("spp")

    @property
    def device(self):
        """"cpu" or "gpu": where the parameters are."""
        return self.params.device

    @property
    def xp(self):
        """The array module of the model's device (numpy, or cupy on the GPU): inputs are
        made with xp.asarray(batch)."""
        return module_of(self.device)

    def to(self, device):
        """Move the parameters (values, gradients, solver state) to device, "cpu" or "gpu";
        GPUUnavailable (one line) where CuPy or a GPU is missing. Returns the model."""
        self.params.to(device)
        return self

    def input_normalization(self, mean=None):
        """(mean, pixel_scale) this model's inputs are normalized with; mean: "image" or a
        constant to override the run's own (its --mean, kept in the checkpoint)."""
        return input_normalization(self.extras, mean or self.meta.get("config", {}).get("mean", "image"))

    @property
    def trunk_length(self):
        """Number of specs up to and including the last conv layer's ReLU."""
        last_conv = max(i for i, s in enumerate(self.specs) if s.is_a(Conv))
        follows = self.specs[last_conv + 1] if last_conv + 1 < len(self.specs) else None
        return last_conv + 2 if follows is not None and follows.is_a(ReLU) else last_conv + 1

    @property
    def trunk_channels(self):
        """Channels of the last conv map (256 for ZF-5's conv5)."""
        return next(s for s in reversed(self.specs[:self.trunk_length]) if s.is_a(Conv)).kwargs["out_channels"]

    def _trunk_windows(self):
        """(kernel, stride, pad) of every conv and pooling layer of the trunk, in order."""
        layers = [s.make() for s in self.specs[:self.trunk_length] if s.is_a(Conv, MaxPool)]
        return [(layer.kernel[0], layer.stride[0], layer.pad[0]) for layer in layers]

    @property
    def feature_stride(self):
        """S of the Appendix: the product of every stride in the conv trunk (16 for ZF-5)."""
        s = 1
        for _, stride, _ in self._trunk_windows():
            s *= stride
        return s

    def feature_geometry(self):
        """(S, offset, receptive field) of the last conv map: cell x' is centred on image
        pixel offset + S x' (minispp.geometry.receptive_field)."""
        return receptive_field(self._trunk_windows())

    def _cached(self, key, make):
        return self._instances.get_or_make(key, make)

    def instance(self, batch=1, size=CANONICAL_SIZE):
        """The fixed-size Net for (batch, 3, H, W) input, with a softmax loss; cached."""
        h, w = parse_size(size)

        def make():
            net = Net([s.make() for s in self.specs], loss=SoftmaxLoss(),
                      name=f"{self.definition}@{h}x{w}")
            try:
                net.setup((int(batch), 3, h, w), self.params, self.rng)
            except ValueError:
                self._explain_no_spp_size(net, h, w)
                raise
            return net
        return self._cached(("net", int(batch), h, w), make)

    def _explain_no_spp_size(self, net, h, w):
        """A no-SPP net at a size whose pool5 is not 6x6: say so plainly."""
        if self.spp is not None:
            return
        pool5 = net.layers[self.trunk_length]
        if pool5.out_shape is not None and pool5.out_shape[2:] != (6, 6):
            raise ValueError(
                f"{self.definition} without SPP needs a 6x6 pool5 for its fc6; a {h}x{w} input "
                f"gives {pool5.out_shape[2]}x{pool5.out_shape[3]}. Use 224x224, or an SPP net "
                f"(spp=(6, 3, 2, 1)) for other sizes") from None

    def trunk(self, size, batch=1):
        """The conv layers only (through the last conv's ReLU), for feature maps:
        (batch, 3, H, W) -> (batch, C, h, w). Shares the model's parameters; cached."""
        h, w = parse_size(size)

        def make():
            net = Net([s.make() for s in self.specs[:self.trunk_length]],
                      name=f"{self.definition}-trunk@{h}x{w}")
            net.setup((int(batch), 3, h, w), self.params, self.rng)
            return net
        return self._cached(("trunk", int(batch), h, w), make)

    def summary(self, size=CANONICAL_SIZE):
        return self.instance(1, size).summary()

    # -- saving and loading ------------------------------------------------------------------
    def save(self, path, meta=None, extras=None):
        """Write a checkpoint (parameters, solver state, definition, meta, extra arrays)
        atomically."""
        save_checkpoint(path, self.params, self.definition, self.definition_args(), meta,
                        minispp.__version__, extras)

    def definition_args(self):
        """The definition's arguments as JSON (the pyramid as a list): what a checkpoint
        stores, and what a feature cache's identity names."""
        a = dict(self.args)
        if a.get("spp") is not None:
            a["spp"] = list(a["spp"])
        return a

    def load_state(self, path, checkpoint=None):
        """Load a checkpoint of this same architecture into this model (values and solver
        state, in place); returns its meta. Another architecture is refused, naming both.
        checkpoint: that file's read_checkpoint result, when the caller already read (and
        verified) it."""
        ck = checkpoint if checkpoint is not None else read_checkpoint(path)
        mine = (self.definition, self.definition_args())
        theirs = (ck.definition, ck.definition_args)
        if mine != theirs:
            raise ValueError(f"checkpoint {path} holds {theirs[0]}({theirs[1]}), this model is "
                             f"{mine[0]}({mine[1]})")
        self._assign(ck.params, f"checkpoint {path}", strict=True)
        for p in self.params.values():
            p.state = {k: to_device(np.array(v, dtype=p.value.dtype), self.device)
                       for k, v in ck.state.get(p.name, {}).items()}
        self.meta, self.extras = ck.meta, ck.extras
        self.checksum = ck.checksum
        return ck.meta

    def _assign(self, arrays, source, strict):
        names = set(self.params)
        missing = sorted(names - set(arrays))
        extra = sorted(set(arrays) - names)
        if strict and (missing or extra):
            raise ValueError(f"{source} does not match {self.definition}: missing {missing}, "
                             f"unexpected {extra}")
        for name in sorted(names & set(arrays)):
            p = self.params[name]
            a = np.asarray(arrays[name])
            if a.shape != p.value.shape:
                raise ValueError(f"{source}: {name} has shape {a.shape}, {self.definition} needs "
                                 f"{p.value.shape}")
        for name in sorted(names & set(arrays)):   # only after every shape was checked
            value = self.params[name].value
            value[...] = to_device(np.asarray(arrays[name], dtype=value.dtype), self.device)
        return missing, extra

    def import_weights(self, path, strict=True):
        """Copy weights from a .npz or HDF5 file mapping parameter names ("conv1.W") to
        arrays. Shapes must match; with strict, the names must be exactly this model's.
        Returns (missing, unexpected) names."""
        return self._assign(read_weights(path), f"weight file {path}", strict)

    def export_weights(self, path):
        """Write every parameter to .npz or HDF5 (by extension), one array per name."""
        write_weights(path, {p.name: to_numpy(p.value) for p in self.params.values()})


def build(name, num_classes=1000, spp=(6, 3, 2, 1), form="appendix", rng=None, dtype=np.float32,
          device=None):
    """A new model of a named definition: "zf5", "convnet5", "overfeat5", "overfeat7" or
    "small". spp: a pyramid such as (6, 3, 2, 1), or None for the no-SPP baseline (pool5 to
    6x6). form: the SPP bin form ("appendix" or "fixed"). Weights from ``rng`` (drawn on the
    host, so the same on either device). device: "cpu" or "gpu"; None: minispp.backend's
    default (the command line's --device, else the CPU)."""
    spp = parse_spp(spp) if spp is not None else None
    args = {"num_classes": int(num_classes), "spp": spp, "form": form}
    return Model(name, args, rng=rng, dtype=dtype).to(device or backend.device())


def load(path, rng=None, dtype=None, device=None):
    """Rebuild the model a checkpoint was saved from and load it onto device ("cpu" or
    "gpu"; None: minispp.backend's default, as in build); model.meta holds its meta."""
    ck = read_checkpoint(path)
    args = dict(ck.definition_args)
    if args.get("spp") is not None:
        args["spp"] = tuple(args["spp"])
    if dtype is None:
        dtype = next(iter(ck.params.values())).dtype
    model = Model(ck.definition, args, rng=rng, dtype=dtype).to(device or backend.device())
    model.load_state(path, checkpoint=ck)        # read and verified once
    return model
