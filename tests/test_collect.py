"""The Ray collection job on a real local Ray: equality with a plain run, worker kills, verify."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import yaml

from jobs.collect import collect, load_config
from pipeline.__main__ import main as pipeline_main
from pipeline.record import record_trajectory
from pipeline.store import StoreError, TrajectoryStore
from pipeline.verify import verify_store
from tests.conftest import SHARED

ray = pytest.importorskip('ray')

FM_ROOT = str(SHARED / 'data' / 'fashion-mnist-t10k-4443')
TEXT = str(SHARED / 'data' / 'tinyshakespeare' / 'input.txt')


@pytest.fixture(scope='module', autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level='ERROR', log_to_driver=False)
    yield
    ray.shutdown()


def _config(tmp_path, store, fm_steps=40, fm_traj=3, lm_traj=2) -> str:
    cfg = {'store': str(store), 'tasks': [
        {'preset': 'fm-16', 'dataset': {'root': FM_ROOT, 'val_size': 443}, 'steps': fm_steps, 'eval_every': 20,
         'trajectories': fm_traj, 'lr': [0.003, 0.01], 'batch_size': 64},
        {'preset': 'lm-3-24', 'dataset': {'path': TEXT, 'context': 32}, 'steps': 40, 'record_every': 10,
         'eval_every': 20, 'trajectories': lm_traj, 'batch_size': 8, 'seed': 50},
    ]}
    path = tmp_path / 'cfg.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _assert_equals_single_process(config: str, store_url: str) -> None:
    _, specs = load_config(config)
    store = TrajectoryStore(store_url, mode='r')
    manifest = store.manifest()
    for spec in specs:
        group = store.group(spec.name)
        for i in range(spec.trajectories):
            plain = record_trajectory(spec, i)
            assert np.array_equal(group.read_params(i), plain.params), f'{spec.name}[{i}]'
            assert np.array_equal(group.read_metrics(i), plain.metrics, equal_nan=True)
            row = manifest.rows[(spec.name, i)]
            assert row['status'] == 'done' and row['checksum'] == plain.checksum and row['lr'] == plain.lr


def test_collected_states_equal_a_plain_run_and_rerun_does_nothing(tmp_path):
    store = tmp_path / 'store'
    config = _config(tmp_path, store)
    summary = collect(config, progress=False)
    assert (summary.scheduled, summary.done, summary.failed) == (5, 5, [])
    _assert_equals_single_process(config, str(store))
    checked, problems = verify_store(TrajectoryStore(store, mode='r'))
    assert checked == 5 and problems == []
    again = collect(config, progress=False)
    assert (again.scheduled, again.skipped) == (0, 5)


def test_sigkilled_worker_is_retried_and_every_trajectory_lands_once(tmp_path):
    store = tmp_path / 'store'
    config = _config(tmp_path, store, fm_steps=300, fm_traj=2, lm_traj=1)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault('summary', collect(config, progress=False)))
    thread.start()
    victim = None
    deadline = time.time() + 60
    while victim is None and time.time() < deadline:
        for p in psutil.process_iter(['pid', 'cmdline']):
            if any('record:fm-16[0]' in part for part in (p.info['cmdline'] or [])):
                victim = p.info['pid']
        time.sleep(0.2)
    assert victim is not None, 'no worker running fm-16[0] was found'
    time.sleep(1.5)  # mid-trajectory: it takes several seconds
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=240)
    summary = result['summary']
    assert (summary.scheduled, summary.done, summary.failed) == (3, 3, [])
    manifest = TrajectoryStore(store, mode='r').manifest()
    assert sorted(manifest.rows) == [('fm-16', 0), ('fm-16', 1), ('lm-3-24', 0)]
    _assert_equals_single_process(config, str(store))


def test_verify_names_a_corrupted_chunk_and_changed_data(tmp_path, capsys):
    store = tmp_path / 'store'
    config = _config(tmp_path, store, fm_traj=2, lm_traj=1)
    collect(config, progress=False)
    chunk = store / 'fm-16' / 'params' / 'c' / '1' / '0' / '0'
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
    chunk.write_bytes(bytes(raw))
    group = TrajectoryStore(store).group('lm-3-24')
    group.write_states(0, 2, np.zeros((1, group.params.shape[2]), dtype=np.float16))
    assert pipeline_main(['verify', str(store)]) == 1
    out = capsys.readouterr().out
    assert 'BAD fm-16[1]: chunk params/c/1/0/0' in out
    assert 'BAD lm-3-24[0]: checksum does not match' in out
    assert 'fm-16[0]' not in out


def test_changed_spec_for_an_existing_store_loses_nothing(tmp_path):
    store = tmp_path / 'store'
    config = _config(tmp_path, store, fm_traj=1, lm_traj=1)
    collect(config, progress=False)
    before = (store / 'manifest.parquet').read_bytes()
    changed = _config(tmp_path, store, fm_steps=80, fm_traj=1, lm_traj=1)
    with pytest.raises(StoreError, match="'fm-16' exists with another spec .*steps: stored 40 vs config 80"):
        collect(changed, progress=False)
    assert (store / 'manifest.parquet').read_bytes() == before
    assert verify_store(TrajectoryStore(store, mode='r')) == (2, [])


@pytest.mark.parametrize('text, message', [
    ('', 'text corpus .*corpus.txt: 0 tokens are too few for context 32'),
    ('tiny corpus\n', 'text corpus .*corpus.txt: 12 tokens are too few for context 32'),
])
def test_corpora_too_small_are_named_before_any_work(tmp_path, text, message):
    from pipeline.tasks import ConfigError
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text(text)
    config = tmp_path / 'cfg.yaml'
    config.write_text(yaml.safe_dump({'store': str(tmp_path / 's'), 'tasks': [
        {'preset': 'lm-3-24', 'dataset': {'path': str(corpus), 'context': 32}, 'steps': 40, 'record_every': 10,
         'eval_every': 20, 'trajectories': 1}]}))
    with pytest.raises(ConfigError, match=f"cfg.yaml: task 'lm-3-24': {message}"):
        load_config(config)
    assert not (tmp_path / 's').exists()


def test_a_missing_dataset_root_is_named_before_any_work(tmp_path):
    from jobs.collect import main
    config = tmp_path / 'cfg.yaml'
    config.write_text(yaml.safe_dump({'store': str(tmp_path / 's'), 'tasks': [
        {'preset': 'fm-16', 'dataset': {'root': str(tmp_path / 'nowhere')}, 'steps': 40, 'trajectories': 1}]}))
    assert main(['--config', str(config)]) == 2
    assert not (tmp_path / 's').exists()


def test_a_failed_ray_task_keeps_its_root_cause_without_colours():
    from pipeline.scheduler import describe_failure

    @ray.remote
    def fails():
        raise FileNotFoundError('text corpus not found: /data/corpus.txt')

    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(fails.remote())
    assert '\x1b[' in str(caught.value) or 'ray::' in str(caught.value)  # what Ray's own message looks like
    assert describe_failure(caught.value) == 'FileNotFoundError: text corpus not found: /data/corpus.txt'
