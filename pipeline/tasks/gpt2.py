"""GPT-2 language models (transformers `GPT2LMHeadModel`), the paper's LM tasks.

    arch: {type: gpt2, n_layer: 3, n_embd: 24, n_head: 3, vocab_size: 256, n_positions: 64}
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .arch import Architecture, register


class GPT2Arch(Architecture):
    type = 'gpt2'
    required = ('n_layer', 'n_embd', 'n_head', 'vocab_size', 'n_positions')
    language_model = True
    word_embedding = 'wte.weight'

    def build(self, arch: dict[str, Any]) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel
        return GPT2LMHeadModel(GPT2Config(n_embd=arch['n_embd'], n_layer=arch['n_layer'], n_head=arch['n_head'],
                                          vocab_size=arch['vocab_size'], n_positions=arch['n_positions'],
                                          bos_token_id=arch['vocab_size'] - 1, eos_token_id=arch['vocab_size'] - 1))

    def scale_width(self, arch: dict[str, Any], mult: float) -> dict[str, Any]:
        heads = arch['n_head']
        return {**arch, 'n_embd': max(heads, round(arch['n_embd'] * mult / heads) * heads)}

    def graph_kwargs(self, arch: dict[str, Any]) -> dict[str, Any]:
        return {'num_heads': arch['n_head']}


register(GPT2Arch())
