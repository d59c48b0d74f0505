"""The trajectory store: lossless codecs, chunk layout, fsspec URLs, manifest writes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.record import METRICS
from pipeline.store import PARAMS_CODECS, StoreError, TrajectoryStore, chunk_states
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
