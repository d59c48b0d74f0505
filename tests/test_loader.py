"""Training windows: published semantics, masks, augmentation, word-embedding sampling, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nino.graph import EdgeType, build_graph
from nino.scaling import scale_states
from pipeline.loader import WindowConfig, WindowStream, window_loader
from pipeline.store import TrajectoryStore

CFG = WindowConfig(step=8, seq_len=12, samples_per_traj=3, batch_size=2, wte_size=100)


def _graphs(batch):
    return batch.to_data_list()


def test_windows_follow_the_published_semantics(small_store):
    stream = WindowStream(str(small_store), CFG, tasks=['fm-16'], seed=3)
    group = TrajectoryStore(small_store, mode='r').group('fm-16')
    graph = build_graph(group.layout)
    stride = CFG.step // group.spec.record_every  # 2 recorded states per window step
    n_states = group.spec.num_states
    for b in range(3):
        graphs = _graphs(stream.batch(b))
        assert len(graphs) == CFG.batch_size * CFG.samples_per_traj
        for g in graphs:
            _, traj, start, shift = g.window[0].tolist()
            ind = np.arange(start, n_states, stride)[:CFG.ctx + CFG.seq_len]  # as the reference cuts it
            states = torch.from_numpy(group.read_params(traj, ind[shift:]).T.astype(np.float32))
            x, stats = scale_states(states[:, :CFG.ctx], group.layout)
            assert torch.allclose(g.edge_attr, graph.edge_features(x), atol=1e-6)
            n_targets = len(ind) - shift - CFG.ctx
            assert 2 * CFG.ctx <= n_targets <= CFG.seq_len
            real = (graph.param_index >= 0)  # (E, feat) slots that hold a parameter
            assert torch.equal(g.y_mask[:, :, :n_targets], real.unsqueeze(-1).expand(-1, -1, n_targets))
            assert not g.y_mask[:, :, n_targets:].any()
            assert not g.y_mask[g.edge_type >= EdgeType.RESIDUAL].any()
            n0 = 16 * 9  # the first layer's weights, scaled with the inputs' statistics
            y_true = (states[:n0, CFG.ctx:] - stats[0, 0]) / (stats[0, 1] + 1e-6)
            for t in range(n_targets):
                assert torch.allclose(graph.to_vector(g.y[:, :, t].contiguous())[:n0], y_true[:, t], atol=1e-5)


def test_windows_of_one_trajectory_share_the_lpe_signs(small_store):
    stream = WindowStream(str(small_store), CFG, tasks=['fm-16'], seed=0)
    graphs = _graphs(stream.batch(0))
    base = stream._open()['fm-16'].lpe
    def signs(pos):
        return torch.sign((pos * base).sum(0))

    for i in range(0, len(graphs), CFG.samples_per_traj):
        assert torch.equal(graphs[i].pos, base * signs(graphs[i].pos))
        for g in graphs[i:i + CFG.samples_per_traj]:
            assert torch.equal(g.pos, graphs[i].pos)
    flips = {tuple(signs(g.pos).tolist()) for b in range(8) for g in _graphs(stream.batch(b))}
    assert len(flips) > 1


def test_gpt2_windows_sample_word_embedding_rows(small_store):
    stream = WindowStream(str(small_store), WindowConfig(step=8, seq_len=10, samples_per_traj=2, batch_size=1,
                                                         wte_size=100), tasks=['lm-3-24'], seed=0)
    group = TrajectoryStore(small_store, mode='r').group('lm-3-24')
    g = _graphs(stream.batch(0))[0]
    rows = g.pos_w[:100] - 1
    assert bool((rows[1:] > rows[:-1]).all()) and int(rows.max()) < 256 and (g.pos_w[100:] == 0).all()
    _, traj, start, shift = g.window[0].tolist()
    inputs = group.read_params(traj, start + 2 * np.arange(shift, shift + 5)).astype(np.float64)  # stride 2
    cols = np.concatenate([(rows.numpy()[:, None] * 24 + np.arange(24)).ravel(), np.arange(256 * 24, 29400)])
    sampled = inputs[:, cols]  # the GPT-2 is scaled globally over the sampled parameters, as trained
    expected = (sampled[-1, :100 * 24] - sampled.mean()) / (sampled.std(ddof=1) + 1e-6)
    edge_wte = g.edge_attr[g.edge_type == EdgeType.WORD_EMBEDDING].view(100, 24, 9, 5)[:, :, 0, -1]
    assert np.allclose(edge_wte.numpy().ravel(), expected, atol=1e-5)


def test_stream_is_deterministic_across_workers_and_resumable(small_store):
    stream = WindowStream(str(small_store), CFG, seed=11)
    expected = [stream.batch(i) for i in range(4)]
    got = [b for _, b in zip(range(4), window_loader(stream, num_workers=2))]
    for a, b in zip(expected, got):
        assert torch.equal(a.edge_attr, b.edge_attr) and torch.equal(a.y, b.y)
    resumed = WindowStream(str(small_store), CFG, seed=11, start=2)
    assert torch.equal(next(iter(resumed)).edge_attr, expected[2].edge_attr)
    rank1 = WindowStream(str(small_store), CFG, seed=11, start=1, shard=(1, 2))
    assert torch.equal(next(iter(rank1)).edge_attr, expected[3].edge_attr)


def test_bad_window_settings_name_the_task(small_store):
    with pytest.raises(ValueError, match="task 'fm-16': 41 states are too few"):
        WindowStream(str(small_store), WindowConfig(step=40), tasks=['fm-16'])
    with pytest.raises(ValueError, match="task 'fm-16': window step 6 is not a multiple"):
        WindowStream(str(small_store), WindowConfig(step=6), tasks=['fm-16'])
