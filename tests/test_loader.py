"""Training windows: published semantics, targets, augmentation, word-embedding sampling, determinism,
only verified data."""

from __future__ import annotations

import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nino.graph import EdgeType, build_graph
from nino.scaling import apply_scale, scale_states
from pipeline.loader import WindowConfig, WindowStream, window_loader
from pipeline.store import TrajectoryStore
from tests.conftest import windows_of

CFG = WindowConfig(step=8, seq_len=12, samples_per_traj=3, batch_size=2, wte_size=100)


def test_windows_follow_the_published_semantics(small_store):
    stream = WindowStream(str(small_store), CFG, tasks=['fm-16'], seed=3)
    group = TrajectoryStore(small_store, mode='r').group('fm-16')
    graph = build_graph(group.layout)
    stride = CFG.step // group.spec.record_every  # 2 recorded states per window step
    n_states = group.spec.num_states
    for b in range(3):
        batch = stream.batch(b)
        graphs = windows_of(batch)
        assert len(graphs) == CFG.batch_size * CFG.samples_per_traj
        assert batch.targets().shape == (len(graphs) * graph.num_params, CFG.seq_len)
        for g in graphs:
            _, traj, start, shift = g.window.tolist()
            ind = np.arange(start, n_states, stride)[:CFG.ctx + CFG.seq_len]  # as the reference cuts it
            states = torch.from_numpy(group.read_params(traj, ind[shift:]).T.astype(np.float32))
            x, stats = scale_states(states[:, :CFG.ctx], group.layout, float64=True)
            assert torch.allclose(g.edge_attr, graph.edge_features(x), atol=1e-6)
            assert torch.equal(g.edge_index, graph.edge_index) and torch.equal(g.edge_type, graph.edge_type)
            n_targets = len(ind) - shift - CFG.ctx
            assert 2 * CFG.ctx <= n_targets <= CFG.seq_len and g.y_len == n_targets
            # every parameter is a target, compared with the prediction at its own edge slot
            assert torch.equal(g.y_slot.sort().values, torch.nonzero(graph.param_index.reshape(-1) >= 0).flatten())
            assert torch.equal(graph.param_index.reshape(-1)[g.y_slot], torch.arange(graph.num_params))
            assert not (graph.edge_type.repeat_interleave(graph.max_feat_size)[g.y_slot] >= EdgeType.RESIDUAL).any()
            y_true = apply_scale(states[:, CFG.ctx:], group.layout, stats)
            assert torch.allclose(g.y[:, :n_targets], y_true, atol=1e-5)
            assert not g.y[:, n_targets:].any()


def test_windows_of_one_trajectory_share_the_lpe_signs(small_store):
    stream = WindowStream(str(small_store), CFG, tasks=['fm-16'], seed=0)
    graphs = windows_of(stream.batch(0))
    base = stream._open()['fm-16'].lpe
    def signs(pos):
        return torch.sign((pos * base).sum(0))

    for i in range(0, len(graphs), CFG.samples_per_traj):
        assert torch.equal(graphs[i].pos, base * signs(graphs[i].pos))
        for g in graphs[i:i + CFG.samples_per_traj]:
            assert torch.equal(g.pos, graphs[i].pos)
    flips = {tuple(signs(g.pos).tolist()) for b in range(8) for g in windows_of(stream.batch(b))}
    assert len(flips) > 1


