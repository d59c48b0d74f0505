"""Transformer families beyond GPT-2: graphs built from transformers models, detection, errors.

Equality with the reference code on Llama (GQA), BERT and modded-nanogpt is asserted on the shared
fixtures by `tests/test_graph.py` and `tests/test_parity.py`; here the graphs are built from real
models, as `nino.NiNo` builds them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from nino.checkpoint import load_nowcaster
from nino.graph import (
    BertFamily,
    EdgeType,
    LlamaFamily,
    NanoGPTFamily,
    Qwen3Family,
    UnsupportedLayerError,
    ViTFamily,
    build_graph,
    family_of,
    graph_for_module,
    laplacian_pe,
)
from nino.scaling import scale_states, unscale_states
from tests.conftest import SHARED, load_fixture

TRANSFORMERS = SHARED / 'fixtures' / 'transformers'


def _llama(**kw) -> transformers.LlamaForCausalLM:
    cfg = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=6,
               num_key_value_heads=2, vocab_size=256)
    cfg.update(kw)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))


def _round_trip_and_predict(model: torch.nn.Module, official_dir) -> None:
    g = graph_for_module(model)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    states = torch.stack([flat + 0.01 * t * torch.randn_like(flat) for t in range(5)], dim=1)
    feats = g.edge_features(states).view(g.num_edges, g.max_feat_size, 5)
    assert torch.equal(g.to_vector(feats[:, :, 4].contiguous()), states[:, 4])
    nowcaster = load_nowcaster(official_dir / 'nino_no_posw.pt')
    scaled, stats = scale_states(states, g.params)
    with torch.no_grad():
        pred = nowcaster(g.edge_features(scaled), g.edge_type, g.edge_index,
                         laplacian_pe(g.edge_index, g.num_nodes), g.pos_w, k=10)
    x = unscale_states(g.to_vector(pred), g.params, stats)
    assert x.shape == flat.shape and bool(torch.isfinite(x).all())


def test_llama_module_graph_equals_reference_fixture():
    meta, a = load_fixture(TRANSFORMERS / 'llama_2_24_gqa_bytes.npz')
    model = _llama()
    assert [[n, list(p.shape)] for n, p in model.named_parameters()] == meta['params']
    g = graph_for_module(model)  # family from config.model_type, 6 heads / 2 key-value heads from the config
    assert torch.equal(g.edge_index, torch.from_numpy(a['edge_index']))
    assert torch.equal(g.edge_type, torch.from_numpy(a['edge_type']))


def test_bert_module_graph_equals_reference_fixture():
    meta, a = load_fixture(TRANSFORMERS / 'bert_2_24_bytes.npz')
    cfg = transformers.BertConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=3,
                                  vocab_size=256, max_position_embeddings=64, is_decoder=True)
    model = transformers.BertLMHeadModel(cfg)
    assert [[n, list(p.shape)] for n, p in model.named_parameters()] == meta['params']
    g = graph_for_module(model)
    assert torch.equal(g.edge_index, torch.from_numpy(a['edge_index']))
    # the LM head's output bias (one value per vocabulary row): edges from the 256 row nodes into one node
    start = sum(int(np.prod(shape)) for _, shape in meta['params'][:-5])
    src, dst = g.edge_index[:, (g.param_index[:, 0] >= start) & (g.param_index[:, 0] < start + 256)]
    assert torch.equal(src, torch.arange(256)) and len(set(dst.tolist())) == 1 and g.pos_w[dst[0]] == 0


# Node and edge counts of the reference code's graphs for the same models (computed side by side
# with the paper's `graph/graph_qwen.py` on 2026-11-29; edges, types and features were equal).
@pytest.mark.parametrize('heads,kv_heads,head_dim,nodes,edges', [(6, 2, None, 2457, 113569), (4, 2, 8, 501, 15485)])
def test_qwen3_graph_counts_and_round_trip(official_dir, heads, kv_heads, head_dim, nodes, edges):
    cfg = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=heads,
               num_key_value_heads=kv_heads, vocab_size=64)
    if head_dim:
        cfg['head_dim'] = head_dim
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**cfg))
    g = graph_for_module(model)
    assert (g.num_nodes, g.num_edges) == (nodes, edges)
    norms = [n for n, _ in g.params if n.endswith(('q_norm.weight', 'k_norm.weight'))]
    assert len(norms) == 4
    _round_trip_and_predict(model, official_dir)


def test_llama_without_gqa_and_tied_head_round_trips(official_dir):
    model = _llama(num_key_value_heads=6, tie_word_embeddings=True, vocab_size=64)
    g = graph_for_module(model)
    assert (g.edge_type == EdgeType.ATTN_HEAD).sum() == 2 * (6 + 6) * 4  # q and v heads of 4 neurons each
    _round_trip_and_predict(model, official_dir)


def test_families_are_recognised_from_names_and_model_type():
    meta, _ = load_fixture(TRANSFORMERS / 'nanogpt_2_16.npz')
    assert family_of(meta['params']) is NanoGPTFamily
    llama = [(n, tuple(p.shape)) for n, p in _llama().named_parameters()]
    assert family_of(llama) is LlamaFamily
    assert family_of(llama, 'qwen3') is Qwen3Family
    assert family_of([('bert.encoder.layer.0.attention.self.query.weight', (4, 4))]) is BertFamily
    assert family_of([('0.weight', (4, 4))]) is None
    vit = [(n, tuple(p.shape)) for n, p in _vit(4).named_parameters()]
    assert family_of(vit) is family_of([], 'vit') is ViTFamily


def test_transformer_errors_name_what_is_wrong():
    llama = [(n, tuple(p.shape)) for n, p in _llama().named_parameters()]
    with pytest.raises(ValueError, match='Llama.*num_heads'):
        build_graph(llama)
    with pytest.raises(ValueError, match=r'num_heads \(6\) is not a multiple of num_key_value_heads \(4\)'):
        build_graph(llama, num_heads=6, num_key_value_heads=4)
    with pytest.raises(UnsupportedLayerError, match="'model.layers.0.self_attn.q_proj.weight': 24 features"):
        build_graph(llama, num_heads=5, num_key_value_heads=1)
    meta, _ = load_fixture(TRANSFORMERS / 'nanogpt_2_16.npz')
    with pytest.raises(UnsupportedLayerError, match="'blocks.0.attn.c_proj.bias'"):
        build_graph(meta['params'] + [['blocks.0.attn.c_proj.bias', [16]]], num_heads=2)


def test_nino_wrapper_nowcasts_a_llama(official_dir):
    import nino

    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    runs = []
    for ckpt in (None, official_dir / 'nino_no_posw.pt'):
        model = _llama(vocab_size=64)
        opt = nino.NiNo(torch.optim.AdamW(model.parameters(), lr=2e-3), model, ckpt=ckpt, period=10,
                        max_train_steps=40)
        for _ in range(10):
            opt.zero_grad()
            model(input_ids=tokens, labels=tokens).loss.backward()
            opt.step()
        runs.append((opt.num_nowcasts, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (n_adam, adam), (n_nino, nowcast) = runs
    assert (n_adam, n_nino) == (0, 1) and bool(torch.isfinite(nowcast).all())
    assert float((nowcast - adam).abs().max()) > 2 * 2e-3  # the nowcast moved weights by more than two Adam steps


def test_subgraph_fixture_equals_reference(official_dir):
    from nino.compat import check_fixture

    rows = check_fixture(TRANSFORMERS / 'gpt2_3_24_subgraph.npz', official_dir)
    assert [r.what for r in rows] == ['blocks'] + [f'pred nino_no_posw.pt k={k}' for k in (1, 10, 40)]
    assert all(r.ok for r in rows), rows


def test_subgraphs_cover_the_model_and_bound_the_graph_size():
    from nino.nowcast import ModelGraphs

    model = _llama(num_hidden_layers=3, vocab_size=64)
    whole = ModelGraphs.for_module(model)
    parts = ModelGraphs.for_module(model, subgraph=True)
    names = [[n for n, _ in p.params] for p in parts.parts]
    assert len(names) == 3 and names[0][0] == 'model.embed_tokens.weight' and names[-1][-2:] == ['model.norm.weight',
                                                                                                   'lm_head.weight']
    assert sum(names, []) == [n for n, _ in model.named_parameters()]
    assert [p.start for p in parts.parts[1:]] == [p.stop for p in parts.parts[:-1]]
    assert parts.num_params == whole.num_params
    assert max(parts.graph(i).num_edges for i in range(3)) < whole.graph(0).num_edges / 2
    with pytest.raises(ValueError, match='not one of the known transformer families'):
        ModelGraphs.for_module(torch.nn.Sequential(torch.nn.Linear(3, 4)), subgraph=True)


def test_graphs_of_large_models_are_built_per_nowcast_and_dropped(official_dir):
    """Dropping each block's graph after use (the default above 20M parameters) changes nothing but memory."""
    from nino.checkpoint import load_nowcaster
    from nino.nowcast import ModelGraphs

    model = _llama(num_hidden_layers=3, vocab_size=64)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    states = torch.stack([flat + 0.01 * t * torch.randn_like(flat) for t in range(5)], dim=1)
    nowcaster = load_nowcaster(official_dir / 'nino_no_posw.pt')
    preds = []
    for keep in (True, False):
        graphs = ModelGraphs.for_module(model, subgraph=True, keep_graphs=keep)
        graphs.set_lpe(None, 8)
        preds.append(graphs.predict(nowcaster, states, k=5))
        assert all((p.graph is not None) == keep and p.lpe is not None and p.num_edges > 0 for p in graphs.parts)
    assert torch.equal(preds[0], preds[1])


