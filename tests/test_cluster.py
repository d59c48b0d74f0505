"""A real two-node Ray cluster on one machine, driven with the `ray` CLI as docs/cluster.md says: a collection
job submitted to it spreads over both nodes; one node killed mid-job; the resubmitted job completes exactly
the missing trajectories. Every process the test starts is stopped by PID."""

from __future__ import annotations

import json
import os
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


class Cluster:
    """Head (1 CPU, dashboard on 127.0.0.1) and a second node (1 CPU), token authentication on, driven
    through the `ray` CLI (the test process's own `ray` module may have read its settings already)."""

    def __init__(self) -> None:
        self.env = {**os.environ, 'RAY_AUTH_MODE': 'token', 'RAY_AUTH_TOKEN': secrets.token_hex(32)}
        self.temp = tempfile.mkdtemp(prefix='ray-', dir='/tmp')  # short: Ray's socket paths must fit 107 bytes
        self.port, self.dashboard = _free_port(), _free_port()
        self.api = f'http://127.0.0.1:{self.dashboard}'
        self.log = Path(self.temp) / 'head.log'
        self.nodes: list[subprocess.Popen] = []

    def start(self) -> None:
        common = ['--block', '--node-ip-address', '127.0.0.1', '--num-cpus', '1', '--disable-usage-stats']
        with open(self.log, 'w') as log:
            self.nodes.append(self._popen(['start', '--head', '--port', str(self.port), '--dashboard-host', '127.0.0.1',
                                           '--dashboard-port', str(self.dashboard), '--include-dashboard', 'true',
                                           '--temp-dir', self.temp, '--ray-client-server-port', str(_free_port()),
                                           *self._own_ports(), *common], log))
        _wait('the head', lambda: len(self.alive_nodes()) == 1, log=self.log)
        self.nodes.append(self._popen(['start', '--address', f'127.0.0.1:{self.port}', *self._own_ports(), *common],
                                      subprocess.DEVNULL))
        _wait('two nodes', lambda: len(self.alive_nodes()) == 2)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            _stop(node)
        for p in psutil.process_iter(['pid', 'cmdline']):  # anything of this cluster that outlived its node
            if any(self.temp in part for part in p.info['cmdline'] or []):
                p.kill()
        shutil.rmtree(self.temp, ignore_errors=True)

    def ray(self, *args: str, check: bool = True) -> str | None:
        """`ray ARGS --address <dashboard>` (before a `--` entrypoint): its output (None if it failed and `check`
        is off)."""
        cut = args.index('--') if '--' in args else len(args)
        run = subprocess.run([RAY, *args[:cut], '--address', self.api, *args[cut:]], env=self.env,
                             capture_output=True, text=True, timeout=120)
        if run.returncode and not check:
            return None
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    def alive_nodes(self) -> list[dict]:
        out = self.ray('list', 'nodes', '--format', 'json', check=False)
        try:
            return [n for n in json.loads(out) if n['state'] == 'ALIVE']
        except (TypeError, ValueError):  # not up yet: no output, or not JSON
            return []

    def job_state(self, job: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        jobs = json.loads(self.ray('list', 'jobs', '--format', 'json'))
        return next(j['status'] for j in jobs if j['submission_id'] == job)

    @staticmethod
    def _own_ports() -> list[str]:  # ports with fixed defaults: the two nodes of one machine must not share them
        flags = ('--dashboard-agent-listen-port', '--dashboard-agent-grpc-port', '--runtime-env-agent-port',
                 '--metrics-export-port')
        return [arg for flag in flags for arg in (flag, str(_free_port()))]

    def _popen(self, args: list[str], out) -> subprocess.Popen:
        return subprocess.Popen([RAY, *args], env=self.env, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)


@pytest.fixture
def cluster():
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_a_job_on_two_nodes_survives_a_killed_node_by_resubmission(cluster, tmp_path):
    store = tmp_path / 'store'
    config = tmp_path / 'collect.yaml'
    entry = fm16_entry(steps=200, trajectories=5)  # a few seconds each: one is surely running when a node is killed
    config.write_text(yaml.safe_dump({'store': str(store), 'tasks': [entry]}))
    second_node = next(n['node_id'] for n in cluster.alive_nodes() if not n['is_head_node'])

    def submit(job: str) -> None:
        cluster.ray('job', 'submit', '--no-wait', '--submission-id', job, '--', sys.executable, '-m', 'jobs.collect',
                    '--config', str(config), '--address', 'auto', '--retries', '0')

    def ended(job: str) -> bool:
        return cluster.job_state(job) in ('SUCCEEDED', 'FAILED', 'STOPPED')

    def hosts_done() -> set[str]:
        if not (store / 'manifest.parquet').exists():
            return set()
        return {r['host'] for r in TrajectoryStore(store, mode='r').manifest().rows.values() if r['status'] == 'done'}

    def running_on_second_node() -> bool:
        tasks = json.loads(cluster.ray('list', 'tasks', '--filter', 'state=RUNNING', '--format', 'json', '--detail'))
        return any(t['node_id'] == second_node and t['name'].startswith('record:') for t in tasks)

    submit('collect-1')
    _wait('a trajectory done on each node', lambda: len(hosts_done()) == 2, timeout=180)
    _wait('a trajectory running on the second node', running_on_second_node, timeout=60)
    _stop(cluster.nodes[1])  # the second node dies mid-job, with a trajectory on it
    _wait('the first job ended', lambda: ended('collect-1'), timeout=180)
    rows = TrajectoryStore(store, mode='r').manifest().rows
    done = {k: r['updated'] for k, r in rows.items() if r['status'] == 'done'}
    assert len({r['host'] for r in rows.values() if r['status'] == 'done'}) == 2  # spread over both nodes
    missing = 5 - len(done)
    assert missing >= 1, cluster.ray('job', 'logs', 'collect-1')

    submit('collect-2')
    _wait('the second job ended', lambda: ended('collect-2'), timeout=240)
    logs = cluster.ray('job', 'logs', 'collect-2')
    assert cluster.job_state('collect-2') == 'SUCCEEDED', logs
    assert f'scheduled {missing}, done {missing}, failed 0, already done {5 - missing}' in logs
    manifest = TrajectoryStore(store, mode='r').manifest()
    assert all(r['status'] == 'done' for r in manifest.rows.values()) and len(manifest.rows) == 5
    assert all(manifest.rows[k]['updated'] == t for k, t in done.items())  # nothing done was run again
    assert verify_store(TrajectoryStore(store, mode='r')) == (5, [])
    assert cluster.nodes[0].poll() is None  # the head lives on
