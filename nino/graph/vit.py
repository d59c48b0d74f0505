"""Neural graphs of vision transformers (`transformers.ViTModel` / `ViTForImageClassification`).

The paper's code builds ViT graphs for torchvision's `VisionTransformer`; this module walks a
transformers ViT in that model's order and under its names (class token, patch convolution,
position embedding, then per block ln_1, q/k/v with per-head edges, out_proj, ln_2, the MLP with
a residual after its first bias; final norm; head), so the graph is the reference's graph of the
equivalent torchvision model (checked side by side). The class token is a word embedding of one
row, the position embedding feeds the same neurons, and the patch convolution is one edge per
(input channel, output feature) whose features are its p x p kernel: a patch larger than 3x3
needs a nowcaster with that many slots (the per-parameter MLP nowcaster takes any size).
Both transformers naming schemes are read (`encoder.layer.N.attention.attention.query` before
transformers 5, `layers.N.attention.q_proj` since).
"""

from __future__ import annotations

import re

from torch import Tensor

from .neural_graph import UnsupportedLayerError
from .transformer import EdgeDict, Entry, SameNeurons, TransformerFamily

# role -> the transformers suffixes that fill it (new name, old name)
_BLOCK_ROLES = {
    'ln_1.weight': ('layernorm_before.weight',), 'ln_1.bias': ('layernorm_before.bias',),
    'q.weight': ('attention.q_proj.weight', 'attention.attention.query.weight'),
    'q.bias': ('attention.q_proj.bias', 'attention.attention.query.bias'),
    'k.weight': ('attention.k_proj.weight', 'attention.attention.key.weight'),
    'k.bias': ('attention.k_proj.bias', 'attention.attention.key.bias'),
    'v.weight': ('attention.v_proj.weight', 'attention.attention.value.weight'),
    'v.bias': ('attention.v_proj.bias', 'attention.attention.value.bias'),
    'out_proj.weight': ('attention.o_proj.weight', 'attention.output.dense.weight'),
    'out_proj.bias': ('attention.o_proj.bias', 'attention.output.dense.bias'),
    'ln_2.weight': ('layernorm_after.weight',), 'ln_2.bias': ('layernorm_after.bias',),
    'mlp.0.weight': ('mlp.fc1.weight', 'intermediate.dense.weight'),
    'mlp.0.bias': ('mlp.fc1.bias', 'intermediate.dense.bias'),
    'mlp.3.weight': ('mlp.fc2.weight', 'output.dense.weight'), 'mlp.3.bias': ('mlp.fc2.bias', 'output.dense.bias'),
}
_BLOCK = re.compile(r'(?:^|\.)(?:layers|layer)\.(\d+)\.(.+)$')


