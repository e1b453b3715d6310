"""A least-recently-used cache: what the model's per-size nets, the window pooler's WindowSPP
layers and the cuDNN plans share. Each is keyed by a shape, and full images bring a new
shape for nearly every image and scale, so each keeps at most `max_size` entries."""
from collections import OrderedDict


class LRUCache(OrderedDict):
    """An OrderedDict of at most max_size entries, the least recently used first."""

    def __init__(self, max_size):
        super().__init__()
        self.max_size = int(max_size)

    def get_or_make(self, key, make):
        """The value for key, made by make() where absent (None included, and cached too);
        the least recently used entries are dropped past max_size."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.max_size:
            self.popitem(last=False)
        return value
