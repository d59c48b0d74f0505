"""Neural graphs of GPT-2 style transformers (`transformers.GPT2LMHeadModel` / `GPT2Model`).

GPT-2 stores its linear maps as Conv1D weights (in, out) and fuses query, key and value into one
`attn.c_attn` weight (in, 3*out); the expansion splits it and adds, as the reference does,
per-head edges after the query and value weights, a residual identity around attention (after
the value bias) and one around the MLP (after `mlp.c_fc.bias`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import Tensor

from .neural_graph import NeuralGraph, UnsupportedLayerError
from .transformer import Entry, TransformerFamily, build_transformer_graph

_BLOCK_SUFFIXES = ('ln_1.weight', 'ln_1.bias', 'ln_2.weight', 'ln_2.bias',
                   'attn.c_attn.weight', 'attn.c_attn.bias', 'attn.c_proj.weight', 'attn.c_proj.bias',
                   'mlp.c_fc.weight', 'mlp.c_fc.bias', 'mlp.c_proj.weight', 'mlp.c_proj.bias')
_TOP_SUFFIXES = ('wte.weight', 'wpe.weight', 'ln_f.weight', 'ln_f.bias')
_BLOCK = re.compile(r'^(.*\.)?h\.\d+\.')


def is_gpt2(params: Iterable[tuple[str, tuple[int, ...]]]) -> bool:
    """Whether a parameter list looks like a GPT-2 (has a fused `attn.c_attn.weight`)."""
    return any(name.endswith('attn.c_attn.weight') for name, _ in params)


class GPT2Family(TransformerFamily):
    """GPT-2: Conv1D (in, out) weights, fused q/k/v, learned position embeddings."""

    title = 'GPT-2'
    marker = 'attn.c_attn.weight'
    model_types = ('gpt2',)
    block_pattern = r'(?:^|\.)h\.(\d+)\.'
    first_dim_out = False
    word_embedding = ('wte.weight',)
    position_embedding = ('wpe.weight',)
    q_weight, k_weight, v_weight = 'attn.c_attn.q.weight', 'attn.c_attn.k.weight', 'attn.c_attn.v.weight'

    def expand(self, params: list[tuple[str, tuple[int, ...]]], index: dict[str, Tensor]) -> list[Entry]:
        shapes = dict(params)
        entries: list[Entry] = []
        for name, shape in params:
            if not (name.endswith(_TOP_SUFFIXES) or (_BLOCK.match(name) and name.endswith(_BLOCK_SUFFIXES))):
                raise UnsupportedLayerError(
                    f"parameter '{name}' with shape {tuple(shape)} is not part of a GPT-2 neural graph "
                    f"(supported: wte, wpe, ln_1/ln_2/ln_f, attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)")
            if name.endswith('attn.c_attn.bias'):
                continue  # emitted with the q/k/v weights below
            if not name.endswith('attn.c_attn.weight'):
                entries.append(Entry(name, shape, index[name]))
                if name.endswith('mlp.c_fc.bias'):
                    weight = name[:-len('bias')] + 'weight'
                    entries.append(self._residual(weight, shapes[weight], name))
                continue
            d_in, d_out = shape[0], shape[1] // 3
            w_idx = index[name].view(d_in, 3, d_out)
            bias = name[:-len('weight')] + 'bias'
            b_idx = index[bias].view(3, d_out) if bias in shapes else None
            prefix = name[:-len('weight')]
            for j, part in enumerate('qkv'):
                weight = Entry(f'{prefix}{part}.weight', (d_in, d_out), w_idx[:, j, :])
                entries.append(weight)
                if part in 'qv':
                    entries += self._heads(weight, self.num_heads)
                if b_idx is not None:
                    entries.append(Entry(f'{prefix}{part}.bias', (d_out,), b_idx[j]))
                if part == 'v':
                    entries.append(self._residual(weight.name, weight.shape, weight.name))
        return entries


def build_gpt2_graph(params: Iterable[tuple[str, tuple[int, ...]]], num_heads: int) -> NeuralGraph:
    """Build the neural graph of a GPT-2 from its (name, shape) list and number of heads."""
    return build_transformer_graph(params, GPT2Family(num_heads))
