"""Neural graphs of Qwen3 transformers (`transformers.Qwen3ForCausalLM`): Llama plus q/k norms.

Qwen3 normalises each head's queries and keys with RMSNorm weights of one head's size
(`self_attn.q_norm.weight`, `self_attn.k_norm.weight`). As in the reference, these become
connections between neurons inside the query and key projections: the walk lowers their row by
one, then `correct_offsets` places them against the projection's columns and moves the
projections' column groups to make room.
"""

from __future__ import annotations

import torch

from .llama import LlamaFamily
from .transformer import EdgeDict, SameNeurons


class Qwen3Family(LlamaFamily):
    """Qwen3: a Llama with per-head `q_norm` / `k_norm` weights."""

    title = 'Qwen3'
    marker = 'self_attn.q_norm.weight'
    model_types = ('qwen3',)

    def move_offset(self, name: str, col: int, row: int, n_out: int, n_in: int) -> tuple[int, int]:
        col, row = super().move_offset(name, col, row, n_out, n_in)
        if name.endswith('_norm.weight'):
            row -= 1
        return col, row

    def correct_offsets(self, edges: EdgeDict, same: SameNeurons) -> None:
        projections: dict[str, torch.Tensor] = {}
        moves: list[tuple[int, int]] = []
        for start, group in same.items():
            for _, layer, key in group:
                name = f'{layer}.{key}'
                if name.endswith(('q_proj.weight', 'k_proj.weight')):
                    projections.setdefault(layer, edges[layer][key])
                elif name.endswith(('q_norm.weight', 'k_norm.weight')):
                    proj = projections[layer.replace('_norm', '_proj')]
                    dim = int(proj[0].max() - proj[0].min() + 1)
                    src, dst = int(proj[0, 0]), int(proj[1, 0])
                    block = edges[layer][key]
                    head_dim = block.shape[1]
                    if layer.endswith('q_norm'):
                        block[0] = torch.arange(src + dim + self.num_heads, src + dim + self.num_heads + head_dim)
                        block[1] = torch.arange(dst + head_dim, dst + 2 * head_dim)
                        moves.append((start, dst + head_dim))
                    else:
                        block[0] = torch.arange(src, src + head_dim)
                        block[1] = torch.arange(dst + head_dim - dim, dst + 2 * head_dim - dim)
                        moves.append((start, dst + head_dim - dim))
        for start, new in moves:
            group = same[start]
            for item in group:  # removing while iterating skips the next item, as the reference does
                extra, layer, key = item
                name = f'{layer}.{key}'
                if name.endswith('_norm.weight') or layer.endswith(('q_proj', 'k_proj', 'v_proj')):
                    same.setdefault(new, []).append((0 if name.endswith('_norm.weight') else extra, layer, key))
                    group.remove(item)
