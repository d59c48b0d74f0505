"""Neural graphs equal the reference code's, map parameters both ways, and reject what they cannot hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from nino.graph import EdgeType, UnsupportedLayerError, build_graph, graph_for_module, laplacian_pe
from nino.scaling import scale_states, unscale_states
from tests.conftest import FIXTURES


def test_fixtures_are_present():
    assert len(FIXTURES) >= 3


def test_graph_equals_reference(fixture):
    meta, a = fixture
    g = build_graph(meta['params'], **meta['graph_kwargs'])
    assert torch.equal(g.edge_index, torch.from_numpy(a['edge_index']))
    assert torch.equal(g.edge_type, torch.from_numpy(a['edge_type']))
    assert torch.equal(g.pos_w, torch.from_numpy(a['pos_w']))
    assert g.max_feat_size == meta['max_feat_size']
    assert g.num_nodes == len(a['lpe'])


def test_scaled_edge_features_equal_reference(fixture):
    meta, a = fixture
    g = build_graph(meta['params'], **meta['graph_kwargs'])
    scaled, _ = scale_states(torch.from_numpy(a['states']), g.params)
    feats = g.edge_features(scaled).numpy()
    np.testing.assert_allclose(feats, a['edge_attr_gnn'], atol=1e-5, rtol=0)
    np.testing.assert_allclose(feats, a['edge_attr_mlp'], atol=1e-5, rtol=0)


def test_edge_features_round_trip_to_vector(fixture):
    meta, a = fixture
    g = build_graph(meta['params'], **meta['graph_kwargs'])
    states = torch.from_numpy(a['states'])
    feats = g.edge_features(states).view(g.num_edges, g.max_feat_size, -1)
    for t in range(states.shape[1]):
        assert torch.equal(g.to_vector(feats[:, :, t].contiguous()), states[:, t])
    self_loops = g.edge_type == EdgeType.SELF_LOOP
    assert (feats[self_loops, 0] == 2).all() and (feats[self_loops, 1:] == 0).all()


def test_gpt2_module_graph_equals_reference_fixture():
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import SHARED, load_fixture
    meta, a = load_fixture(SHARED / 'fixtures' / 'official' / 'gpt2_3_24_bytes.npz')
    model = GPT2LMHeadModel(GPT2Config(n_embd=24, n_layer=3, n_head=3, vocab_size=256, n_positions=64))
    assert [[n, list(p.shape)] for n, p in model.named_parameters()] == meta['params']
    g = graph_for_module(model)
    assert torch.equal(g.edge_index, torch.from_numpy(a['edge_index']))
    assert g.num_params == sum(p.numel() for p in model.parameters())


def test_gpt2_model_without_lm_head_prefix():
    from transformers import GPT2Config, GPT2Model
    model = GPT2Model(GPT2Config(n_embd=8, n_layer=2, n_head=2, vocab_size=20, n_positions=6))
    g = graph_for_module(model)
    assert g.num_params == sum(p.numel() for p in model.parameters())
    assert (g.pos_w[:20] == torch.arange(1, 21)).all() and (g.pos_w[20:] == 0).all()


def test_batchnorm_convnet_graph_covers_every_parameter():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    g = graph_for_module(model)
    # inputs 3, bn weight+bias nodes 2, 8 neurons, conv bias 1, 4 neurons, linear bias 1, 2 outputs
    assert g.num_nodes == 3 + 2 + 8 + 1 + 4 + 1 + 2
    flat = torch.randn(g.num_params)
    assert torch.equal(g.to_vector(g.edge_features(flat).view(g.num_edges, -1)), flat)
    assert set(g.edge_type.tolist()) == {EdgeType.CONV, EdgeType.NORM, EdgeType.BIAS, EdgeType.LINEAR,
                                         EdgeType.SELF_LOOP}


@pytest.mark.parametrize('params, name', [
    ([('net.0.weight', (4, 3)), ('net.1.weight', (4, 3, 3))], 'net.1.weight'),
    ([('a.weight', (4, 3)), ('b.weight', (2, 5))], 'b.weight'),
    ([('a.weight', (4, 3)), ('a.bias', (5,))], 'a.bias'),
    ([('a.bias', (4,))], 'a.bias'),
    ([('transformer.h.0.attn.c_attn.weight', (8, 24)), ('score.weight', (2, 8))], 'score.weight'),
])
def test_unsupported_layers_are_named(params, name):
    with pytest.raises(UnsupportedLayerError, match=name.replace('.', r'\.')):
        build_graph(params, num_heads=2)


def test_gpt2_needs_num_heads():
    with pytest.raises(ValueError, match='num_heads'):
        build_graph([('transformer.h.0.attn.c_attn.weight', (8, 24))])


def test_scaling_standardises_each_layer_and_inverts():
    params = [('a.weight', (30, 4)), ('a.bias', (30,))]
    states = torch.randn(150, 5) * 3 + 1
    scaled, stats = scale_states(states, params)
    for part in scaled.split([120, 30]):
        assert abs(part.mean().item()) < 1e-5 and abs(part.std().item() - 1) < 1e-4
    assert torch.allclose(unscale_states(scaled, params, stats), states, atol=1e-5)
    with pytest.raises(ValueError, match='151'):
        scale_states(torch.randn(151, 5), params)


def _rayleigh(edge_index: torch.Tensor, n: int, vecs: torch.Tensor) -> np.ndarray:
    from torch_geometric.utils import get_laplacian, to_dense_adj, to_undirected
    ei, w = get_laplacian(to_undirected(edge_index, num_nodes=n), normalization='sym', num_nodes=n)
    lap = to_dense_adj(ei, edge_attr=w, max_num_nodes=n)[0].double()
    v = vecs.double()
    return ((v * (lap @ v)).sum(0) / (v * v).sum(0)).numpy()


@pytest.mark.parametrize('stem', ['fm16_convnet', 'fm_mlp_32'])
def test_lpe_spans_the_reference_eigenvalues_and_is_deterministic(stem):
    from tests.conftest import SHARED, load_fixture
    meta, a = load_fixture(SHARED / 'fixtures' / 'official' / f'{stem}.npz')
    g = build_graph(meta['params'])
    lpe = laplacian_pe(g.edge_index, g.num_nodes, k=8)
    assert lpe.shape == a['lpe'].shape
    assert torch.equal(lpe, laplacian_pe(g.edge_index, g.num_nodes, k=8))
    ours = _rayleigh(g.edge_index, g.num_nodes, lpe)
    ref = _rayleigh(g.edge_index, g.num_nodes, torch.from_numpy(a['lpe']))
    np.testing.assert_allclose(np.sort(ours), np.sort(ref), atol=1e-4)
    top = lpe.abs().argmax(0)
    assert (lpe[top, torch.arange(8)] > 0).all()


def test_an_embedding_outside_gpt2_is_refused_by_name():
    model = torch.nn.Sequential(torch.nn.Embedding(100, 16), torch.nn.Linear(16, 4))
    with pytest.raises(UnsupportedLayerError, match=r"parameter '0.weight' is an nn.Embedding"):
        graph_for_module(model)
    with pytest.raises(UnsupportedLayerError, match=r"parameter 'weight' is an nn.Embedding"):
        graph_for_module(torch.nn.Embedding(10, 4))


def test_laplacian_equals_torch_geometric_values():
    from torch_geometric.utils import get_laplacian, to_dense_adj, to_undirected

    from nino.graph.lpe import normalized_laplacian
    meta = json.loads(bytes(np.load(FIXTURES[0])['meta_json']))
    g = build_graph(meta['params'], **meta['graph_kwargs'])
    ei, w = get_laplacian(to_undirected(g.edge_index, num_nodes=g.num_nodes), normalization='sym',
                          num_nodes=g.num_nodes)
    ref = to_dense_adj(ei, edge_attr=w.double(), max_num_nodes=g.num_nodes)[0].numpy()
    assert np.array_equal(normalized_laplacian(g.edge_index, g.num_nodes).toarray(), ref)


def test_lpe_is_the_same_whatever_the_process_blas_threads():
    """A 40-64-64-10 MLP's graph has repeated eigenvalues, whose eigenvectors a multi-threaded BLAS picks
    differently: the encoding must not depend on how many threads the process started with."""
    script = ('import hashlib; from nino.graph import build_graph, laplacian_pe; '
              "g = build_graph([['0.weight', [64, 40]], ['0.bias', [64]], ['2.weight', [64, 64]], "
              "['2.bias', [64]], ['4.weight', [10, 64]], ['4.bias', [10]]]); "
              'print(hashlib.sha256(laplacian_pe(g.edge_index, g.num_nodes, 8).numpy().tobytes()).hexdigest())')
    digests = {subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, check=True,
                              env=dict(os.environ, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)).stdout
               for n in ('1', '2')}
    assert len(digests) == 1
