"""Killing the collection driver and rerunning it runs only the missing trajectories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from pipeline.store import TrajectoryStore
from pipeline.verify import verify_store
from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
FM_ROOT = str(SHARED / 'data' / 'fashion-mnist-t10k-4443')


def _run(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', 'jobs.collect', '--config', str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_killed_driver_rerun_schedules_only_missing(tmp_path):
    store = tmp_path / 'store'
    config = tmp_path / 'cfg.yaml'
    config.write_text(yaml.safe_dump({'store': str(store), 'tasks': [
        {'preset': 'fm-16', 'dataset': {'root': str(SHARED / 'data' / 'fashion-mnist-t10k-4443')},
         'steps': 120, 'eval_every': 40, 'trajectories': 6, 'batch_size': 64}]}))
    first = _run(config)
    done_before: dict = {}
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if (store / 'manifest.parquet').exists():
            done_before = {k: r['updated'] for k, r in TrajectoryStore(store, mode='r').manifest().rows.items()
                           if r['status'] == 'done'}
            if done_before:
                break
        time.sleep(0.1)
    assert first.poll() is None, first.communicate()[0]
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started
    first.wait()
    assert 1 <= len(done_before) < 6

    rows = TrajectoryStore(store, mode='r').manifest().rows
    done_at_kill = {k for k, r in rows.items() if r['status'] == 'done'}
    second = _run(config)
    out = second.communicate(timeout=240)[0]
    assert second.returncode == 0, out
    assert f'scheduled {6 - len(done_at_kill)}, done {6 - len(done_at_kill)}, failed 0, ' \
           f'already done {len(done_at_kill)}' in out
    manifest = TrajectoryStore(store, mode='r').manifest()
    assert sorted(manifest.rows) == [('fm-16', i) for i in range(6)]
    for key in done_at_kill:
        assert manifest.rows[key]['updated'] == rows[key]['updated']  # not run again
    assert verify_store(TrajectoryStore(store, mode='r')) == (6, [])


def test_a_sigkilled_driver_leaves_no_ray_processes_behind(tmp_path):
    """The local cluster a collect driver started is stopped when the driver is SIGKILLed."""
    config = tmp_path / 'cfg.yaml'
    config.write_text(yaml.safe_dump({'store': str(tmp_path / 's'), 'tasks': [
        {'preset': 'fm-16', 'dataset': {'root': FM_ROOT, 'val_size': 443}, 'steps': 4000, 'eval_every': 4000,
         'trajectories': 2, 'batch_size': 64}]}))
    driver = subprocess.Popen([sys.executable, '-m', 'jobs.collect', '--config', str(config)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = psutil.Process(driver.pid)
    deadline = time.time() + 120
    cluster: list[psutil.Process] = []
    while time.time() < deadline:
        cluster = proc.children(recursive=True)
        if sum(c.name().startswith('ray::record') for c in cluster) == 2:
            break
        time.sleep(0.2)
    assert any(c.name() == 'raylet' for c in cluster) and any(c.name() == 'gcs_server' for c in cluster)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 15  # without the watchdog, Ray's agents outlive the driver by a minute or more
    while time.time() < deadline and any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in cluster):
        time.sleep(0.5)
    left = [f'{c.pid} {c.name()}' for c in cluster if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, f'still running after the driver was killed: {left}'