@pytest.mark.parametrize('block', [64, None])
def test_gpt2_windows_sample_word_embedding_rows(small_store, block):
    stream = WindowStream(str(small_store), WindowConfig(step=8, seq_len=10, samples_per_traj=2, batch_size=1,
                                                         wte_size=100, wte_block=block), tasks=['lm-3-24'], seed=0)
    group = TrajectoryStore(small_store, mode='r').group('lm-3-24')
    g = windows_of(stream.batch(0))[0]
    rows = g.pos_w[:100] - 1
    assert bool((rows[1:] > rows[:-1]).all()) and int(rows.max()) < 256 and (g.pos_w[100:] == 0).all()
    blocks = sorted(set((rows // 64).tolist()))
    if block:  # one whole block of 64 rows and the first 36 rows of another
        runs = sorted(int((rows // 64 == b).sum()) for b in blocks)
        assert runs == [36, 64] and all(int(rows[rows // 64 == b].min()) == 64 * b for b in blocks)
    else:  # independent rows, as the paper draws them: 100 of 256 rows fall in every block of 64
        assert blocks == [0, 1, 2, 3]
    _, traj, start, shift = g.window.tolist()
    inputs = group.read_params(traj, start + 2 * np.arange(shift, shift + 5)).astype(np.float64)  # stride 2
    cols = np.concatenate([(rows.numpy()[:, None] * 24 + np.arange(24)).ravel(), np.arange(256 * 24, 29400)])
    sampled = inputs[:, cols]  # the GPT-2 is scaled globally over the sampled parameters, as trained
    expected = (sampled[-1, :100 * 24] - sampled.mean()) / (sampled.std(ddof=1) + 1e-6)
    edge_wte = g.edge_attr[g.edge_type == EdgeType.WORD_EMBEDDING].view(100, 24, 5)[:, :, -1]  # one slot
    assert np.allclose(edge_wte.numpy().ravel(), expected, atol=1e-5)


def test_stream_is_deterministic_across_workers_and_resumable(small_store):
    stream = WindowStream(str(small_store), CFG, seed=11)
    expected = [stream.batch(i) for i in range(4)]  # a local store: reads one after another (the default)
    threaded = WindowStream(str(small_store), CFG, seed=11, read_threads=2)  # a batch's reads on 2 threads
    for i, batch in enumerate(expected):
        assert torch.equal(threaded.batch(i).edge_attr, batch.edge_attr)
    for prefetch in (True, False):  # iterated in this process: the next batch's reads load in the background
        plain = WindowStream(str(small_store), CFG, seed=11, prefetch=prefetch)
        for a, b in zip(expected, window_loader(plain, num_workers=0)):
            assert torch.equal(a.edge_attr, b.edge_attr) and torch.equal(a.targets(), b.targets())
    got = [b for _, b in zip(range(4), window_loader(stream, num_workers=2))]
    for a, b in zip(expected, got):
        assert torch.equal(a.edge_attr, b.edge_attr) and torch.equal(a.targets(), b.targets())
    copied = pickle.loads(pickle.dumps(stream))  # after use: open stores and threads stay behind
    assert torch.equal(copied.batch(1).edge_attr, expected[1].edge_attr)
    resumed = WindowStream(str(small_store), CFG, seed=11, start=2)
    assert torch.equal(next(iter(resumed)).edge_attr, expected[2].edge_attr)
    rank1 = WindowStream(str(small_store), CFG, seed=11, start=1, shard=(1, 2))
    assert torch.equal(next(iter(rank1)).edge_attr, expected[3].edge_attr)


def test_max_start_step_keeps_windows_to_the_start_of_training(small_store):
    def starts(cfg):
        stream = WindowStream(str(small_store), cfg, tasks=['fm-16'], seed=3)
        return {int(s) for i in range(8) for s in stream.batch(i).window[:, 2]}

    assert max(starts(CFG)) >= 2  # states 4 steps apart: a start past step 4
    assert starts(replace(CFG, max_start_step=4)) == {0, 1}  # states 0 and 1: steps 0 and 4
    with pytest.raises(ValueError, match="window field 'max_start_step' must be a step >= 0 or None, got -1"):
        replace(CFG, max_start_step=-1)


def test_bad_window_settings_name_the_task(small_store):
    with pytest.raises(ValueError, match="task 'fm-16': 41 states are too few"):
        WindowStream(str(small_store), WindowConfig(step=40), tasks=['fm-16'])
    with pytest.raises(ValueError, match="task 'fm-16': window step 6 is not a multiple"):
        WindowStream(str(small_store), WindowConfig(step=6), tasks=['fm-16'])


def _v1_copy(small_store, path) -> Path:
    """The small store's data rewritten in the version-1 layout (chunks of consecutive states)."""
    from pipeline.migrate import copy_trajectory
    src = TrajectoryStore(small_store, mode='r')
    dst = TrajectoryStore(path, version=1)
    for name in src.task_names():
        group = src.group(name)
        out = dst.ensure_group(group.spec, group.layout, group.metric_names)
        for i in range(group.spec.trajectories):
            copy_trajectory(group, out, i)
    dst.manifest().upsert(*src.manifest().rows.values())
    return path


def _same_batches(a: WindowStream, b: WindowStream, n: int = 3) -> None:
    for i in range(n):
        x, y = a.batch(i), b.batch(i)
        for f in ('edge_attr', 'edge_index', 'edge_type', 'pos', 'pos_w', 'y_slot', 'y_len', 'window'):
            assert torch.equal(getattr(x, f), getattr(y, f)), f
        assert torch.equal(x.targets(), y.targets())


def test_version_1_and_2_and_migrated_stores_give_the_same_windows(small_store, tmp_path):
    import ray

    from pipeline.migrate import migrate
    v1 = _v1_copy(small_store, tmp_path / 'v1')
    assert TrajectoryStore(v1, mode='r').version == 1
    ray.init(num_cpus=2, include_dashboard=False, logging_level='ERROR', log_to_driver=False)
    try:
        summary = migrate(str(v1), str(tmp_path / 'v2'), progress=False)
        again = migrate(str(v1), str(tmp_path / 'v2'), progress=False)
    finally:
        ray.shutdown()
    assert (summary.done, summary.failed, again.scheduled, again.skipped) == (6, [], 0, 6)
    migrated = TrajectoryStore(tmp_path / 'v2', mode='r')
    assert migrated.version == 2 and migrated.group('fm-16').sharded
    assert migrated.manifest().rows == TrajectoryStore(small_store, mode='r').manifest().rows
    for cfg in (CFG, WindowConfig(step=8, seq_len=10, samples_per_traj=2, batch_size=2, wte_size=100)):
        reference = WindowStream(str(small_store), cfg, seed=5)
        _same_batches(reference, WindowStream(str(v1), cfg, seed=5))
        _same_batches(reference, WindowStream(str(tmp_path / 'v2'), cfg, seed=5))


def test_batches_are_identical_for_0_1_2_workers(small_store):
    stream = WindowStream(str(small_store), CFG, seed=4)
    expected = [stream.batch(i) for i in range(4)]
    for workers in (1, 2):
        got = [b for _, b in zip(range(4), window_loader(stream, num_workers=workers))]
        for a, b in zip(expected, got):
            for f in ('edge_attr', 'states', 'y_mean', 'y_std', 'y_slot', 'y_len', 'pos', 'pos_w', 'window'):
                assert torch.equal(getattr(a, f), getattr(b, f)), (workers, f)


def test_batches_a_consumer_holds_are_never_overwritten_by_a_worker(small_store):
    stream = WindowStream(str(small_store), CFG, seed=4)
    held = [b for _, b in zip(range(20), window_loader(stream, num_workers=1))]  # more than a worker's arenas
    for i, b in enumerate(held):
        expected = stream.batch(i)
        assert torch.equal(b.edge_attr, expected.edge_attr) and torch.equal(b.states, expected.states), i


def test_workers_without_shared_memory_arenas_give_the_same_batches(small_store, monkeypatch):
    from pipeline.arenas import ArenaPool
    monkeypatch.setattr(ArenaPool, 'supported', staticmethod(lambda: False))  # e.g. macOS: no memfd_create
    stream = WindowStream(str(small_store), CFG, seed=4)
    for i, b in zip(range(2), window_loader(stream, num_workers=1)):
        expected = stream.batch(i)
        assert torch.equal(b.edge_attr, expected.edge_attr) and torch.equal(b.states, expected.states), i


def test_only_trajectories_marked_done_are_read(small_store, tmp_path):
    store_path = tmp_path / 'partial'
    shutil.copytree(small_store, store_path)
    store = TrajectoryStore(store_path)
    rows = store.manifest().rows
    store.manifest().upsert({**rows[('fm-16', 1)], 'status': 'failed', 'error': 'killed'})
    group = store.group('fm-16')
    group.write_states(3, 0, np.full((group.chunk_states, group.num_params), np.nan, np.float16))
    m = store.manifest()
    del m.rows[('fm-16', 3)]  # a trajectory being written: no row yet
    m.upsert()
    stream = WindowStream(str(store_path), CFG, tasks=['fm-16'], seed=0)
    assert stream.trajectories == {'fm-16': [0, 2]}
    drawn = {int(w[1]) for b in range(10) for w in stream.batch(b).window}
    assert drawn == {0, 2}
    everything = WindowStream(str(store_path), CFG, tasks=['fm-16'], seed=0, only_done=False)
    assert everything.trajectories == {'fm-16': [0, 1, 2, 3]}
    held = WindowStream(str(store_path), CFG, tasks=['fm-16'], trajectories={'fm-16': [1, 2]})
    assert held.trajectories == {'fm-16': [2]}


def test_a_store_with_nothing_done_is_a_clear_error(small_store, tmp_path):
    store_path = tmp_path / 'none'
    shutil.copytree(small_store, store_path)
    (store_path / 'manifest.parquet').unlink()
    with pytest.raises(ValueError, match="task 'fm-16': no trajectories marked done in the manifest"):
        WindowStream(str(store_path), CFG, tasks=['fm-16'])


def damage(store_path: Path, task: str, trajectory: int, state: int) -> str:
    """Flip bytes in the stored object that holds a state; returns its key."""
    key = TrajectoryStore(store_path, mode='r').group(task).chunk_key(trajectory, state)
    path = store_path / key
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 4, len(data) - 100, 97):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return key


def test_a_damaged_read_is_skipped_and_named(small_store, tmp_path):
    store_path = tmp_path / 'damaged'
    shutil.copytree(small_store, store_path)
    key = damage(store_path, 'fm-16', 2, 20)
    stream = WindowStream(str(store_path), CFG, tasks=['fm-16'], seed=0)
    skipped = []
    for b in range(8):
        batch = stream.batch(b)
        assert batch.num_windows == CFG.batch_size * CFG.samples_per_traj
        assert 2 not in batch.window[:, 1].tolist() and torch.isfinite(batch.targets()).all()
        skipped += batch.skipped
    assert skipped and all(f"task 'fm-16', trajectory 2: chunk {key}" in s for s in skipped)
    again = WindowStream(str(store_path), CFG, tasks=['fm-16'], seed=0)
    assert torch.equal(stream.batch(3).targets(), again.batch(3).targets())
    prefetched = [b for _, b in zip(range(8), again)]  # damaged reads met on the background thread
    assert sum((b.skipped for b in prefetched), []) == skipped
    assert torch.equal(prefetched[3].targets(), again.batch(3).targets())


def test_mixed_batches_pad_narrower_graphs_and_the_nowcaster_reads_either_width(small_store):
    from nino.model import NiNoConfig, build_nowcaster
    stream = WindowStream(str(small_store), CFG, seed=5)
    batch = next(b for b in map(stream.batch, range(20)) if len(set(b.window[:, 0].tolist())) == 2)
    feat = batch.edge_attr.shape[1] // CFG.ctx
    assert feat == 9  # the convnet's 3x3 kernels set the width; the GPT-2 windows are padded
    for w in windows_of(batch):
        graph = stream._open()[stream.task_names[int(w.window[0])]].graph
        grid = w.edge_attr.view(-1, feat, CFG.ctx)
        assert not grid[:, graph.max_feat_size:].any()
        edge, slot = w.y_slot // feat, w.y_slot % feat
        assert torch.equal(graph.param_index[edge, slot], torch.arange(graph.num_params))
    lm = WindowStream(str(small_store), CFG, tasks=['lm-3-24'], seed=5).batch(0)
    assert lm.edge_attr.shape[1] == CFG.ctx  # one value per edge: no padding
    model = build_nowcaster(NiNoConfig(hid=16, layers=2, seq_len=CFG.seq_len)).eval()
    padded = torch.nn.functional.pad(lm.edge_attr, (0, 8 * CFG.ctx))
    with torch.no_grad():
        narrow = model(lm.edge_attr, lm.edge_type, lm.edge_index, lm.pos, lm.pos_w)
        wide = model(padded, lm.edge_type, lm.edge_index, lm.pos, lm.pos_w)[:, :1]
    assert torch.allclose(narrow, wide, atol=1e-6)