def test_edge_sampling_passes_messages_over_a_random_subset_of_edges():
    from nino.gnn import EdgeModulatedConv, Edges

    torch.manual_seed(0)
    conv = EdgeModulatedConv(8)
    h, x = torch.randn(30, 8), torch.randn(200, 5)
    edge_index = torch.randint(0, 30, (2, 200))
    w, b = torch.randn(8, 5), torch.randn(8)
    with torch.no_grad():
        torch.manual_seed(1)
        keep = torch.randperm(200)[:50]
        expected = conv(h, edge_index[:, keep], Edges(x[keep], w, b))
        torch.manual_seed(1)
        sampled = conv(h, edge_index, Edges(x, w, b), sample_ratio=0.25)
        full = conv(h, edge_index, Edges(x, w, b))
    torch.testing.assert_close(sampled, expected)
    assert not torch.allclose(sampled, full)


def test_nino_wrapper_subgraph_edge_sampling_and_bf16(official_dir):
    import nino

    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    results = {}
    for name, kw in {'whole': {}, 'subgraph': {'subgraph': True}, 'sampled': {'subgraph': True,
                                                                            'edge_sample_ratio': 0.05},
                     'bf16': {'amp': True}}.items():
        model = _llama(num_hidden_layers=3, vocab_size=64)
        opt = nino.NiNo(torch.optim.AdamW(model.parameters(), lr=2e-3), model, ckpt=official_dir / 'nino_no_posw.pt',
                        period=10, max_train_steps=40, **kw)
        torch.manual_seed(0)
        for _ in range(10):
            opt.zero_grad()
            model(input_ids=tokens, labels=tokens).loss.backward()
            opt.step()
        assert opt.num_nowcasts == 1, name
        results[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    for name, x in results.items():
        assert bool(torch.isfinite(x).all()), name
    whole = results['whole']
    change = float((whole - results['subgraph']).abs().max())
    assert 0 < change < 0.1  # each block sees only its own graph: close to, not equal to, the whole-model nowcast
    assert not torch.equal(results['sampled'], results['subgraph'])
    assert float((results['bf16'] - whole).abs().max()) < 0.01


def _vit(patch: int, hidden: int = 12, heads: int = 2) -> transformers.ViTForImageClassification:
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=heads,
        image_size=8 if patch != 3 else 9, patch_size=patch, num_channels=3, num_labels=5))


