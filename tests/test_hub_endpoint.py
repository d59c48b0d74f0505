"""The hub over HTTP (a hub endpoint on localhost): push a store, read it back, download published files."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from pipeline.hub import HubUnavailableError, download, missing_bytes
from pipeline.published import REPO_ID, REVISION
from tests.conftest import write_published
from tests.fake_hub import FakeHub, Repo

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], endpoint: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, 'HF_ENDPOINT': endpoint, 'HF_HOME': str(home), 'HF_TOKEN': 'hf_test',
           'HF_HUB_DISABLE_XET': '1', 'HF_HUB_DISABLE_TELEMETRY': '1'}
    env.pop('HF_HUB_OFFLINE', None)
    return subprocess.run([sys.executable, '-m', 'pipeline', *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def hub():
    with FakeHub() as hub:
        yield hub


def test_push_uploads_every_file_and_the_store_streams_back_from_the_hub(small_store, hub, tmp_path):
    args = ['push', str(small_store), '--repo', 'me/trajectories', '--path-in-repo', 'small']
    hub.reject_commits = 1
    interrupted = run_cli(args, hub.endpoint, tmp_path / 'home')
    assert interrupted.returncode == 2 and 'commit refused by the test' in interrupted.stderr
    repo = hub.repos['me/trajectories']
    assert repo.files == {} and len(hub.blobs) > 0
    hub.requests.clear()
    pushed = run_cli(args, hub.endpoint, tmp_path / 'home')
    assert pushed.returncode == 0, pushed.stderr
    assert not any(m == 'PUT' for m, _ in hub.requests)  # the LFS objects sent before the failure are reused
    assert pushed.stdout.strip() == f'{hub.endpoint}/datasets/me/trajectories/commit/{repo.commits[-1]}'
    local = {f'small/{p.relative_to(small_store).as_posix()}': p.read_bytes()
             for p in small_store.rglob('*') if p.is_file()}
    assert repo.files == local
    assert any('/params/c/' in p for p in repo.lfs)  # binary chunks went through the LFS upload
    assert set(hub.blobs) == {hashlib.sha256(local[p]).hexdigest() for p in repo.lfs}

    url = 'hf://datasets/me/trajectories/small'
    verified = run_cli(['verify', url, '--cache-dir', str(tmp_path / 'cache')], hub.endpoint, tmp_path / 'home')
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip().endswith('6 trajectories checked, 0 problem(s)')

    commits = len(repo.commits)
    again = run_cli(args, hub.endpoint, tmp_path / 'home')
    assert again.returncode == 0, again.stderr
    assert len(repo.commits) == commits and repo.files == local  # nothing changed, nothing committed


def test_push_refuses_a_damaged_store_and_uploads_nothing(small_store, hub, tmp_path):
    store = tmp_path / 'store'
    shutil.copytree(small_store, store)
    chunk = next(p for p in sorted(store.glob('*/params/c/1/*/0')))
    chunk.write_bytes(chunk.read_bytes()[:-8] + b'\0' * 8)
    pushed = run_cli(['push', str(store), '--repo', 'me/trajectories'], hub.endpoint, tmp_path / 'home')
    assert pushed.returncode == 2
    task = chunk.relative_to(store).parts[0]
    assert f'not pushed, 1 problem(s) found by verify: {task}[1]: chunk params/c/1/' in pushed.stderr
    assert hub.requests == [] and hub.repos == {}


@pytest.fixture
def published_hub(hub, tmp_path, monkeypatch):
    """The hub serving fm-16 files in the published layout (11.5 MB); returns (hub, written arrays)."""
    arrays = write_published(tmp_path / 'published', 'fm-16', 2, 200)
    files = {p.name: p.read_bytes() for p in (tmp_path / 'published').iterdir()}
    hub.repos[REPO_ID] = Repo(files=files, lfs=set(files), branches={'main', REVISION})
    monkeypatch.setattr('pipeline.hub.shutil.disk_usage', lambda p: shutil._ntuple_diskusage(1, 1, 10**12))
    return hub, arrays


def test_download_fetches_published_files_over_http_once(published_hub, tmp_path):
    hub, arrays = published_hub
    files = hub.repos[REPO_ID].files
    paths = download(['fm-16'], tmp_path / 'cache', endpoint=hub.endpoint)['fm-16']
    assert {p.name: p.read_bytes() for p in paths} == files
    on_disk = np.fromfile(paths[0], np.float16).reshape(arrays['fm-16.dat'].shape)
    assert np.array_equal(on_disk.view(np.uint16), arrays['fm-16.dat'].view(np.uint16))
    assert missing_bytes(['fm-16'], tmp_path / 'cache') == 0
    hub.requests.clear()
    assert download(['fm-16'], tmp_path / 'cache', endpoint=hub.endpoint)['fm-16'] == paths
    assert not any(method == 'GET' for method, _ in hub.requests)  # cached: only metadata requests
    unreachable = 'http://127.0.0.1:9'  # discard port: nothing listens
    assert download(['fm-16'], tmp_path / 'cache', endpoint=unreachable)['fm-16'] == paths  # served from the cache


def test_download_resumes_after_a_dropped_connection_and_after_a_failed_call(published_hub, tmp_path):
    hub, _ = published_hub
    files = hub.repos[REPO_ID].files
    received = huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE  # the client keeps whole chunks only
    hub.get_faults = [received]  # the connection drops after one chunk
    paths = download(['fm-16'], tmp_path / 'cache', endpoint=hub.endpoint)['fm-16']
    assert hub.ranges[:2] == ['', f'bytes={received}-']  # the same call asked only for the rest
    assert {p.name: p.read_bytes() for p in paths} == files

    hub.ranges.clear()
    hub.get_faults = [received, 'error']  # ... and the hub fails the retry: the call gives up
    with pytest.raises(HubUnavailableError, match=r'downloading fm-16\.dat failed \(503\); rerun to resume it'):
        download(['fm-16'], tmp_path / 'cache2', endpoint=hub.endpoint)
    partial = list((tmp_path / 'cache2').rglob('blobs/*.part'))
    assert [p.stat().st_size for p in partial] == [received]
    paths = download(['fm-16'], tmp_path / 'cache2', endpoint=hub.endpoint)['fm-16']
    assert hub.ranges[2] == f'bytes={received}-'  # the rerun asked only for the rest
    assert {p.name: p.read_bytes() for p in paths} == files
    assert not list((tmp_path / 'cache2').rglob('blobs/*.part'))


def _published_streams(hub, tmp_path, cache: str = 'states'):
    from pipeline.loader import WindowConfig, WindowStream
    cfg = WindowConfig(step=16, seq_len=20, samples_per_traj=2, batch_size=2)
    remote = WindowStream(f'hf-published://{REPO_ID}@{REVISION}?fm-16=2x200', cfg, seed=3,
                          storage_options={'cache_dir': str(tmp_path / cache)})
    local = WindowStream(f'published:{tmp_path / "published"}?fm-16=2x200', cfg, seed=3,
                         storage_options={'cache_dir': str(tmp_path / 'local-states')})
    return remote, local


def _same(a, b) -> None:
    for f in ('edge_attr', 'states', 'y_mean', 'y_std', 'y_slot', 'y_len', 'window', 'pos'):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_published_files_stream_in_place_with_range_requests(published_hub, tmp_path, monkeypatch):
    """The hub's published files are read state by state (one range request each, cached), with a
    dropped connection retried, and give the same windows as the same files on disk."""
    hub, arrays = published_hub
    monkeypatch.setenv('HF_ENDPOINT', hub.endpoint)
    remote, local = _published_streams(hub, tmp_path)
    assert remote.task_names == ['fm-16'] and remote.trajectories == {'fm-16': [0, 1]}
    hub.ranges.clear()
    hub.get_faults = [1000]  # the first state's answer breaks off after 1,000 bytes
    first = remote.batch(0)
    _same(first, local.batch(0))
    state_bytes = 2 * 14378
    fetched = [r for r in hub.ranges if r]
    assert all(int(r.split('-')[1]) - int(r[6:].split('-')[0]) + 1 == state_bytes for r in fetched)
    states_read = {(t, s) for _, t, s0, _ in first.window.tolist() for s in range(s0, 200, 4)[:25]}
    assert len(fetched) == len(states_read) + 1  # every state once, plus the retried one
    hub.ranges.clear()
    again, _ = _published_streams(hub, tmp_path)
    _same(again.batch(0), first)
    assert not [r for r in hub.ranges if r]  # the second read came from the state cache
    for b in range(1, 3):
        _same(remote.batch(b), local.batch(b))


def test_published_stream_offline(published_hub, tmp_path, monkeypatch):
    from pipeline.published_stream import PublishedStore
    from pipeline.store import StoreError
    hub, _ = published_hub
    monkeypatch.setenv('HF_ENDPOINT', hub.endpoint)
    remote, _ = _published_streams(hub, tmp_path)
    warm = remote.batch(0)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    url = f'hf-published://{REPO_ID}@{REVISION}?fm-16=2x200'
    with pytest.raises(StoreError, match='no published task files found .HF_HUB_OFFLINE is set and nothing is cached'):
        PublishedStore(url, tmp_path / 'cold')
    offline, _ = _published_streams(hub, tmp_path)
    _same(offline.batch(0), warm)  # cached states are served offline
    with pytest.raises(HubUnavailableError, match=r'fm-16.dat trajectory \d state \d+ is not in the local state cache'):
        for b in range(1, 20):
            offline.batch(b)


def test_meta_training_runs_on_the_published_files_in_place(published_hub, tmp_path, monkeypatch):
    from metatrain.training import TrainConfig, train
    hub, _ = published_hub
    monkeypatch.setenv('HF_ENDPOINT', hub.endpoint)
    cfg = TrainConfig.from_dict({'store': f'hf-published://{REPO_ID}@{REVISION}?fm-16=2x200',
                                 'run_dir': str(tmp_path / 'run'), 'steps': 3, 'ckpt_every': 3,
                                 'model': {'hid': 16, 'layers': 2},
                                 'window': {'step': 16, 'seq_len': 20, 'samples_per_traj': 2, 'batch_size': 2}})
    summary = train(cfg, progress=False)
    assert summary['step'] == 3 and np.isfinite(summary['losses']).all()
    assert (tmp_path / 'run' / 'nowcaster.safetensors').is_file()
