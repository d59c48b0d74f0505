"""One manifest writer per store: a second driver is refused instead of overwriting rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
import yaml

from pipeline.lease import Lease, LeaseError
from pipeline.manifest import Manifest
from tests.conftest import fm16_entry

ROOT = Path(__file__).resolve().parents[1]


def _row(index: int) -> dict:
    return dict(task='fm-16', index=index, status='done', updated=time.time())


def test_a_second_driver_is_refused_and_the_first_keeps_every_row(tmp_path):
    fs, path = fsspec.filesystem('file'), str(tmp_path / 'manifest.parquet')
    first, second = Manifest(fs, path), Manifest(fs, path)
    with first.lease():
        first.upsert(_row(0))
        with pytest.raises(LeaseError, match=rf'another driver \(host {socket.gethostname()}, pid {os.getpid()}'):
            with second.lease():
                pass
        with pytest.raises(LeaseError, match='not writing: another driver holds the manifest lease'):
            second.upsert(_row(5))
        first.upsert(_row(1))
    assert not Path(f'{path}.lease').exists()  # released
    with second.lease():  # now free; the rows the first driver wrote are read again, not dropped
        second.upsert(_row(2))
    assert sorted(Manifest(fs, path).rows) == [('fm-16', 0), ('fm-16', 1), ('fm-16', 2)]


def _lease_file(path: Path, **fields) -> None:
    path.write_text(json.dumps({'token': 'someone-else', **fields}))


def test_stale_leases_are_taken_over_and_live_ones_are_not(tmp_path):
    fs, path = fsspec.filesystem('file'), str(tmp_path / 'manifest.parquet')
    lease_path = Path(f'{path}.lease')
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    _lease_file(lease_path, host=socket.gethostname(), pid=int(gone.stdout), expires=time.time() + 3600)
    with Lease(fs, path):  # its holder is a dead process of this host
        pass
    _lease_file(lease_path, host='another-node', pid=1, expires=time.time() - 1)
    with Lease(fs, path):  # another host's lease past its deadline
        pass
    _lease_file(lease_path, host='another-node', pid=1, expires=time.time() + 3600)
    with pytest.raises(LeaseError, match='host another-node, pid 1'):
        Lease(fs, path).acquire()
    assert json.loads(lease_path.read_text())['token'] == 'someone-else'  # a refused driver changes nothing


def test_a_held_lease_is_renewed_and_a_lost_one_stops_writes(tmp_path):
    fs, path = fsspec.filesystem('file'), str(tmp_path / 'manifest.parquet')
    manifest = Manifest(fs, path)
    manifest._lease.ttl = 0.4
    with manifest.lease() as lease:
        time.sleep(1.0)
        assert json.loads(Path(f'{path}.lease').read_text())['expires'] > time.time()  # renewed meanwhile
        _lease_file(Path(f'{path}.lease'), host='another-node', pid=1, expires=time.time() + 3600)
        with pytest.raises(LeaseError, match='lost the lease on the manifest to host another-node'):
            manifest.upsert(_row(0))
        assert lease.held
    assert not Path(path).exists()


def test_a_collection_job_on_a_store_being_written_stops_before_running(tmp_path):
    store = tmp_path / 'store'
    config = tmp_path / 'collect.yaml'
    config.write_text(yaml.safe_dump({'store': str(store), 'tasks': [fm16_entry(steps=40, trajectories=2)]}))
    from pipeline.store import TrajectoryStore
    manifest = TrajectoryStore(store).manifest()
    with manifest.lease():
        run = subprocess.run([sys.executable, '-m', 'jobs.collect', '--config', str(config)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f'the manifest is being written by another driver (host {socket.gethostname()}, pid {os.getpid()}' \
        in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (store / 'manifest.parquet').exists()  # nothing was run or written
