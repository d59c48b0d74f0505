"""The published dataset: convert memmaps in the published layout, stream them, serve through the hub cache."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nino.graph import build_graph
from nino.scaling import scale_states
from pipeline.convert import SourceError, convert
from pipeline.hub import DiskSpaceError, HubUnavailableError, download, missing_bytes
from pipeline.loader import WindowConfig, WindowStream
from pipeline.published import REPO_ID, REVISION, published_task
from pipeline.store import TrajectoryStore
from pipeline.verify import verify_store
from tests.conftest import windows_of, write_published
from tests.fake_hub import fake_hub_cache

ray = pytest.importorskip('ray')
ROOT = Path(__file__).resolve().parents[1]
SHAPES = {'fm-16': (2, 1000), 'lm1b-3-24': (2, 17)}


@pytest.fixture(scope='module')
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level='ERROR', log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope='module')
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp('published')
    arrays = {}
    for i, (name, (n_traj, n_states)) in enumerate(SHAPES.items()):
        arrays.update(write_published(folder, name, n_traj, n_states, seed=i))
    return folder, arrays


@pytest.fixture(scope='module')
def converted(published, local_ray, tmp_path_factory):
    folder, _ = published
    store = tmp_path_factory.mktemp('converted') / 'store'
    summary = convert(list(SHAPES), folder, str(store), SHAPES, progress=False)
    assert (summary.done, summary.failed) == (4, [])
    return store


def test_every_value_is_converted(published, converted):
    _, arrays = published
    store = TrajectoryStore(converted, mode='r')
    fm = store.group('fm-16')
    for i in range(2):
        assert np.array_equal(fm.read_params(i).view(np.uint16), arrays['fm-16.dat'][i].view(np.uint16))
        assert np.array_equal(fm.read_metrics(i), arrays['fm-16_metrics.dat'][i].astype(np.float32))
    lm = store.group('lm1b-3-24')
    for i, part in enumerate(['lm1b-3-24_p1.dat', 'lm1b-3-24_p2.dat']):  # one trajectory per part
        assert np.array_equal(lm.read_params(i).view(np.uint16), arrays[part][0].view(np.uint16))
    assert lm.metric_names == ['train_loss'] and fm.metric_names == ['test_loss', 'test_acc', 'train_loss', 'train_acc']
    assert fm.spec.record_every == 4 and lm.spec.record_every == 200 and lm.spec.arch['n_head'] == 3
    assert verify_store(store) == (4, [])


def test_converted_store_keeps_the_published_window_semantics(published, converted):
    _, arrays = published
    cfg = WindowConfig(step=200, seq_len=40, samples_per_traj=2, batch_size=2)
    stream = WindowStream(str(converted), cfg, tasks=['fm-16'], seed=0)
    layout = TrajectoryStore(converted, mode='r').group('fm-16').layout
    graph = build_graph(layout)
    for g in windows_of(stream.batch(0)):
        _, traj, start, shift = g.window.tolist()
        ind = np.arange(start, 1000, 50)[:45]  # every 50th state = 200 Adam steps apart
        raw = torch.from_numpy(arrays['fm-16.dat'][traj, ind[shift:shift + 5]].T.astype(np.float32))
        assert torch.allclose(g.edge_attr, graph.edge_features(scale_states(raw, layout)[0]), atol=1e-6)
        n_targets = min(40, len(ind) - shift - 5)
        assert g.y_len == n_targets and g.y[:, :n_targets].abs().sum(0).all() and not g.y[:, n_targets:].any()
    lm = windows_of(WindowStream(str(converted), WindowConfig(step=200, seq_len=40, samples_per_traj=1,
                                                              batch_size=1), tasks=['lm1b-3-24'], seed=0).batch(0))[0]
    _, traj, start, shift = lm.window.tolist()
    assert 0 <= start <= 17 - 16  # every state (200 steps apart), 5 inputs and >= 10 targets
    n_targets = 17 - start - 5
    assert lm.y_len == n_targets and lm.y[:, :n_targets].abs().sum(0).all() and not lm.y[:, n_targets:].any()
    assert (lm.pos_w[:1000] > 0).all() and int(lm.pos_w.max()) <= 50257


def test_download_and_convert_through_the_offline_hub_cache(published, local_ray, tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    folder, arrays = published
    task = published_task('fm-16')
    cache = tmp_path / 'hub'
    fake_hub_cache(cache, REPO_ID, REVISION, {f: folder / f for f in task.files()})
    assert missing_bytes(['fm-16'], cache) == 0
    assert missing_bytes(['lm1b-3-24'], cache) == published_task('lm1b-3-24').nbytes()
    paths = download(['fm-16'], cache)['fm-16']
    assert [p.name for p in paths] == task.files() and all(p.is_file() for p in paths)
    free = shutil.disk_usage(cache).free
    monkeypatch.setattr('pipeline.hub.shutil.disk_usage', lambda p: shutil._ntuple_diskusage(1, 1, 10**9))
    with pytest.raises(DiskSpaceError, match=r"needs 22\.1 GB more but .* has 1\.0 GB free"):
        download(['c10-16'], cache)
    monkeypatch.setattr('pipeline.hub.shutil.disk_usage', lambda p: shutil._ntuple_diskusage(1, 1, 10**12))
    with pytest.raises(HubUnavailableError, match='c10-16.dat is not in the local hub cache'):
        download(['c10-16'], cache)
    assert free > 0
    store = tmp_path / 'store'
    convert(['fm-16'], paths[0].parent, str(store), {'fm-16': SHAPES['fm-16']}, progress=False)
    assert np.array_equal(TrajectoryStore(store, mode='r').group('fm-16').read_params(1).view(np.uint16),
                          arrays['fm-16.dat'][1].view(np.uint16))


def test_stream_a_store_from_the_hub_cache_reading_only_needed_chunks(converted, tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    cache = tmp_path / 'hub'
    files = {f'store/{p.relative_to(converted)}': p for p in converted.rglob('*') if p.is_file()}
    partial = {k: v for k, v in files.items() if '/params/c/1/' not in k}  # trajectory 1's chunks not cached
    fake_hub_cache(cache, 'me/nino-store', 'main', partial)
    url = 'hf://datasets/me/nino-store@main/store'
    store = TrajectoryStore(url, {'cache_dir': str(cache)}, mode='r')
    assert store.task_names() == ['fm-16', 'lm1b-3-24']
    local = TrajectoryStore(converted, mode='r')
    assert np.array_equal(store.group('fm-16').read_params(0), local.group('fm-16').read_params(0))
    with pytest.raises(HubUnavailableError, match=r'store/fm-16/params/c/1/\d+/0 is not in the local hub cache'):
        store.group('fm-16').read_params(1)
    cfg = WindowConfig(step=200, seq_len=40, samples_per_traj=2, batch_size=2)
    from_hub = WindowStream(url, cfg, tasks=['fm-16'], trajectories={'fm-16': [0]}, seed=5,
                            storage_options={'cache_dir': str(cache)})
    from_disk = WindowStream(str(converted), cfg, tasks=['fm-16'], trajectories={'fm-16': [0]}, seed=5)
    assert torch.equal(from_hub.batch(0).edge_attr, from_disk.batch(0).edge_attr)


def test_wrong_source_files_are_named(tmp_path, local_ray):
    write_published(tmp_path / 'src', 'fm-16', 2, 10)
    with open(tmp_path / 'src' / 'fm-16.dat', 'ab') as f:
        f.write(b'\0\0')
    with pytest.raises(SourceError, match='fm-16.dat: 575122 bytes'):
        convert(['fm-16'], tmp_path / 'src', str(tmp_path / 'store'), {'fm-16': (2, 10)}, progress=False)
    with pytest.raises(SourceError, match='lm1b-3-24_p1.dat: missing'):
        convert(['lm1b-3-24'], tmp_path / 'src', str(tmp_path / 'store'), progress=False)


def test_killed_conversion_completes_on_rerun_without_converting_twice(tmp_path):
    N = 16  # trajectories: enough that the kill lands between the first and the last
    source = tmp_path / 'src'
    arrays = write_published(source, 'fm-16', N, 240)  # long enough that results do not all arrive at once
    store = tmp_path / 'store'
    cmd = [sys.executable, '-m', 'pipeline', 'convert', '--tasks', 'fm-16', '--source', str(source),
           '--store', str(store), '--shape', f'fm-16={N}x240']
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    done = {}
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and not done:
        if (store / 'manifest.parquet').exists():  # read with pyarrow alone: opening the store takes longer
            raw = pa.BufferReader((store / 'manifest.parquet').read_bytes())  # one file, even mid-replace
            done = [s for s in pq.read_table(raw, columns=['status']).column(0).to_pylist() if s == 'done']
        time.sleep(0.005)  # the rows of small trajectories arrive milliseconds apart
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    rows = TrajectoryStore(store, mode='r').manifest().rows
    before = {k: r['updated'] for k, r in rows.items() if r['status'] == 'done'}
    assert 1 <= len(before) < N
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f'scheduled {N - len(before)}, done {N - len(before)}, failed 0, already done {len(before)}' in out.stdout
    s = TrajectoryStore(store, mode='r')
    for key, stamp in before.items():
        assert s.manifest().rows[key]['updated'] == stamp
    group = s.group('fm-16')
    for i in range(N):
        assert np.array_equal(group.read_params(i).view(np.uint16), arrays['fm-16.dat'][i].view(np.uint16))
    assert verify_store(s) == (N, [])


def test_an_uncached_hub_store_offline_says_so_in_one_line(tmp_path):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(tmp_path / 'empty-cache')}
    for command in (['stream', 'hf://datasets/someone/trajectories/small', '--batches', '1'],
                    ['verify', 'hf://datasets/someone/trajectories/small']):
        done = subprocess.run([sys.executable, '-m', 'pipeline', *command], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and 'zarr.json is not in the local hub cache and the hub cannot be reached' in lines[0]
        assert lines[0].startswith('error: hf://datasets/someone/trajectories/small: ')
