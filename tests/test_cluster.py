"""A real two-node Ray cluster on one machine (docs/cluster.md as written): a collection job submitted to it
spreads over both nodes; one node killed mid-job; the resubmitted job completes exactly the missing
trajectories. Every process the test starts is stopped by PID."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.store import TrajectoryStore
from pipeline.verify import verify_store
from tests.conftest import fm16_entry

RAY = str(Path(sys.executable).with_name('ray'))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _wait(what: str, ready, timeout: float = 90.0, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(what + (f'; head node output:\n{log.read_text()[-3000:]}' if log else ''))


def _stop(proc: subprocess.Popen) -> None:
    """A node: the `ray start --block` process and every process under it (Ray's workers start their own
    sessions, so a process-group kill misses them), by PID."""
    try:
        family = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


@pytest.fixture
def cluster(monkeypatch):
    """Head (1 CPU, dashboard on 127.0.0.1) and a second node (1 CPU) joined to it, with token authentication."""
    monkeypatch.setenv('RAY_AUTH_MODE', 'token')
    monkeypatch.setenv('RAY_AUTH_TOKEN', secrets.token_hex(32))
    temp = tempfile.mkdtemp(prefix='ray-', dir='/tmp')  # short: Ray's socket paths must fit 107 bytes
    port, dashboard = _free_port(), _free_port()
    common = ['--block', '--node-ip-address', '127.0.0.1', '--num-cpus', '1', '--disable-usage-stats']

    def own_ports() -> list[str]:  # ports with fixed defaults: the two nodes of one machine must not share them
        flags = ('--dashboard-agent-listen-port', '--dashboard-agent-grpc-port', '--runtime-env-agent-port',
                 '--metrics-export-port')
        return [arg for flag in flags for arg in (flag, str(_free_port()))]

    log = open(Path(temp) / 'head.log', 'w')
    head = subprocess.Popen([RAY, 'start', '--head', '--port', str(port), '--dashboard-host', '127.0.0.1',
                             '--dashboard-port', str(dashboard), '--include-dashboard', 'true', '--temp-dir', temp,
                             '--ray-client-server-port', str(_free_port()), *own_ports(), *common],
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    started = [head]
    try:
        from ray.job_submission import JobSubmissionClient
        address = f'http://127.0.0.1:{dashboard}'

        def client():
            try:
                return JobSubmissionClient(address)
            except Exception:
                return None

        _wait('dashboard', client, log=Path(temp) / 'head.log')
        worker = subprocess.Popen([RAY, 'start', '--address', f'127.0.0.1:{port}', *own_ports(), *common],
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(worker)
        status = [RAY, 'status', '--address', f'127.0.0.1:{port}']
        _wait('two nodes', lambda: subprocess.run(status, capture_output=True, text=True).stdout.count(' node_') == 2)
        yield client(), address, head, worker
    finally:
        for proc in reversed(started):
            _stop(proc)
        for p in psutil.process_iter(['pid', 'cmdline']):  # anything of this cluster that outlived its session
            if any(temp in part for part in p.info['cmdline'] or []):
                p.kill()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_job_on_two_nodes_survives_a_killed_node_by_resubmission(cluster, tmp_path):
    from ray.job_submission import JobStatus
    from ray.util.state import list_nodes, list_tasks
    client, address, head, worker = cluster
    second_node = next(n.node_id for n in list_nodes(address=address) if not n.is_head_node)
    store = tmp_path / 'store'
    config = tmp_path / 'collect.yaml'
    config.write_text(yaml.safe_dump({'store': str(store), 'tasks': [fm16_entry(steps=120, trajectories=6)]}))
    entrypoint = f'{sys.executable} -m jobs.collect --config {config} --address auto --retries 0'

    def hosts_done() -> set[str]:
        if not (store / 'manifest.parquet').exists():
            return set()
        return {r['host'] for r in TrajectoryStore(store, mode='r').manifest().rows.values() if r['status'] == 'done'}

    first = client.submit_job(entrypoint=entrypoint)
    def running_on_second_node() -> bool:
        tasks = list_tasks(address=address, filters=[('state', '=', 'RUNNING')], raise_on_missing_output=False)
        return any(t.node_id == second_node and t.name.startswith('record:') for t in tasks)

    _wait('a trajectory done on each node', lambda: len(hosts_done()) == 2, timeout=180)
    _wait('a trajectory running on the second node', running_on_second_node, timeout=60)
    _stop(worker)  # the second node dies mid-job, with a trajectory on it
    _wait('first job ended', lambda: client.get_job_status(first) in (JobStatus.SUCCEEDED, JobStatus.FAILED), 180)
    rows = TrajectoryStore(store, mode='r').manifest().rows
    done = {k: r['updated'] for k, r in rows.items() if r['status'] == 'done'}
    assert len({r['host'] for r in rows.values() if r['status'] == 'done'}) == 2  # spread over both nodes
    missing = 6 - len(done)
    assert missing >= 1, client.get_job_logs(first)

    second = client.submit_job(entrypoint=entrypoint)
    _wait('second job ended', lambda: client.get_job_status(second) in (JobStatus.SUCCEEDED, JobStatus.FAILED), 240)
    logs = client.get_job_logs(second)
    assert client.get_job_status(second) == JobStatus.SUCCEEDED, logs
    assert f'scheduled {missing}, done {missing}, failed 0, already done {6 - missing}' in logs
    manifest = TrajectoryStore(store, mode='r').manifest()
    assert all(r['status'] == 'done' for r in manifest.rows.values()) and len(manifest.rows) == 6
    assert all(manifest.rows[k]['updated'] == t for k, t in done.items())  # nothing done was run again
    assert verify_store(TrajectoryStore(store, mode='r')) == (6, [])
    assert head.poll() is None
