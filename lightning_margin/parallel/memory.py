"""Peak tensor memory on any device, the CPU included, by accounting every tensor storage torch allocates."""

from __future__ import annotations

from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["TensorMemoryTracker"]


def _dense_parts(leaves) -> list[torch.Tensor]:
    """The strided tensors among ``leaves``, with sparse COO tensors replaced by their indices and values."""
    parts = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts += [leaf._indices(), leaf._values()] if leaf.layout == torch.sparse_coo else [leaf]
    return [part for part in parts if part.layout == torch.strided]


def _storage_key(tensor: torch.Tensor) -> tuple[torch.device, int]:
    storage = tensor.untyped_storage()
    return storage.device, storage.data_ptr()


class TensorMemoryTracker(TorchDispatchMode):
    """Record the peak of live tensor bytes created inside the ``with`` block (forward and backward alike).

    CUDA has ``torch.cuda.max_memory_allocated``; the CPU allocator keeps no such statistics. This dispatch mode
    sees the output of every operator, counts each new storage once (not views, in-place or ``out=`` results,
    which share an input's storage) and drops it when its weak reference expires, so ``peak_bytes`` is the largest
    total of tensor storages alive at once that were created inside the block (tensors that existed before it,
    such as parameters, are not counted). Kernel-internal scratch
    buffers are not tensors and are not counted. It slows every operator a little: measure memory and time in
    separate runs.

    Example:
        >>> with TensorMemoryTracker() as tracker:
        ...     a = torch.ones(1024)  # 4 KiB
        ...     b = a * 2  # 4 KiB more
        ...     del a, b
        ...     c = torch.ones(256)  # 1 KiB
        >>> tracker.peak_bytes, tracker.largest_bytes
        (8192, 4096)
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[Any, tuple[StorageWeakRef, int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self.largest_bytes = 0

    def reset_peak(self) -> None:
        """Start a new peak from the bytes alive now."""
        self._sweep()
        self.peak_bytes = self.current_bytes
        self.largest_bytes = 0

    def _sweep(self) -> None:
        for key in [key for key, (ref, _) in self._live.items() if ref.expired()]:
            self.current_bytes -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        self._sweep()
        # Views, in-place and out= results share an input's storage: only other storages are new allocations.
        inputs = {_storage_key(t) for t in _dense_parts(tree_leaves((args, kwargs)))}
        for tensor in _dense_parts(tree_leaves(output)):
            if tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = _storage_key(tensor)
            if key in self._live or key in inputs or storage.nbytes() == 0:
                continue
            self._live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current_bytes += storage.nbytes()
            self.largest_bytes = max(self.largest_bytes, storage.nbytes())
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return output
