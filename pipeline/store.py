"""The zarr (v3) trajectory store: one group per task, a Parquet manifest beside them.

    STORE/
      zarr.json                 root group, attrs: format, version, tasks (names of the task groups)
      manifest.parquet          one row per trajectory (see pipeline.manifest)
      <task>/                   attrs: spec, layout [(name, shape)], metrics, params_codec
        params                  (n_traj, n_states, n_params) float16
        metrics                 (n_traj, n_states, n_metrics) float32, chunks (1, n_states, n_metrics)
        steps                   (n_states,) int64: optimizer step of each state

Version 2 (written by default) lays `params` out for window reads: shards of ~32 MiB of one
trajectory's states, inner chunks of 2 states (8 for tasks whose windows read consecutive
states), delta-coded along time (`v2_chunking`), so a read decodes at most one state more per
state asked for. Version 1 stores (chunks of ~4 MiB of consecutive states) stay readable
and appendable; `pipeline.migrate` rewrites them as version 2. Version-2 stores on local disk or
fsspec file systems are read by `pipeline.shards` (fast), everything else by zarr-python.

A chunk or shard never spans two trajectories, so every trajectory is written by one process
without touching another's. Every chunk carries a CRC32C, so a damaged chunk fails to decode
(`DamagedChunkError` names task, trajectory and chunk; `verify` reports it) instead of
returning wrong numbers. Stores are local paths, fsspec URLs
(`s3://...`, `memory://...`, `simplecache::s3://...` for a local chunk cache) or
`hf://datasets/OWNER/NAME[@REV]/FOLDER` (read-only, fetched key by key into the hub cache; see
pipeline.hub). The layout is documented in docs/store-format.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from .codecs import BytePlanesCodec, TimeDeltaCodec
from .hub import HUB_PREFIX, HubStore, HubUnavailableError, parse_hub_url
from .manifest import Manifest
from .shards import ShardReader, fsspec_reader, local_reader
from .tasks import TaskSpec, dataset_locations, word_embedding_suffixes

FORMAT = 'nino-trajectories'
VERSION = 2  # written by default
KNOWN_VERSIONS = (1, 2)
CHUNK_BYTES = 4 << 20  # version 1: target size of one params chunk before compression
SHARD_BYTES = 32 << 20  # version 2: target size of one params shard before compression

#: Candidate params codecs: name -> (filters, compressors); every chain ends with a CRC32C.
PARAMS_CODECS: dict[str, tuple[list, list]] = {
    'zstd': ([], [ZstdCodec(level=3), Crc32cCodec()]),
    'blosc-zstd-shuffle': ([], [BloscCodec(cname='zstd', clevel=3, shuffle='shuffle'), Crc32cCodec()]),
    'blosc-zstd-bitshuffle': ([], [BloscCodec(cname='zstd', clevel=3, shuffle='bitshuffle'), Crc32cCodec()]),
    'delta-blosc-zstd-shuffle': ([TimeDeltaCodec(axis=1)],
                                 [BloscCodec(cname='zstd', clevel=3, shuffle='shuffle'), Crc32cCodec()]),
    'delta-blosc-lz4-shuffle': ([TimeDeltaCodec(axis=1)],
                                [BloscCodec(cname='lz4', clevel=5, shuffle='shuffle'), Crc32cCodec()]),
    'delta-blosc-lz4hc-shuffle': ([TimeDeltaCodec(axis=1)],
                                  [BloscCodec(cname='lz4hc', clevel=5, shuffle='shuffle'), Crc32cCodec()]),
    'delta-byteplanes-zstd1': ([TimeDeltaCodec(axis=1)], [BytePlanesCodec(level=1), Crc32cCodec()]),
}
#: Version 1 default, chosen by measurement (benchmarks/collect.py, docs/benchmarks.md): the smallest
#: store at a write speed far above what training produces.
DEFAULT_PARAMS_CODEC = 'delta-blosc-zstd-shuffle'
#: Optimizer steps between the states of the paper's training windows: version 2 lays chunks out for it.
WINDOW_STEP_HINT = 200
#: Word-embedding rows per inner chunk of a version-2 language task (the loader's row blocks), for
#: embeddings of more than WTE_CHUNK_ROWS_MIN rows (fewer are read whole).
WTE_CHUNK_ROWS = 64
WTE_CHUNK_ROWS_MIN = 1024


class StoreError(ValueError):
    """A store or task group that does not match what the caller expects."""


class DamagedChunkError(StoreError):
    """A params chunk whose bytes fail their checksum or do not decode."""


def chunk_states(n_states: int, n_params: int, target: int | None = None) -> int:
    """States per params chunk (or shard): about `target` (default CHUNK_BYTES) bytes of float16, at least 1."""
    return max(1, min(n_states, (target or CHUNK_BYTES) // (2 * n_params)))


def v2_chunking(n_states: int, record_every: int, layout: list[tuple[str, tuple[int, ...]]]) -> tuple[int, int, str]:
    """(states per inner chunk, parameters per inner chunk, params codec) of a version-2 task group,
    chosen by measurement (benchmarks/store_layout.py, docs/store-format.md).

    Windows that skip states (vision: recorded every 4 steps, read 200 apart) get pairs of states,
    delta-coded, lz4hc: 0.77-0.79 of raw on real FM-16 states, decoding at ~4.6 GB/s and at most
    one extra state per state read. Windows that read consecutive states (language models, recorded
    every 200 steps) get 8 states per chunk, delta-coded, byte planes (zstd-1 high bytes, lz4 low
    bytes): 0.77 of raw on real GPT-2 states where Blosc zstd-3 gives 0.80, written 2-3x faster
    (4 states per chunk: 0.82 with Blosc; longer chunks decode more states a window does not use),
    cut evenly (`even_split`) so a short trajectory's last chunk is not mostly padding.
    Inner chunks span every parameter, except for a word embedding of more than WTE_CHUNK_ROWS_MIN
    rows (the loader samples its rows): there they span WTE_CHUNK_ROWS rows (the rest of the
    parameters in chunks of the same size), so a read of a few sampled row blocks decodes those.
    """
    n_params = sum(int(np.prod(s)) for _, s in layout)
    name, shape = layout[0]
    width = n_params
    if name.endswith(word_embedding_suffixes()) and len(shape) == 2 and shape[0] > WTE_CHUNK_ROWS_MIN:
        width = WTE_CHUNK_ROWS * shape[1]
    if WINDOW_STEP_HINT // record_every > 1:
        return even_split(n_states, 2), width, 'delta-blosc-lz4hc-shuffle'
    return even_split(n_states, 8), width, 'delta-byteplanes-zstd1'


def even_split(n_states: int, most: int) -> int:
    """States per chunk, at most `most`, that cut `n_states` into as few chunks as `most` would, of
    (nearly) equal length: 21 states -> 7 + 7 + 7 instead of 8 + 8 + 5. The last chunk of a
    trajectory is padded with NaN, and its first padded state's delta costs as much as a raw state."""
    return -(-n_states // -(-n_states // most))


def span_columns(spans: list[tuple[int, int]]) -> np.ndarray:
    """The parameter indices of [start, stop) spans, in order."""
    return np.concatenate([np.arange(a, b) for a, b in spans]) if spans else np.zeros(0, np.int64)


def _local_path(url: str) -> Path | None:
    """The folder of a store on local disk, or None for fsspec URLs and hub stores."""
    if url.startswith('file://'):
        return Path(url[len('file://'):])
    return None if '://' in url else Path(url)


def is_local_url(url: str) -> bool:
    """Whether a store URL names a folder on local disk (not an fsspec URL, the hub or published files)."""
    return _local_path(str(url)) is not None


def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    """What must match for a task group to be resumed: the spec less where its files lie on this machine
    (dataset paths; a nowcaster's path when its SHA-256 names it)."""
    d = dict(spec)
    locations = dataset_locations(d['dataset'])
    d['dataset'] = {k: v for k, v in d['dataset'].items() if k not in locations}
    if 'sha256' in d.get('nowcast', {}):
        d['nowcast'] = {k: v for k, v in d['nowcast'].items() if k != 'ckpt'}
    return d


class TaskGroup:
    """One task's arrays in the store."""

    def __init__(self, group: zarr.Group, reader: ShardReader | None = None) -> None:
        self.group = group
        self._reader = reader  # the fast path for sharded params on local disk or fsspec
        attrs = group.attrs.asdict()
        self.spec = TaskSpec.from_dict(attrs['spec'])
        self.layout: list[tuple[str, tuple[int, ...]]] = [(n, tuple(s)) for n, s in attrs['layout']]
        self.metric_names: list[str] = list(attrs['metrics'])
        self.params = group['params']
        self.metrics = group['metrics']
        self.steps = group['steps']

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_params(self) -> int:
        return self.params.shape[2]

    @property
    def sharded(self) -> bool:
        return self.params.shards is not None

    @property
    def chunk_states(self) -> int:
        """States a writer should hand over at once: one chunk (version 1) or one shard (version 2)."""
        return (self.params.shards or self.params.chunks)[1]

    def chunk_key(self, index: int, state: int) -> str:
        """The stored object (chunk or shard file) that holds a state."""
        return f'{self.name}/params/c/{index}/{state // self.chunk_states}/0'

    def write_states(self, index: int, start: int, block: np.ndarray) -> None:
        self.params[index, start:start + len(block), :] = block

    def write_metrics(self, index: int, metrics: np.ndarray) -> None:
        self.metrics[index] = metrics

    def read_params(self, index: int, states: slice | np.ndarray = slice(None)) -> np.ndarray:
        """States of one trajectory by slice or index array, (n, n_params) float16."""
        if isinstance(states, slice):
            states = np.arange(self.params.shape[1])[states]
        return self.read_states(index, states)

    def read_states(self, index: int, states: np.ndarray, spans: list[tuple[int, int]] | None = None) -> np.ndarray:
        """(len(states), parameters) float16 of one trajectory: every parameter, or the `spans`
        ([start, stop) ranges of parameters) one after another. Only the chunks that hold them are
        read. A damaged chunk raises `DamagedChunkError` naming it."""
        try:
            if self._reader is not None:
                return self._reader.read(index, states, spans)
            if spans is None:
                return self.params.get_orthogonal_selection((index, states, slice(None)))
            return self.params.get_orthogonal_selection((index, states, span_columns(spans)))
        except (ValueError, RuntimeError) as err:
            raise self._damaged(index, states, err) from None

    def _damaged(self, index: int, states: slice | np.ndarray, err: Exception) -> DamagedChunkError:
        """The error for a failed read, naming the stored object (and state) that fails on its own."""
        wanted = range(self.params.shape[1])[states] if isinstance(states, slice) else states
        where = next((int(s) for s in sorted(set(int(s) for s in wanted)) if not self._readable(index, int(s))),
                     None)
        what = '?' if where is None else self.chunk_key(index, where)
        if where is not None and self.sharded:
            what += f' (state {where})'
        return DamagedChunkError(f"task '{self.name}', trajectory {index}: chunk {what} cannot be read "
                                 f'({type(err).__name__}: {str(err).splitlines()[0][:200]})')

    def _readable(self, index: int, state: int) -> bool:
        """Whether one state reads back (zarr-python decodes it and checks its chunk's CRC32C)."""
        try:
            self.params[index, state, :]
            return True
        except (ValueError, RuntimeError):
            return False

    def read_metrics(self, index: int) -> np.ndarray:
        return self.metrics[index]


class TrajectoryStore:
    """Open (creating if needed) a trajectory store at a local path or fsspec URL."""

    def __init__(self, url: str | Path, storage_options: dict[str, Any] | None = None, mode: str = 'a',
                 version: int = VERSION) -> None:
        """`version` is the layout of a store created here; an existing store keeps its own."""
        self.url = str(url)
        self.storage_options = storage_options or {}
        self.hub: HubStore | None = None
        if self.url.startswith(HUB_PREFIX):
            if mode != 'r':
                raise StoreError(f'{self.url}: hub stores are read-only here (write locally, then push)')
            self.hub = HubStore(*parse_hub_url(self.url), cache_dir=self.storage_options.get('cache_dir'))
            try:
                found = self.hub.fetch('zarr.json')
            except HubUnavailableError as err:  # offline or unreachable: say so, not "no store"
                raise StoreError(f'{self.url}: {err}') from None
            if found is None:
                raise StoreError(f'{self.url}: no trajectory store here (zarr.json missing)')
            self.root = zarr.open_group(self.hub, mode='r', zarr_format=3)
        else:
            kwargs = {'storage_options': self.storage_options} if self.storage_options else {}
            if mode == 'r' and not self._fs_path()[0].exists(self._fs_path()[1] + '/zarr.json'):
                raise StoreError(f'{self.url}: no trajectory store here (zarr.json missing)')
            self.root = zarr.open_group(self.url, mode=mode, zarr_format=3, **kwargs)
        fmt = self.root.attrs.get('format')
        if fmt is None and mode != 'r':
            self.root.attrs.update({'format': FORMAT, 'version': version})
        elif fmt != FORMAT:
            raise StoreError(f'{self.url}: not a trajectory store (format={fmt!r})')
        self.version = self.root.attrs.get('version')
        if self.version not in KNOWN_VERSIONS:
            raise StoreError(f'{self.url}: store format version {self.version!r} is not one this code reads '
                             f'({", ".join(map(str, KNOWN_VERSIONS))}); update the toolkit')

    def _fs_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, path = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return fs, path.rstrip('/')

    def manifest(self) -> Manifest:
        if self.hub is not None:
            local = self.hub.fetch('manifest.parquet')  # raises if it cannot be had
            path = str(local) if local else f'{self.url}/manifest.parquet (missing)'
            return Manifest(fsspec.filesystem('file'), path)
        fs, path = self._fs_path()
        return Manifest(fs, f'{path}/manifest.parquet')

    def task_names(self) -> list[str]:
        """Task groups, from the root's `tasks` attribute (listing the folder would also meet the manifest)."""
        return sorted(self.root.attrs.get('tasks', []))

    def group(self, name: str) -> TaskGroup:
        if name not in self.task_names():
            raise StoreError(f'{self.url}: no task group {name!r} (have: {self.task_names()})')
        group = self.root[name]
        reader = None
        if group['params'].shards is not None and self.hub is None:
            local = _local_path(self.url)
            try:
                if local is not None:
                    reader = local_reader(local / name / 'params')
                else:
                    fs, path = self._fs_path()
                    reader = fsspec_reader(fs, f'{path}/{name}/params')
            except ValueError:  # another codec chain: zarr-python reads it
                reader = None
        return TaskGroup(group, reader)

    def ensure_group(self, spec: TaskSpec, layout: list[tuple[str, tuple[int, ...]]],
                     metric_names: list[str], codec: str | None = None) -> TaskGroup:
        """The task's group, created on first use in the store's layout version; a different existing
        spec is an error. `codec` overrides the version's params codec."""
        if spec.name in self.task_names():
            group = self.group(spec.name)
            old, new = _comparable(group.spec.to_dict()), _comparable(spec.to_dict())
            diff = sorted(k for k in new if old.get(k) != new[k])
            if diff or group.layout != [(n, tuple(s)) for n, s in layout]:
                detail = ', '.join(f'{k}: stored {old.get(k)!r} vs config {new[k]!r}' for k in diff) or 'layout'
                raise StoreError(f"{self.url}: task group '{spec.name}' exists with another spec ({detail}); "
                                 f"use a new task name or a new store (nothing was changed)")
            return group
        n_params = sum(int(np.prod(s)) for _, s in layout)
        n_states = spec.num_states
        inner, width, v2_codec = v2_chunking(n_states, spec.record_every, layout)
        codec = codec or (v2_codec if self.version >= 2 else DEFAULT_PARAMS_CODEC)
        if codec not in PARAMS_CODECS:
            raise StoreError(f'unknown params codec {codec!r} (known: {sorted(PARAMS_CODECS)})')
        filters, compressors = PARAMS_CODECS[codec]
        if self.version >= 2:
            shard = chunk_states(n_states, n_params, SHARD_BYTES)
            blocks = dict(chunks=(1, inner, width),
                          shards=(1, max(inner, shard - shard % inner), -(-n_params // width) * width))
        else:
            blocks = dict(chunks=(1, chunk_states(n_states, n_params), n_params))
        g = self.root.create_group(spec.name)
        self.root.attrs['tasks'] = self.task_names() + [spec.name]
        g.attrs.update({'spec': spec.to_dict(), 'layout': [[n, list(s)] for n, s in layout],
                        'metrics': list(metric_names), 'params_codec': codec})
        g.create_array('params', shape=(spec.trajectories, n_states, n_params), dtype='float16',
                       filters=filters, compressors=compressors, fill_value=np.nan, **blocks)
        g.create_array('metrics', shape=(spec.trajectories, n_states, len(metric_names)), dtype='float32',
                       chunks=(1, n_states, len(metric_names)), compressors=[Crc32cCodec()], fill_value=np.nan)
        steps = g.create_array('steps', shape=(n_states,), dtype='int64', chunks=(n_states,))
        steps[:] = np.arange(n_states, dtype=np.int64) * spec.record_every
        return self.group(spec.name)
