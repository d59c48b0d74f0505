"""Stores on an S3 API: collection from Ray workers, a killed driver's rerun, verify and training windows,
against a local S3-compatible server (moto, on 127.0.0.1) that the test starts."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.loader import WindowConfig, WindowStream
from pipeline.store import TrajectoryStore
from pipeline.verify import verify_store
from tests.conftest import fm16_entry

ROOT = Path(__file__).resolve().parents[1]
BUCKET = 'nino-test'
N = 4  # trajectories


@pytest.fixture(scope='module')
def s3_env():
    """A moto S3 server on 127.0.0.1 and the environment that points boto (so s3fs, in every process) at it."""
    from moto.server import ThreadedMotoServer
    logging.getLogger('werkzeug').setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {'AWS_ENDPOINT_URL': f'http://{host}:{port}', 'AWS_ACCESS_KEY_ID': 'testing',
           'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': 'us-east-1'}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(BUCKET)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _collect(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', 'jobs.collect', '--config', str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_collect_on_s3_kill_the_driver_rerun_verify_and_stream_windows(s3_env, tmp_path):
    url = f's3://{BUCKET}/store'
    config = tmp_path / 'collect.yaml'
    config.write_text(yaml.safe_dump({'store': url, 'tasks': [fm16_entry(steps=120, trajectories=N)]}))
    first = _collect(config)
    done_at_kill: dict = {}
    deadline = time.time() + 180
    while time.time() < deadline and first.poll() is None and not done_at_kill:
        try:
            rows = TrajectoryStore(url, mode='r').manifest().rows
            done_at_kill = {k: r['updated'] for k, r in rows.items() if r['status'] == 'done'}
        except Exception:  # the driver has not created the store yet
            pass
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[0]
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the workers it started, mid-run
    first.wait()
    done_at_kill = {k: r['updated'] for k, r in TrajectoryStore(url, mode='r').manifest().rows.items()
                    if r['status'] == 'done'}
    assert 1 <= len(done_at_kill) < N

    second = _collect(config)  # its lease check finds the killed driver's lease stale (dead local process)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    n = N - len(done_at_kill)
    assert f'scheduled {n}, done {n}, failed 0, already done {len(done_at_kill)}' in out
    store = TrajectoryStore(url, mode='r')
    manifest = store.manifest()
    assert sorted(manifest.rows) == [('fm-16', i) for i in range(N)]
    assert all(manifest.rows[k]['updated'] == t for k, t in done_at_kill.items())  # not run again
    assert verify_store(store) == (N, [])
    verified = subprocess.run([sys.executable, '-m', 'pipeline', 'verify', url], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)  # the command a user runs
    assert verified.returncode == 0 and f'{N} trajectories checked, 0 problem(s)' in verified.stdout, verified.stderr
    fs, path = store._fs_path()
    assert not fs.exists(f'{path}/manifest.parquet.lease')  # released at the end

    local = tmp_path / 'copy'
    fs.get(path, str(local), recursive=True)
    cfg = WindowConfig(step=4, seq_len=12, samples_per_traj=2, batch_size=2)
    from_s3, from_disk = WindowStream(url, cfg, seed=1), WindowStream(str(local), cfg, seed=1)
    for b in range(3):
        x, y = from_s3.batch(b), from_disk.batch(b)
        assert torch.equal(x.edge_attr, y.edge_attr) and torch.equal(x.targets(), y.targets())
