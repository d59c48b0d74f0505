"""A fast reader for the version-2 params layout: selected states of one trajectory.

Version-2 `params` arrays are standard zarr v3 (zarr-python reads them with `nino.time_delta`
registered), but zarr-python spends about half a millisecond of Python per chunk, and a training
window needs 45 chunks; tensorstore is fast but cannot decode the time-delta codec. This reader
does exactly what the layout needs and nothing more (measured in docs/benchmarks.md):

    shard file = inner chunk bytes ..., index: (chunks, 2) uint64 (offset, nbytes) + CRC32C
    inner chunk = blosc(bytes(time_delta(k states x n_params float16))) + CRC32C

For each shard it reads the index once (cached), then only the byte ranges of the inner chunks
holding the states asked for (one `pread` or range request each), checks each CRC32C,
decompresses with blosc and undoes the delta. Any other codec chain is refused at open (callers
then use zarr-python).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import blosc

from .codecs import undo_delta

_EMPTY = 2 ** 64 - 1
MAX_OPEN_FILES = 64  # shard files a local reader keeps open
Request = tuple[str, int, int | None]  # (object key, first byte, end byte; a negative first byte counts from the end)


class ChunkChecksumError(ValueError):
    """An inner chunk or shard index whose bytes do not match their CRC32C."""


def _crc_ok(data: bytes) -> bool:
    return google_crc32c.value(data[:-4]) == int.from_bytes(data[-4:], 'little')


class ShardReader:
    """Reads states of a sharded `params` array (one trajectory per shard row).

    `fetch(requests)` returns the bytes of each (key, start, stop) request: a byte range of the
    object `key` (relative to the array folder; a negative start counts from its end);
    `local_reader` and `fsspec_reader` build it. A read asks for all its chunks in one call, so an
    object store serves them concurrently.
    """

    def __init__(self, metadata: dict, fetch: Callable[[list[Request]], list[bytes]]) -> None:
        self.fetch = fetch
        self.shape = tuple(metadata['shape'])
        (sharding,) = metadata['codecs']
        if sharding['name'] != 'sharding_indexed':
            raise ValueError('not a sharded array')
        conf = sharding['configuration']
        names = [c['name'] for c in conf['codecs']]
        index_names = [c['name'] for c in conf['index_codecs']]
        if names not in (['nino.time_delta', 'bytes', 'blosc', 'crc32c'], ['bytes', 'blosc', 'crc32c']) \
                or index_names != ['bytes', 'crc32c'] or conf.get('index_location', 'end') != 'end':
            raise ValueError(f'codec chain {names} / index {index_names} is not the version-2 layout')
        for c in conf['codecs'] + conf['index_codecs']:
            if c['name'] == 'bytes' and c.get('configuration', {}).get('endian', 'little') != 'little':
                raise ValueError('big-endian chunks are not the version-2 layout')
        self.delta = names[0] == 'nino.time_delta'
        self.shard_states = metadata['chunk_grid']['configuration']['chunk_shape'][1]
        self.inner_states = conf['chunk_shape'][1]
        self.inner_per_shard = self.shard_states // self.inner_states
        self.n_params = self.shape[2]
        self._index: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def read(self, traj: int, states: np.ndarray) -> np.ndarray:
        """(len(states), n_params) float16; states never written read as NaN."""
        states = [int(s) for s in states]
        out = np.empty((len(states), self.n_params), '<u2')
        rows_of: dict[int, list[int]] = {}  # inner chunk -> rows of `out` it fills
        for row, state in enumerate(states):
            rows_of.setdefault(state // self.inner_states, []).append(row)
        chunks_of: dict[int, list[int]] = {}  # shard -> its inner chunks asked for
        for chunk in rows_of:
            chunks_of.setdefault(chunk // self.inner_per_shard, []).append(chunk)
        plan = []  # (chunk, key, offset, nbytes) of every chunk asked for
        for shard, chunks in chunks_of.items():
            key = f'c/{traj}/{shard}/0'
            index = self._shard_index(traj, shard, key)
            plan += [(c, key, *index[c % self.inner_per_shard]) if index is not None else (c, key, _EMPTY, 0)
                     for c in chunks]
        requests = [(key, o, o + n) for _, key, o, n in plan if o != _EMPTY]
        blobs = iter(self.fetch(requests) if requests else [])
        for chunk, key, offset, _ in plan:
            rows = rows_of[chunk]
            if offset == _EMPTY:  # never written: the fill value
                out[rows] = np.float16(np.nan).view('<u2')
                continue
            block = self._decode(next(blobs), key, chunk)
            used = [states[row] - chunk * self.inner_states for row in rows]  # positions in the chunk
            last = max(used)
            if self.delta and last and len(rows) == 1:  # one state: its last delta add writes the output
                undo_delta(block[:last], 0)
                np.add(block[last - 1], block[last], out=out[rows[0]])
                continue
            if self.delta:
                undo_delta(block[:last + 1], 0)
            for row, k in zip(rows, used):
                out[row] = block[k]
        return out.view(np.float16)

    def _shard_index(self, traj: int, shard: int, key: str) -> list[tuple[int, int]] | None:
        """The shard's (offset, length) of each inner chunk, or None for a shard never written."""
        index = self._index.get((traj, shard))
        if index is None:
            size = self.inner_per_shard * 16 + 4
            try:
                (raw,) = self.fetch([(key, -size, None)])
            except FileNotFoundError:
                return None  # not cached: it may be written later
            if len(raw) != size or not _crc_ok(raw):
                raise ChunkChecksumError(f'{key}: shard index does not match its CRC32C')
            pairs = np.frombuffer(raw[:-4], '<u8').reshape(self.inner_per_shard, 2).tolist()
            index = self._index[(traj, shard)] = [tuple(p) for p in pairs]
        return index

    def _decode(self, data: bytes, key: str, chunk: int) -> np.ndarray:
        """The chunk's states as float16 bit patterns, still delta-coded (callers undo the delta
        along the states they use)."""
        if not _crc_ok(data):
            raise ChunkChecksumError(f'{key}: inner chunk {chunk % self.inner_per_shard} does not match its CRC32C')
        bits = np.empty((self.inner_states, self.n_params), '<u2')
        blosc.decompress(memoryview(data)[:-4], bits)
        return bits


