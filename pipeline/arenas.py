"""Reusable memory for batches: handed from DataLoader workers without copying, or reused in-process.

A DataLoader worker normally copies every tensor of a batch into a new shared-memory segment. On
2-core machines measured here, a new segment costs ~0.7 ms per MB (the kernel allocates and zeroes
its pages on first touch), more than building the batch itself. Instead, a worker builds each
batch directly in an *arena*: a shared-memory file that it keeps and reuses. The batch pickles as
the arena's file descriptor plus the layout of its tensors; the receiving process maps the arena
and views the tensors in place. When the last of those tensors is garbage-collected there, the
arena's first byte is set back to free, and the worker may fill it again. An arena is reused only
once freed, so a batch's memory is never written while the consumer can still see it; when none
is free (the consumer holds many batches) the worker makes a new one.

Batches built in the process that uses them (no workers) have the same problem: fresh memory
for each batch is fresh pages (glibc maps allocations over 32 MB anew every time), ~45 ms of a
~80 ms language-model batch here. `LocalPool` carves them from a few kept buffers instead, each
reused once every tensor of the batch it held is gone (the same rule, without shared memory).
"""

from __future__ import annotations

import math
import mmap
import os
import weakref
from dataclasses import dataclass, fields
from multiprocessing.reduction import DupFd

import numpy as np
import torch
from torch import Tensor

_HEADER = 64  # bytes before the first tensor; byte 0: 1 while a consumer may hold the arena's batch
_ALIGN = 64


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


@dataclass
class Arena:
    """One reusable shared-memory file and the layout of the batch it holds."""

    fd: int
    size: int
    memory: mmap.mmap
    layout: dict[str, tuple[int, tuple[int, ...], torch.dtype]]  # name -> (offset, shape, dtype)

    @property
    def busy(self) -> bool:
        return self.memory[0] != 0


class ArenaPool:
    """A worker's arenas: `carve` lays out empty tensors in a free one, `ship` wraps a batch built there."""

    def __init__(self, keep: int = 8) -> None:
        if not self.supported():
            raise OSError('shared-memory arenas need os.memfd_create (Linux)')
        self.keep = keep
        self.arenas: list[Arena] = []
        self.current: Arena | None = None

    @staticmethod
    def supported() -> bool:
        """Whether this platform has anonymous shared-memory files (Linux); elsewhere workers pickle batches
        the usual way (torch copies them into shared memory)."""
        return hasattr(os, 'memfd_create')

    def carve(self, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, Tensor]:
        """Empty tensors of the given shapes and dtypes, views of a free arena (marked busy)."""
        layout, offset = _layout(specs, _HEADER)
        arena = next((a for a in self.arenas if not a.busy and a.size >= offset), None)
        if arena is None:
            arena = self._new(offset)
        arena.layout = layout
        arena.memory[0] = 1
        self.current = arena
        return {name: _view(arena.memory, off, shape, dtype) for name, (off, shape, dtype) in layout.items()}

    def _new(self, nbytes: int) -> Arena:
        for old in [a for a in self.arenas if not a.busy][:max(0, len(self.arenas) + 1 - self.keep)]:
            self.arenas.remove(old)
            _close(old)
        size = -(-int(nbytes * 1.25) // mmap.PAGESIZE) * mmap.PAGESIZE  # room for somewhat larger batches
        fd = os.memfd_create('nino-batch', os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        arena = Arena(fd, size, mmap.mmap(fd, size), {})
        self.arenas.append(arena)
        return arena

    def ship(self, batch) -> Shipped:
        """Wrap a dataclass `batch` whose tensors were carved last: it pickles without copying them."""
        arena, tensors, rest = self.current, {}, {}
        base = _address(arena.memory)
        for f in fields(batch):
            value = getattr(batch, f.name)
            placed = arena.layout.get(f.name)
            if isinstance(value, Tensor) and placed is not None and value.data_ptr() == base + placed[0] \
                    and tuple(value.shape) == placed[1] and value.dtype == placed[2] and value.is_contiguous():
                tensors[f.name] = placed
            else:
                rest[f.name] = value
        return Shipped(type(batch), arena, tensors, rest)


class LocalPool:
    """Batch memory reused in this process: `carve` lays out empty tensors in a free buffer; the
    buffer is free again once every tensor carved from it (and every view of those) is gone."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep  # free buffers kept for later batches (buffers of batches still held are extra)
        self.buffers: list[_Buffer] = []

    def carve(self, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, Tensor]:
        layout, size = _layout(specs, 0)
        buffer = next((b for b in self.buffers if not b.busy and len(b.memory) >= size), None)
        if buffer is None:
            buffer = _Buffer(np.empty(int(size * 1.25) + _ALIGN, np.uint8))  # room for somewhat larger batches
            self.buffers.append(buffer)
        spare = [b for b in self.buffers if not b.busy and b is not buffer]
        for old in spare[:max(0, len(spare) - self.keep)]:
            self.buffers.remove(old)
        owner = buffer.memory[:]  # every tensor below keeps this view alive; when it goes, the buffer is free
        buffer.busy = True
        weakref.finalize(owner, buffer.release)
        return {name: _view(owner, off, shape, dtype) for name, (off, shape, dtype) in layout.items()}

    def ship(self, batch):
        """The batch as it is (it never leaves this process)."""
        return batch


@dataclass(eq=False)  # compared by identity
class _Buffer:
    memory: np.ndarray
    busy: bool = False

    def release(self) -> None:
        self.busy = False


def _layout(specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
            start: int) -> tuple[dict[str, tuple[int, tuple[int, ...], torch.dtype]], int]:
    """(name -> (offset, shape, dtype), total bytes) of tensors laid out one after another from `start`."""
    layout, offset = {}, start
    for name, (shape, dtype) in specs.items():
        layout[name] = (offset, tuple(shape), dtype)
        offset += _aligned(math.prod(shape) * dtype.itemsize)
    return layout, offset


@dataclass
class Shipped:
    """A batch in an arena, as a worker hands it over; unpickles as `cls(**tensors, **rest)`."""

    cls: type
    arena: Arena
    tensors: dict[str, tuple[int, tuple[int, ...], torch.dtype]]
    rest: dict

    def __reduce__(self):
        return _rebuild, (self.cls, DupFd(self.arena.fd), self.arena.size, self.tensors, self.rest)


def _rebuild(cls: type, fd: DupFd, size: int, tensors: dict, rest: dict):
    """The consumer's side: map the arena, view the tensors, free the arena when they are all gone."""
    handle = fd.detach()
    memory = mmap.mmap(handle, size)
    os.close(handle)
    owner = np.frombuffer(memory, np.uint8)  # every tensor below keeps this array alive
    weakref.finalize(owner, _release, memory)
    values = {name: _view(owner, off, shape, dtype) for name, (off, shape, dtype) in tensors.items()}
    return cls(**values, **rest)


def _release(memory: mmap.mmap) -> None:
    memory[0] = 0  # the mapping itself goes when the array that held it is freed, right after this


def _view(buffer, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype, count=count, offset=offset).view(shape)


def _address(memory: mmap.mmap) -> int:
    view = np.frombuffer(memory, np.uint8)
    address = view.ctypes.data
    del view
    return address


def _close(arena: Arena) -> None:
    try:
        arena.memory.close()
    except BufferError:  # a tensor of this process still views it: leave it to the garbage collector
        return
    os.close(arena.fd)
