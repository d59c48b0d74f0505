"""Predictions of the published checkpoints equal the reference code's, and `nino.compat` says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nino.checkpoint import load_nowcaster
from nino.compat import check_fixture, default_ckpt_dir, main
from nino.graph import build_graph
from nino.scaling import scale_states, unscale_states
from tests.conftest import FIXTURES, OFFICIAL


@pytest.mark.parametrize('tag', ['gnn', 'mlp'])
def test_predictions_equal_reference_for_every_k(fixture, official_dir, tag):
    meta, a = fixture
    model = load_nowcaster(official_dir / meta['nino_ckpts'][tag])
    g = build_graph(meta['params'], **meta['graph_kwargs'])
    scaled, stats = scale_states(torch.from_numpy(a['states']), g.params)
    feats = g.edge_features(scaled)
    for k in meta['ks']:
        with torch.no_grad():
            pred = model(feats, g.edge_type, g.edge_index, torch.from_numpy(a['lpe']), g.pos_w, k=k)
        x = unscale_states(g.to_vector(pred), g.params, stats).numpy()
        np.testing.assert_allclose(x, a[f'pred_{tag}_k{k}'], atol=1e-4, rtol=0, err_msg=f'k={k}')


def _fm16_inputs(official_dir):
    """(graph, scaled edge features, LPE, nino_no_posw) of the first fixture."""
    data = np.load(FIXTURES[0])
    meta = json.loads(bytes(data['meta_json']))
    g = build_graph(meta['params'], **meta['graph_kwargs'])
    feats = g.edge_features(scale_states(torch.from_numpy(data['states']), g.params)[0])
    return g, feats, torch.from_numpy(data['lpe']), load_nowcaster(official_dir / 'nino_no_posw.pt')


def test_chunked_inference_equals_unchunked(official_dir):
    g, feats, lpe, model = _fm16_inputs(official_dir)
    with torch.no_grad():
        model.config.chunk_size = 0
        whole = model(feats, g.edge_type, g.edge_index, lpe, k=7)
        model.config.chunk_size = 333
        chunked = model(feats, g.edge_type, g.edge_index, lpe, k=7)
        all_k = model(feats, g.edge_type, g.edge_index, lpe)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(all_k[:, :, 6], whole, atol=1e-5, rtol=0)


def test_compat_command_passes_on_every_fixture(capsys):
    assert main([str(p) for p in FIXTURES]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith('parity: ok')
    assert out.count('pred nino_no_posw.pt k=40') == len(FIXTURES)


def test_compat_command_fails_on_a_wrong_prediction(tmp_path, capsys):
    data = dict(np.load(FIXTURES[0]))
    data['pred_mlp_k10'] = data['pred_mlp_k10'] + np.float32(2e-4)
    bad = tmp_path / 'bad.npz'
    np.savez(bad, **data)
    assert main([str(bad), '--ckpt-dir', str(OFFICIAL)]) == 1
    out = capsys.readouterr().out
    assert 'pred nino_mlp.pt k=10' in out and 'FAIL' in out and 'parity: FAIL' in out


def test_compat_reports_a_graph_mismatch(tmp_path):
    data = dict(np.load(FIXTURES[0]))
    data['edge_type'] = data['edge_type'].copy()
    data['edge_type'][0] += 1
    bad = tmp_path / 'bad.npz'
    np.savez(bad, **data)
    rows = check_fixture(bad, OFFICIAL)
    assert [r.what for r in rows if not r.ok] == ['edge_type']


def test_default_ckpt_dir_follows_shared_layout():
    assert default_ckpt_dir(FIXTURES[0]) == OFFICIAL.resolve()


def test_streamed_inference_samples_the_same_edges_as_whole_inference(official_dir):
    """Chunked inference streams edge features (never stored for all edges); with edge sampling it
    draws the same random edges as unchunked inference from the same seed."""
    g, feats, lpe, model = _fm16_inputs(official_dir)
    out = {}
    with torch.no_grad():
        for chunk in (0, 333):
            model.config.chunk_size = chunk
            torch.manual_seed(5)
            out[chunk] = model(feats, g.edge_type, g.edge_index, lpe, k=3, edge_sample_ratio=0.3)
        full = model(feats, g.edge_type, g.edge_index, lpe, k=3)
    torch.testing.assert_close(out[333], out[0], atol=1e-5, rtol=0)
    assert not torch.allclose(out[333], full, atol=1e-3)
    with pytest.raises(ValueError, match='inference'):
        model(feats, g.edge_type, g.edge_index, lpe, k=3, edge_sample_ratio=0.3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU: the nowcaster there, the edges on the CPU')
@pytest.mark.parametrize('name', ['nino_no_posw.pt', 'nino_mlp.pt'])
def test_edges_kept_on_the_cpu_while_the_nowcaster_runs_on_the_gpu(official_dir, name):
    g, feats, lpe, _ = _fm16_inputs(official_dir)
    model = load_nowcaster(official_dir / name)
    with torch.no_grad():
        model.config.chunk_size = 0
        expected = model(feats, g.edge_type, g.edge_index, lpe, g.pos_w, k=7)
        model.cuda()
        for chunk in (0, 333):  # all edges moved at once, or one chunk at a time
            model.config.chunk_size = chunk
            got = model(feats, g.edge_type, g.edge_index, lpe, g.pos_w, k=7)
            assert got.device.type == 'cpu'
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