def local_reader(folder: Path, max_open: int = MAX_OPEN_FILES) -> ShardReader:
    """A reader for a params array folder on local disk; the `max_open` most recently read shard files stay
    open (the published dataset converted is thousands of shards, more than a process may open)."""
    handles: OrderedDict[str, int] = OrderedDict()

    def fetch(requests: list[Request]) -> list[bytes]:
        out = []
        for key, start, stop in requests:
            fd = handles.pop(key, None)
            if fd is None:
                fd = os.open(folder / key, os.O_RDONLY)
                while len(handles) >= max_open:
                    os.close(handles.popitem(last=False)[1])
            handles[key] = fd  # most recent last
            if start < 0:
                size = os.fstat(fd).st_size
                start, stop = max(0, size + start), size
            out.append(os.pread(fd, stop - start, start))
        return out

    return ShardReader(json.loads((folder / 'zarr.json').read_text()), fetch)


def fsspec_reader(fs, path: str) -> ShardReader:
    """A reader for a params array at `path` on an fsspec file system: the ranges of a read are fetched
    with one `cat_ranges` call (concurrent requests on object stores)."""
    def fetch(requests: list[Request]) -> list[bytes]:
        urls = [f'{path}/{key}' for key, _, _ in requests]
        starts, stops = [], []
        for url, (_, start, stop) in zip(urls, requests):
            if start < 0:  # the shard index: counted from the end
                size = fs.size(url)
                start, stop = size + start, size
            starts.append(start)
            stops.append(stop)
        blobs = fs.cat_ranges(urls, starts, stops, on_error='return')
        for blob in blobs:
            if isinstance(blob, Exception):
                raise blob
        return blobs

    return ShardReader(json.loads(fs.cat_file(f'{path}/zarr.json')), fetch)
