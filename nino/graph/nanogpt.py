"""Neural graphs of modded-nanogpt's `GPT` (the speedrun model the paper's code also supports).

Its parameters: `embed.weight`, `value_embeds.{i}.weight` (embeddings added to the values of some
blocks), `skip_weights` (U-net style skip gains), per-block `lambdas` and `attn.lambdas`, a fused
`attn.qkv_w` of shape (3, out, in), bias-free `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj` and an
untied `lm_head`. As in the reference, value embeddings are word embeddings that feed the same
neurons as `embed`, the scalar gains are norm-like nodes placed next to the neurons they scale,
and a residual identity follows `mlp.c_fc.weight`.
"""

from __future__ import annotations

from torch import Tensor

from .neural_graph import UnsupportedLayerError
from .transformer import EdgeDict, Entry, SameNeurons, TransformerFamily


class NanoGPTFamily(TransformerFamily):
    """modded-nanogpt `GPT`: fused (3, out, in) `attn.qkv_w`, value embeddings, scalar gains."""

    title = 'nanoGPT'
    marker = 'attn.qkv_w'
    block_pattern = r'(?:^|\.)blocks\.(\d+)\.'
    word_embedding = ('embed.weight', 'value_embeds.weight')
    q_weight, k_weight, v_weight = 'attn.qkv_w.q.weight', 'attn.qkv_w.k.weight', 'attn.qkv_w.v.weight'

    def expand(self, params: list[tuple[str, tuple[int, ...]]], index: dict[str, Tensor]) -> list[Entry]:
        self._value_embeds = 0
        self._embed_rows = self._skips = 0
        entries: list[Entry] = []
        for name, shape in params:
            if name.endswith('attn.qkv_w'):
                if len(shape) != 3 or shape[0] != 3:
                    raise UnsupportedLayerError(f"parameter '{name}' has shape {tuple(shape)}, expected (3, out, in)")
                qkv = index[name]
                for j, part in enumerate('qkv'):
                    weight = Entry(f'{name}.{part}.weight', shape[1:], qkv[j])
                    entries.append(weight)
                    if part in 'qv':
                        entries += self._heads(weight, self.num_heads)
                    if part == 'v':
                        entries.append(self._residual(weight.name, weight.shape, weight.name))
                continue
            if name.endswith('.bias'):
                raise UnsupportedLayerError(f"parameter '{name}': the nanoGPT neural graph has no biases")
            graph_name = name
            if '.value_embeds.' in f'.{name}':
                parts = name.split('.')  # value_embeds.0.weight -> 0.value_embeds.weight
                graph_name = '.'.join([parts[-2]] + parts[:-2] + parts[-1:])
                self._value_embeds += 1
            elif name.endswith(('skip_weights', 'lambdas')):
                graph_name = name + '.weight'
            if graph_name.endswith('skip_weights.weight'):
                self._skips = shape[0]
            elif graph_name == 'embed.weight' or graph_name.endswith('.embed.weight'):
                self._embed_rows = shape[0]
            entries.append(Entry(graph_name, shape, index[name]))
            if name.endswith('mlp.c_fc.weight'):
                entries.append(self._residual(name, shape, name))
        self._first_dim = next((shape[-1] for _, shape in params if len(shape) >= 2), 0)
        return entries

    def move_offset(self, name: str, col: int, row: int, n_out: int, n_in: int) -> tuple[int, int]:
        if name.endswith('skip_weights.weight'):
            col += self._embed_rows * (self._value_embeds + 1) + 1
        elif name.endswith('lambdas.weight'):
            if 'attn.' in name or self._embed_rows:
                col -= 1
            else:
                col += self._first_dim - 2
        elif name.endswith('attn.c_proj.weight'):
            col += 2
        elif name.endswith(self.word_embedding[0]):
            col -= self._skips
        elif name.endswith(self.word_embedding[1]):
            col -= n_out  # value embeddings feed the same neurons as `embed`
        return col, row

    def correct_offsets(self, edges: EdgeDict, same: SameNeurons) -> None:
        value_res = self.v_weight[:-len('weight')] + 'res'
        moves = []
        for start, group in same.items():
            for item in group:
                if f'{item[1]}.{item[2]}'.endswith(value_res):
                    edges[item[1]][item[2]][1] += 1  # past the attention lambdas
                    moves.append((start, item))
        for start, item in moves:
            same[start].remove(item)
            same.setdefault(start + 1, []).append(item)
