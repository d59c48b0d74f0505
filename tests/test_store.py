"""The trajectory store: lossless codecs, chunk layout, fsspec URLs, manifest writes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.manifest import ManifestError
from pipeline.record import METRICS
from pipeline.store import (
    PARAMS_CODECS,
    DamagedChunkError,
    StoreError,
    TaskGroup,
    TrajectoryStore,
    chunk_states,
    even_split,
    span_columns,
)
from pipeline.tasks import TaskSpec

LAYOUT = [('a.weight', (30, 20)), ('a.bias', (30,))]


def _spec(**over) -> TaskSpec:
    base = dict(name='toy', arch={'type': 'mlp', 'in_features': 20, 'hidden': [], 'num_classes': 30},
                dataset={'name': 'digits'}, steps=40, record_every=4, eval_every=20, trajectories=3)
    return TaskSpec.from_dict({**base, **over})


def _states(n_states: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0, 0.01, (n_states, 630)), axis=0).astype(np.float16)
    x[1, 3], x[2, 4], x[3, 5] = np.nan, np.inf, -0.0
    return x


@pytest.mark.parametrize('codec', sorted(PARAMS_CODECS))
def test_every_codec_is_lossless_bit_for_bit(tmp_path, codec):
    spec = _spec()
    group = TrajectoryStore(tmp_path / 's').ensure_group(spec, LAYOUT, list(METRICS), codec=codec)
    x = _states(spec.num_states, 0)
    group.write_states(1, 0, x[:5])
    group.write_states(1, 5, x[5:])
    back = TrajectoryStore(tmp_path / 's', mode='r').group('toy').read_params(1)
    assert np.array_equal(back.view(np.uint16), x.view(np.uint16))
    assert np.isnan(TrajectoryStore(tmp_path / 's', mode='r').group('toy').read_params(0)).all()


def test_a_task_group_reopens_wherever_its_data_lies_and_refuses_other_data(tmp_path):
    """Dataset paths (data, tokenizer folder, cache) are this machine's: another checkout resumes the
    group; a tokenizer by name against a tokenizer folder, or another dataset, is another spec."""
    store = TrajectoryStore(tmp_path / 's')
    here = {'name': 'digits', 'root': '/a/data', 'cache_dir': '/a/cache', 'tokenizer': '/a/bpe'}
    store.ensure_group(_spec(dataset=here), LAYOUT, list(METRICS))
    there = {'name': 'digits', 'root': '/b/data', 'cache_dir': '/b/cache', 'tokenizer': '/b/bpe'}
    assert store.ensure_group(_spec(dataset=there), LAYOUT, list(METRICS)).spec.dataset == here
    for other in ({**there, 'tokenizer': 'bytes'}, {**there, 'name': 'fashion-mnist'}):
        with pytest.raises(StoreError, match="'toy' exists with another spec .*dataset: stored"):
            store.ensure_group(_spec(dataset=other), LAYOUT, list(METRICS))


def test_chunks_hold_one_trajectory(tmp_path):
    spec = _spec(trajectories=2)
    group = TrajectoryStore(tmp_path / 's').ensure_group(spec, LAYOUT, list(METRICS))
    assert group.params.chunks[0] == 1 and group.params.chunks[2] == 630
    assert chunk_states(10_000, 1_252_464) == 1 and chunk_states(11, 630) == 11
    group.write_states(0, 0, _states(spec.num_states, 1))
    chunk_dirs = sorted(p.name for p in (tmp_path / 's' / 'toy' / 'params' / 'c').iterdir())
    assert chunk_dirs == ['0']


def test_fsspec_memory_store_round_trip():
    url = 'memory://nino-test-store'
    spec = _spec()
    store = TrajectoryStore(url)
    group = store.ensure_group(spec, LAYOUT, list(METRICS))
    x = _states(spec.num_states, 2)
    group.write_states(2, 0, x)
    store.manifest().upsert({'task': 'toy', 'index': 2, 'status': 'done', 'checksum': 'abc'})
    again = TrajectoryStore(url, mode='r')
    assert np.array_equal(again.group('toy').read_params(2).view(np.uint16), x.view(np.uint16))
    assert again.manifest().done() == {('toy', 2)}


def test_manifest_rewrite_is_atomic_and_keeps_rows(tmp_path):
    store = TrajectoryStore(tmp_path / 's')
    m = store.manifest()
    m.upsert({'task': 'a', 'index': 0, 'status': 'done'})
    m.upsert({'task': 'a', 'index': 1, 'status': 'failed', 'error': 'boom'})
    m.upsert({'task': 'a', 'index': 1, 'status': 'done'})
    assert store.manifest().done() == {('a', 0), ('a', 1)}
    assert [p.name for p in (tmp_path / 's').iterdir() if 'tmp' in p.name] == []


def test_opening_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match='no trajectory store'):
        TrajectoryStore(tmp_path / 'nothing', mode='r')
    store = TrajectoryStore(tmp_path / 's')
    with pytest.raises(StoreError, match="no task group 'x'"):
        store.group('x')
    with pytest.raises(StoreError, match='unknown params codec'):
        store.ensure_group(_spec(), LAYOUT, list(METRICS), codec='gzip')


def test_chained_fsspec_url_reads_through_a_local_cache(tmp_path):
    spec = _spec()
    group = TrajectoryStore(tmp_path / 's').ensure_group(spec, LAYOUT, list(METRICS))
    x = _states(spec.num_states, 3)
    group.write_states(0, 0, x)
    cached = TrajectoryStore(f'simplecache::{(tmp_path / "s").as_uri()}', mode='r')
    assert np.array_equal(cached.group('toy').read_params(0).view(np.uint16), x.view(np.uint16))


def _write(tmp_path, version: int, name: str = 's') -> tuple[TrajectoryStore, np.ndarray]:
    spec = _spec(steps=400)  # 101 states
    store = TrajectoryStore(tmp_path / name, version=version)
    group = store.ensure_group(spec, LAYOUT, list(METRICS))
    x = _states(spec.num_states, 5)
    for start in range(0, len(x), group.chunk_states):
        group.write_states(1, start, x[start:start + group.chunk_states])
    return store, x


def test_version_2_reads_touch_only_the_states_asked_for(tmp_path, monkeypatch):
    monkeypatch.setattr('pipeline.store.SHARD_BYTES', 40 * 630 * 2)  # 40 states per shard
    store, x = _write(tmp_path, 2)
    group = TrajectoryStore(tmp_path / 's', mode='r').group('toy')
    assert store.version == 2 and group.sharded and group.chunk_states == 40
    assert group.params.chunks == (1, 2, 630) and group.params.shards == (1, 40, 630)  # pairs of states
    shards = sorted(p.relative_to(tmp_path / 's' / 'toy' / 'params').as_posix()
                    for p in (tmp_path / 's' / 'toy' / 'params' / 'c').rglob('*') if p.is_file())
    assert shards == ['c/1/0/0', 'c/1/1/0', 'c/1/2/0']  # one file per trajectory span
    ind = np.arange(3, 101, 20)
    spans = [(5, 6), (7, 8), (600, 630)]
    cols = np.r_[5, 7, 600:630]
    assert group._reader is not None  # local version-2 stores are read by pipeline.shards
    assert np.array_equal(group.read_states(1, ind).view(np.uint16), x[ind].view(np.uint16))
    assert np.array_equal(group.read_states(1, ind, spans).view(np.uint16), x[ind][:, cols].view(np.uint16))
    assert group.chunk_key(1, 85) == 'toy/params/c/1/2/0'


def test_a_large_word_embedding_is_chunked_in_row_blocks_and_read_by_spans(tmp_path):
    vocab, dim = 1100, 3  # more rows than WTE_CHUNK_ROWS_MIN: inner chunks of 64 rows x 3
    layout = [('transformer.wte.weight', (vocab, dim)), ('transformer.h.0.mlp.weight', (7, 41))]
    spec = _spec(name='lm', steps=3000, record_every=200, eval_every=400)  # 16 states, consecutive windows
    group = TrajectoryStore(tmp_path / 's').ensure_group(spec, layout, list(METRICS))
    n = vocab * dim + 7 * 41
    assert group.params.chunks == (1, 8, 64 * dim) and group.params.shards == (1, 16, -(-n // 192) * 192)
    rng = np.random.default_rng(3)
    x = np.cumsum(rng.normal(0, 0.01, (16, n)), axis=0).astype(np.float16)
    group.write_states(1, 0, x)
    group.write_states(2, 0, x[:8])  # half a shard: its second chunk along time is never written
    fast = TrajectoryStore(tmp_path / 's', mode='r').group('lm')
    slow = TaskGroup(fast.group)  # zarr-python
    assert fast._reader is not None and fast._reader.params_per_shard == -(-n // 192)
    blocks = [(64 * 3 * dim, 64 * 4 * dim), (1088 * dim, n)]  # a row block; the last, short one and the rest
    many = [(3 * r, 3 * r + 3) for r in range(0, 1100, 7)]  # independently sampled rows
    for spans in (None, blocks, many, [(0, 1), (n - 1, n)]):
        cols = np.arange(n) if spans is None else span_columns(spans)
        for ind in (np.arange(16), np.array([3]), np.array([0, 9, 15]), np.arange(5, 12)):
            want = x[ind][:, cols].view(np.uint16)
            for reader in (fast, slow):
                assert np.array_equal(reader.read_states(1, ind, spans).view(np.uint16), want)
            half = fast.read_states(2, ind, spans)
            assert np.array_equal(half[ind < 8].view(np.uint16), want[ind < 8]) and np.isnan(half[ind >= 8]).all()
    assert np.isnan(fast.read_states(0, np.arange(16), blocks)).all()  # never written
    requests, fetch = [], fast._reader.fetch
    fast._reader.fetch = lambda asked: requests.append(asked) or fetch(asked)
    whole = fast.read_states(1, np.arange(16))
    assert np.array_equal(whole.view(np.uint16), x.view(np.uint16))
    assert len(requests) == 1 and len(requests[0]) == 1  # the shard's 2 x 19 chunks lie end to end: one range


def test_short_trajectories_are_cut_into_even_chunks_along_time(tmp_path):
    assert [even_split(n, 8) for n in (1, 8, 9, 16, 21, 124)] == [1, 8, 5, 8, 7, 8]
    assert [even_split(n, 2) for n in (1, 2, 2688, 2689)] == [1, 2, 2, 2]
    spec = _spec(name='lm', steps=4000, record_every=200, eval_every=400)  # 21 states: 7 + 7 + 7, no padding
    group = TrajectoryStore(tmp_path / 's').ensure_group(spec, [('w', (7, 41))], list(METRICS))
    assert group.params.chunks[1] == 7 and group.params.shards[1] == 21


def test_version_1_stores_stay_readable_and_appendable(tmp_path):
    store, x = _write(tmp_path, 1)
    again = TrajectoryStore(tmp_path / 's')  # reopened for writing: keeps its version
    assert again.version == 1 and again.root.attrs['version'] == 1
    group = again.group('toy')
    assert not group.sharded and group.params.chunks[1] == group.chunk_states
    ind = np.arange(0, 101, 7)
    assert group._reader is None  # version-1 chunks: zarr-python reads them
    assert np.array_equal(group.read_states(1, ind).view(np.uint16), x[ind].view(np.uint16))
    group.write_states(0, 0, x[:10])
    assert np.array_equal(group.read_params(0, slice(0, 10)).view(np.uint16), x[:10].view(np.uint16))


def test_a_format_version_the_code_does_not_know_is_named(tmp_path):
    store = TrajectoryStore(tmp_path / 's')
    store.root.attrs['version'] = 7
    for mode in ('r', 'a'):
        with pytest.raises(StoreError, match=r"format version 7 is not one this code reads \(1, 2\)"):
            TrajectoryStore(tmp_path / 's', mode=mode)


@pytest.mark.parametrize('version', [1, 2])
def test_a_damaged_chunk_is_named_with_task_trajectory_and_chunk(tmp_path, version, monkeypatch):
    for name in ('CHUNK_BYTES', 'SHARD_BYTES'):
        monkeypatch.setattr(f'pipeline.store.{name}', 40 * 630 * 2)  # 40 states per chunk (v1) or shard (v2)
    store, x = _write(tmp_path, version)
    group = store.group('toy')
    key = group.chunk_key(1, 50)
    path = tmp_path / 's' / key
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    reader = TrajectoryStore(tmp_path / 's', mode='r').group('toy')
    bad = [i for i in range(101) if not reader._readable(1, i)]
    assert bad and all(reader.chunk_key(1, i) == key for i in bad)
    message = f"task 'toy', trajectory 1: chunk {key}" + (f' (state {bad[0]})' if version == 2 else '')
    with pytest.raises(DamagedChunkError, match=re.escape(message + ' cannot be read')):
        reader.read_states(1, np.arange(0, 101))
    with pytest.raises(DamagedChunkError, match=re.escape(message + ' cannot be read')):
        reader.read_params(1)
    fine = np.array([i for i in range(101) if reader.chunk_key(1, i) != key or (version == 2 and i not in bad)])
    assert np.array_equal(reader.read_states(1, fine).view(np.uint16), x[fine].view(np.uint16))


def test_a_garbage_manifest_is_named(tmp_path):
    store = TrajectoryStore(tmp_path / 's')
    (tmp_path / 's' / 'manifest.parquet').write_bytes(b'not parquet at all')
    with pytest.raises(ManifestError, match=r'manifest.parquet: not a readable manifest'):
        store.manifest()
    (tmp_path / 's' / 'manifest.parquet').write_bytes(b'')
    with pytest.raises(ManifestError, match=r'manifest.parquet: not a readable manifest'):
        store.manifest()


def test_the_local_reader_keeps_a_bounded_number_of_files_open(tmp_path, monkeypatch):
    import psutil

    from pipeline.shards import local_reader
    monkeypatch.setattr('pipeline.store.SHARD_BYTES', 4 * 630 * 2)  # 4 states per shard: 26 shard files
    store, x = _write(tmp_path, 2)
    reader = local_reader(tmp_path / 's' / 'toy' / 'params', max_open=5)
    before = len(psutil.Process().open_files())
    states = np.arange(0, 101, 3)
    assert np.array_equal(reader.read(1, states).view(np.uint16), x[states].view(np.uint16))
    assert len(psutil.Process().open_files()) - before <= 5


def test_migrate_rewrites_a_version_2_store_in_the_current_layout(tmp_path, monkeypatch):
    import hashlib

    import ray

    from pipeline.migrate import migrate
    layout = [('transformer.wte.weight', (1100, 3)), ('transformer.h.0.mlp.weight', (7, 41))]
    spec = _spec(name='lm', steps=3000, record_every=200, eval_every=400, trajectories=2)
    n = 1100 * 3 + 7 * 41
    # written before the row blocks and byte planes: full-width chunks, Blosc zstd-3
    monkeypatch.setattr('pipeline.store.v2_chunking', lambda s, r, lay: (8, n, 'delta-blosc-zstd-shuffle'))
    src = TrajectoryStore(tmp_path / 'old')
    group = src.ensure_group(spec, layout, list(METRICS))
    x = np.cumsum(np.random.default_rng(6).normal(0, 0.01, (16, n)), axis=0).astype(np.float16)
    group.write_states(0, 0, x)
    group.write_metrics(0, np.zeros((16, len(METRICS)), np.float32))
    digest = hashlib.sha256(group.read_params(0).tobytes() + group.read_metrics(0).tobytes()).hexdigest()
    src.manifest().upsert({'task': 'lm', 'index': 0, 'status': 'done', 'checksum': digest})
    assert group.params.chunks == (1, 8, n)
    monkeypatch.undo()
    ray.init(num_cpus=2, include_dashboard=False, logging_level='ERROR', log_to_driver=False)
    try:
        summary = migrate(str(tmp_path / 'old'), str(tmp_path / 'new'), progress=False)
    finally:
        ray.shutdown()
    assert (summary.done, summary.failed, summary.not_done) == (1, [], 1)
    new = TrajectoryStore(tmp_path / 'new', mode='r').group('lm')
    assert new.params.chunks == (1, 8, 192) and new.group.attrs['params_codec'] == 'delta-byteplanes-zstd1'
    assert np.array_equal(new.read_params(0).view(np.uint16), x.view(np.uint16))