class ViTFamily(TransformerFamily):
    """transformers ViT, walked as the paper's torchvision ViT graph."""

    title = 'ViT'
    marker = 'embeddings.patch_embeddings.projection.weight'
    model_types = ('vit',)
    block_pattern = r'(?:^|\.)(?:layers|layer)\.(\d+)\.'
    word_embedding = ('class_token.weight',)
    position_embedding = ('pos_embedding.weight',)
    q_weight = 'self_attention.in_proj_q.weight'
    k_weight = 'self_attention.in_proj_k.weight'
    v_weight = 'self_attention.in_proj_v.weight'

    def expand(self, params: list[tuple[str, tuple[int, ...]]], index: dict[str, Tensor]) -> list[Entry]:
        top, blocks = self._roles(params)
        entries: list[Entry] = []

        d = dict(params)

        def add(graph_name: str, role: str, where: dict[str, str], shape: tuple[int, ...] | None = None) -> None:
            if role in where:
                name = where[role]
                entries.append(Entry(graph_name, shape or d[name], index[name].reshape(shape or d[name])))

        if 'cls' in top:
            add('class_token.weight', 'cls', top, tuple(d[top['cls']][1:]))  # (1, 1, dim) -> (1, dim)
        add('conv_proj.weight', 'patch.weight', top)
        add('conv_proj.bias', 'patch.bias', top)
        if 'pos' in top:
            add('encoder.pos_embedding.weight', 'pos', top, tuple(d[top['pos']][1:]))  # (1, L, dim) -> (L, dim)
        for i in sorted(blocks):
            where, prefix = blocks[i], f'encoder.layers.encoder_layer_{i}.'
            add(prefix + 'ln_1.weight', 'ln_1.weight', where)
            add(prefix + 'ln_1.bias', 'ln_1.bias', where)
            for part in 'qkv':
                weight_name = f'{prefix}self_attention.in_proj_{part}.weight'
                add(weight_name, f'{part}.weight', where)
                weight = entries[-1]
                if part in 'qv':
                    entries += self._heads(weight, self.num_heads)
                add(f'{prefix}self_attention.in_proj_{part}.bias', f'{part}.bias', where)
                if part == 'v':
                    entries.append(self._residual(weight.name, weight.shape, weight.name))
            add(prefix + 'self_attention.out_proj.weight', 'out_proj.weight', where)
            add(prefix + 'self_attention.out_proj.bias', 'out_proj.bias', where)
            add(prefix + 'ln_2.weight', 'ln_2.weight', where)
            add(prefix + 'ln_2.bias', 'ln_2.bias', where)
            add(prefix + 'mlp.0.weight', 'mlp.0.weight', where)
            add(prefix + 'mlp.0.bias', 'mlp.0.bias', where)
            mlp0 = next(e for e in entries if e.name == prefix + 'mlp.0.weight')
            entries.append(self._residual(mlp0.name, mlp0.shape, prefix + 'mlp.0.bias'))
            add(prefix + 'mlp.3.weight', 'mlp.3.weight', where)
            add(prefix + 'mlp.3.bias', 'mlp.3.bias', where)
        for graph_name, role in (('encoder.ln.weight', 'ln.weight'), ('encoder.ln.bias', 'ln.bias'),
                                 ('heads.head.weight', 'head.weight'), ('heads.head.bias', 'head.bias')):
            add(graph_name, role, top)
        return entries

    @staticmethod
    def _roles(params: list[tuple[str, tuple[int, ...]]]) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
        """Top-level role -> parameter name, and block index -> (role -> parameter name)."""
        top: dict[str, str] = {}
        blocks: dict[int, dict[str, str]] = {}
        top_suffixes = {'embeddings.cls_token': 'cls', 'embeddings.position_embeddings': 'pos',
                        'patch_embeddings.projection.weight': 'patch.weight',
                        'patch_embeddings.projection.bias': 'patch.bias', 'classifier.weight': 'head.weight',
                        'classifier.bias': 'head.bias'}
        for name, shape in params:
            match = _BLOCK.search(name)
            if match:
                role = next((r for r, names in _BLOCK_ROLES.items() if match.group(2) in names), None)
                if role is not None:
                    blocks.setdefault(int(match.group(1)), {})[role] = name
                    continue
            else:
                role = next((r for suffix, r in top_suffixes.items() if name.endswith(suffix)), None)
                if role is None and name.endswith(('layernorm.weight', 'layernorm.bias')):
                    role = 'ln.' + name.rpartition('.')[2]
                if role is not None:
                    top[role] = name
                    continue
            raise UnsupportedLayerError(f"parameter '{name}' with shape {tuple(shape)} is not part of a ViT neural "
                                        f'graph (supported: transformers ViT embeddings, attention, MLP, layer norms, '
                                        f'classifier)')
        return top, blocks

    def move_offset(self, name: str, col: int, row: int, n_out: int, n_in: int) -> tuple[int, int]:
        if name.endswith('conv_proj.weight'):
            col -= n_out
        return col, row

    def correct_offsets(self, edges: EdgeDict, same: SameNeurons) -> None:
        for group in same.values():
            for j, (_, layer, key) in enumerate(group):
                if layer == 'conv_proj' and key == 'weight':
                    rows = edges[layer][key][0]
                    group[j] = (int(rows[-1] - rows[0]) + 1, layer, key)  # the input channels' nodes