# Node and edge counts of the reference code's graphs (`graph/graph_vit.py`) for the torchvision ViT
# holding the same weights, computed side by side on 2026-11-29 (edges, types and features were equal).
@pytest.mark.parametrize('patch,hidden,heads,nodes,edges', [(4, 12, 2, 198, 3071), (3, 12, 3, 205, 3138),
                                                            (2, 16, 4, 266, 5311)])
def test_vit_graph_counts_and_patch_features(patch, hidden, heads, nodes, edges):
    model = _vit(patch, hidden, heads)
    g = graph_for_module(model)
    assert (g.num_nodes, g.num_edges, g.max_feat_size) == (nodes, edges, patch * patch)
    # the patch convolution: one edge per (input channel, feature), its kernel in the edge's slots
    conv = g.edge_type == EdgeType.CONV
    assert int(conv.sum()) == 3 * hidden
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    feats = g.edge_features(flat.unsqueeze(1))
    kernel = model.vit.embeddings.patch_embeddings.projection.weight.detach()
    torch.testing.assert_close(feats[conv][0], kernel[0, 0].flatten())  # channel 0 -> feature 0
    assert torch.equal(g.to_vector(feats), flat)


def test_vit_nowcasts_with_the_mlp_and_names_a_patch_too_large_for_the_gnn(official_dir):
    import nino

    model = _vit(4)
    with pytest.raises(UnsupportedLayerError, match="'vit.embeddings.patch_embeddings.projection.weight' has a 4x4"):
        nino.NiNo(torch.optim.AdamW(model.parameters()), model, ckpt=official_dir / 'nino_no_posw.pt')
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 5
    for ckpt, m in ((official_dir / 'nino_mlp.pt', model), (official_dir / 'nino_no_posw.pt', _vit(3))):
        x_m = x if m is model else torch.randn(8, 3, 9, 9, generator=torch.Generator().manual_seed(0))
        opt = nino.NiNo(torch.optim.AdamW(m.parameters(), lr=1e-3), m, ckpt=ckpt, period=5, max_train_steps=20)
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(pixel_values=x_m).logits, y).backward()
            opt.step()
        assert opt.num_nowcasts == 1 and all(bool(torch.isfinite(p).all()) for p in m.parameters())


def test_vit_names_of_transformers_before_5_give_the_same_graph():
    new = [(n, tuple(p.shape)) for n, p in _vit(4).named_parameters()]
    renames = {'attention.q_proj': 'attention.attention.query', 'attention.k_proj': 'attention.attention.key',
               'attention.v_proj': 'attention.attention.value', 'attention.o_proj': 'attention.output.dense',
               'mlp.fc1': 'intermediate.dense', 'mlp.fc2': 'output.dense', 'vit.layers.': 'vit.encoder.layer.'}
    old = []
    for name, shape in new:
        for a, b in renames.items():
            name = name.replace(a, b)
        old.append((name, shape))
    g_new, g_old = build_graph(new, num_heads=2), build_graph(old, num_heads=2)
    assert torch.equal(g_new.edge_index, g_old.edge_index) and torch.equal(g_new.param_index, g_old.param_index)
