"""A fast reader for the version-2 params layout: selected states of one trajectory.

Version-2 `params` arrays are standard zarr v3 (zarr-python reads them with `nino.time_delta`
registered), but zarr-python spends about half a millisecond of Python per chunk, and a training
window needs 45 chunks; tensorstore is fast but cannot decode the time-delta codec. This reader
does exactly what the layout needs and nothing more (measured in docs/benchmarks.md):

    shard file = inner chunk bytes ..., index: (chunks, 2) uint64 (offset, nbytes) + CRC32C
    inner chunk = blosc or byte_planes(bytes(time_delta(k states x m parameters float16))) + CRC32C

For each shard it reads the index once (cached), then only the byte ranges of the inner chunks
holding the states and parameter spans asked for (one `pread` or range request per run of chunks
that lie end to end), checks each CRC32C, decompresses (blosc or `nino.byte_planes`) and undoes
the delta. Any other codec chain is refused at open (callers then use zarr-python).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import blosc

from .codecs import BYTE_PLANES, interleave_planes, read_planes, undo_delta

_EMPTY = 2 ** 64 - 1
_CRC32C_RESIDUE = 0x48674BC7
MAX_OPEN_FILES = 64  # shard files a local reader keeps open
Request = tuple[str, int, int | None]  # (object key, first byte, end byte; a negative first byte counts from the end)


class ChunkChecksumError(ValueError):
    """An inner chunk or shard index whose bytes do not match their CRC32C."""


def _crc_ok(data: bytes) -> bool:
    """Whether `data` ends with the CRC32C of the bytes before it: the CRC32C of a message followed by
    its own CRC32C (little-endian) is one constant, and only for the right CRC (no copy of the message)."""
    return google_crc32c.value(data) == _CRC32C_RESIDUE


class ShardReader:
    """Reads states of a sharded `params` array (one trajectory per shard row).

    Inner chunks hold `inner_states` states of `inner_params` parameters (all of them, or a block of
    word-embedding rows for language models: `store.v2_chunking`), so a read decodes only the
    chunks that hold the states and parameter spans asked for.
    `fetch(requests)` returns the bytes of each (key, start, stop) request: a byte range of the
    object `key` (relative to the array folder; a negative start counts from its end);
    `local_reader` and `fsspec_reader` build it. A read asks for all its chunks in one call, so an
    object store serves them concurrently.
    """

    def __init__(self, metadata: dict, fetch: Callable[[list[Request]], list[bytes]]) -> None:
        self.fetch = fetch
        self._local = threading.local()
        self.shape = tuple(metadata['shape'])
        (sharding,) = metadata['codecs']
        if sharding['name'] != 'sharding_indexed':
            raise ValueError('not a sharded array')
        conf = sharding['configuration']
        names = [c['name'] for c in conf['codecs']]
        index_names = [c['name'] for c in conf['index_codecs']]
        if names[-3:] not in (['bytes', 'blosc', 'crc32c'], ['bytes', BYTE_PLANES, 'crc32c']) \
                or names[:-3] not in ([], ['nino.time_delta']) \
                or index_names != ['bytes', 'crc32c'] or conf.get('index_location', 'end') != 'end':
            raise ValueError(f'codec chain {names} / index {index_names} is not the version-2 layout')
        for c in conf['codecs'] + conf['index_codecs']:
            if c['name'] == 'bytes' and c.get('configuration', {}).get('endian', 'little') != 'little':
                raise ValueError('big-endian chunks are not the version-2 layout')
        self.delta = names[0] == 'nino.time_delta'
        self.planes = names[-2] == BYTE_PLANES
        _, self.shard_states, shard_params = metadata['chunk_grid']['configuration']['chunk_shape']
        _, self.inner_states, self.inner_params = conf['chunk_shape']
        self.states_per_shard = self.shard_states // self.inner_states  # inner chunks along time, per shard
        self.params_per_shard = shard_params // self.inner_params  # inner chunks along parameters, per shard
        self.inner_per_shard = self.states_per_shard * self.params_per_shard
        self.n_params = self.shape[2]
        self._index: dict[tuple[int, int, int], list[tuple[int, int]]] = {}

    def read(self, traj: int, states: np.ndarray, spans: list[tuple[int, int]] | None = None) -> np.ndarray:
        """(len(states), parameters) float16: every parameter, or the `spans` ([start, stop) ranges of
        parameters) one after another. States never written read as NaN.

        Per chunk along time, the parameter chunks asked for are decoded side by side, the delta is
        undone across all of them at once, and each span's piece in each chunk is copied out as a slice."""
        states = [int(s) for s in states]
        spans = [(0, self.n_params)] if spans is None else spans
        out = np.empty((len(states), sum(b - a for a, b in spans)), '<u2')
        width = self.inner_params
        chunks, pieces = self._pieces(spans)
        rows_of: dict[int, list[int]] = {}  # chunk along time -> rows of `out` it fills
        for row, state in enumerate(states):
            rows_of.setdefault(state // self.inner_states, []).append(row)
        plan = []  # (key, offset, nbytes) of every chunk asked for: time chunk-major, then `chunks`
        shards = {}  # (shard along time, shard along parameters) -> (key, index): looked up once per read
        for t in rows_of:
            for p in chunks:
                shard = (t // self.states_per_shard, p // self.params_per_shard)
                if shard not in shards:
                    key = f'c/{traj}/{shard[0]}/{shard[1]}'
                    shards[shard] = key, self._shard_index(traj, shard, key)
                key, index = shards[shard]
                inner = (t % self.states_per_shard) * self.params_per_shard + p % self.params_per_shard
                plan.append((key, *(index[inner] if index is not None else (_EMPTY, 0))))
        blobs = iter(self._fetch_merged([(key, o, n) for key, o, n in plan if o != _EMPTY]))
        sides = self._scratch('sides', (len(rows_of), len(chunks), self.inner_states, width), '<u2')
        times = list(rows_of)
        jobs, empty = [], []
        for i, (key, offset, _) in enumerate(plan):
            t, j = divmod(i, len(chunks))
            if offset == _EMPTY:  # never written: the fill value
                empty.append((t, j))
            else:
                jobs.append((next(blobs), key, (times[t], chunks[j]), i))
        self._decode(jobs, sides.reshape(len(plan), -1))
        nan = np.float16(np.nan).view('<u2')
        for i, ((t, rows), side) in enumerate(zip(rows_of.items(), sides)):
            used = [states[row] - t * self.inner_states for row in rows]  # positions in the chunk
            last = max(used)
            holes = [j for u, j in empty if u == i] if empty else []
            if self.delta and last and len(used) == 1 and not holes:  # one state: its last delta add writes it
                if last > 1:
                    undo_delta(side[:, :last], 1)
                for j, first, stop, dst in pieces:
                    into = out[rows[0], dst:dst + stop - first]
                    np.add(side[j, last - 1, first:stop], side[j, last, first:stop], out=into)
                continue
            if self.delta and last:
                undo_delta(side[:, :last + 1], 1)
            if holes:
                side[holes] = nan
            rows, used = _slice(rows), _slice(used)
            for j, first, stop, dst in pieces:
                out[rows, dst:dst + stop - first] = side[j, used, first:stop]
        return out.view(np.float16)

    def _pieces(self, spans: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int, int, int]]]:
        """(parameter chunks holding the spans, the spans cut at chunk edges: (position in those chunks,
        first and stop column in the chunk, column of the output))."""
        width = self.inner_params
        chunks = sorted({p for a, b in spans for p in range(a // width, (b - 1) // width + 1)})
        slot = {p: j for j, p in enumerate(chunks)}
        pieces, column = [], 0
        for a, b in spans:
            for p in range(a // width, (b - 1) // width + 1):
                first, stop = max(a, p * width), min(b, (p + 1) * width)
                pieces.append((slot[p], first - p * width, stop - p * width, column + first - a))
            column += b - a
        return chunks, pieces

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A reused buffer `name` (one per thread) for the decoded chunks of one read (fresh pages cost
        more than decoding)."""
        size = int(np.prod(shape))
        buffer = getattr(self._local, name, None)
        if buffer is None or buffer.size < size:
            buffer = np.empty(size, dtype)
            setattr(self._local, name, buffer)
        return buffer[:size].reshape(shape)

    def _fetch_merged(self, chunks: list[tuple[str, int, int]]) -> list[np.ndarray]:
        """The bytes of each (key, offset, nbytes) chunk, fetched as few ranges: chunks that lie one after
        another in a shard file (a time chunk's parameter chunks do; zarr orders a shard's chunks along
        a Morton curve, so they are sorted by offset first) are one request. Each chunk comes as a uint8
        view of its range (google_crc32c takes arrays, not memoryviews)."""
        ranges: list[list] = []  # [key, start, stop, positions in `chunks`]
        for i in sorted(range(len(chunks)), key=lambda i: chunks[i][:2]):
            key, offset, nbytes = chunks[i]
            if ranges and ranges[-1][0] == key and ranges[-1][2] == offset:
                ranges[-1][2] += nbytes
                ranges[-1][3].append(i)
            else:
                ranges.append([key, offset, offset + nbytes, [i]])
        out: list[np.ndarray] = [None] * len(chunks)  # type: ignore[list-item]
        for blob, (_, start, _, positions) in zip(self.fetch([(key, a, b) for key, a, b, _ in ranges]), ranges):
            view = np.frombuffer(blob, np.uint8)
            for i in positions:
                at = chunks[i][1] - start
                out[i] = view[at:at + chunks[i][2]]
        return out

    def _shard_index(self, traj: int, shard: tuple[int, int], key: str) -> list[tuple[int, int]] | None:
        """The shard's (offset, length) of each inner chunk, or None for a shard never written."""
        index = self._index.get((traj, *shard))
        if index is None:
            size = self.inner_per_shard * 16 + 4
            try:
                (raw,) = self.fetch([(key, -size, None)])
            except FileNotFoundError:
                return None  # not cached: it may be written later
            if len(raw) != size or not _crc_ok(raw):
                raise ChunkChecksumError(f'{key}: shard index does not match its CRC32C')
            pairs = np.frombuffer(raw[:-4], '<u8').reshape(self.inner_per_shard, 2).tolist()
            index = self._index[(traj, *shard)] = [tuple(p) for p in pairs]
        return index

    def _decode(self, jobs: list[tuple[np.ndarray, str, tuple[int, int], int]], out: np.ndarray) -> None:
        """Check and decompress each (bytes, key, (time chunk, parameter chunk), row of `out`) job into
        its row of `out` (chunks, values per chunk). Byte planes decode into two scratch planes first and
        are interleaved in one pass for all rows."""
        if self.planes:
            high = self._scratch('high', out.shape, 'u1')
            low = self._scratch('low', out.shape, 'u1')
        for data, key, (t, p), row in jobs:
            if not _crc_ok(data):
                first, size = t * self.inner_states, self.inner_params
                raise ChunkChecksumError(f'{key}: the chunk of states {first}-{first + self.inner_states - 1}, '
                                         f'parameters {p * size}-{(p + 1) * size - 1} does not match its CRC32C')
            if self.planes:
                read_planes(data[:-4], high[row], low[row])
            else:
                blosc.decompress(data[:-4], out[row])
        if self.planes and jobs:
            interleave_planes(high, low, out)


def _slice(positions: list[int]) -> slice | list[int]:
    """Consecutive positions as a slice (a view, no copy), others as they are."""
    if all(b - a == 1 for a, b in zip(positions, positions[1:])):
        return slice(positions[0], positions[-1] + 1)
    return positions


def local_reader(folder: Path, max_open: int = MAX_OPEN_FILES) -> ShardReader:
    """A reader for a params array folder on local disk; the `max_open` most recently read shard files stay
    open (the published dataset converted is thousands of shards, more than a process may open)."""
    handles: OrderedDict[str, int] = OrderedDict()
    lock = threading.Lock()  # reads on several threads share the open files

    def fetch(requests: list[Request]) -> list[bytes]:
        with lock:
            return [_pread(key, start, stop) for key, start, stop in requests]

    def _pread(key: str, start: int, stop: int | None) -> bytes:
        fd = handles.pop(key, None)
        if fd is None:
            fd = os.open(folder / key, os.O_RDONLY)
            while len(handles) >= max_open:
                os.close(handles.popitem(last=False)[1])
        handles[key] = fd  # most recent last
        if start < 0:
            size = os.fstat(fd).st_size
            start, stop = max(0, size + start), size
        return os.pread(fd, stop - start, start)

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
        if not getattr(fs, 'async_impl', False):
            # sync file systems (local, simplecache::...): cat_ranges would loop over cat_file anyway, and
            # fsspec 2026.7's caching file systems return its errors as values (an AttributeError)
            return [fs.cat_file(u, start=a, end=b) for u, a, b in zip(urls, starts, stops)]
        blobs = fs.cat_ranges(urls, starts, stops, on_error='return')
        for blob in blobs:
            if isinstance(blob, Exception):
                raise blob
        return blobs

    return ShardReader(json.loads(fs.cat_file(f'{path}/zarr.json')), fetch)
