"""Llama-style language models (transformers `LlamaForCausalLM`): RMSNorm, rotary positions,
SwiGLU MLPs and grouped-query attention.

    arch: {type: llama, n_layer: 2, n_embd: 32, n_head: 4, n_kv_head: 2, vocab_size: 256,
           n_positions: 64, intermediate: 128 (default 4 x n_embd), tie_embeddings: true}

Field names follow the GPT-2 task specs; the word embedding is tied to the output head by
default, so a large vocabulary appears once in the neural graph (as in GPT-2).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .arch import Architecture, register


class LlamaArch(Architecture):
    type = 'llama'
    required = ('n_layer', 'n_embd', 'n_head', 'vocab_size', 'n_positions')
    language_model = True
    word_embedding = 'embed_tokens.weight'

    def build(self, arch: dict[str, Any]) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM
        d, heads = arch['n_embd'], arch['n_head']
        kv_heads = arch.get('n_kv_head', heads)
        if d % heads or heads % kv_heads:
            raise ValueError(f"arch of type 'llama': n_embd ({d}) must be a multiple of n_head ({heads}) and "
                             f"n_head a multiple of n_kv_head ({kv_heads})")
        return LlamaForCausalLM(LlamaConfig(
            hidden_size=d, intermediate_size=arch.get('intermediate', 4 * d), num_hidden_layers=arch['n_layer'],
            num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=arch['vocab_size'],
            max_position_embeddings=arch['n_positions'], tie_word_embeddings=arch.get('tie_embeddings', True),
            bos_token_id=arch['vocab_size'] - 1, eos_token_id=arch['vocab_size'] - 1))

    def scale_width(self, arch: dict[str, Any], mult: float) -> dict[str, Any]:
        heads = arch['n_head']
        d = max(heads, round(arch['n_embd'] * mult / heads) * heads)
        scaled = {**arch, 'n_embd': d}
        if 'intermediate' in arch:
            scaled['intermediate'] = max(1, round(arch['intermediate'] * mult))
        return scaled

    def graph_kwargs(self, arch: dict[str, Any]) -> dict[str, Any]:
        return {'num_heads': arch['n_head'], 'num_key_value_heads': arch.get('n_kv_head', arch['n_head'])}


register(LlamaArch())
