"""Neural graphs: networks as graphs of neurons whose edges carry the parameters.

`build_graph(params, num_heads=None, num_key_value_heads=None)` picks the builder from the
parameter names: a transformer family of `FAMILIES` when its marker parameter is present (GPT-2,
Qwen3, Llama, BERT, modded-nanogpt, ViT), otherwise the sequential MLP/convnet builder.
`graph_for_module(model)` does the same for an `nn.Module`, taking the family from a transformers
model's `config.model_type` and head counts from its config. Adding a transformer family is one
module with a `TransformerFamily` subclass, listed in `FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .bert import BertFamily
from .gpt2 import GPT2Family, build_gpt2_graph, is_gpt2
from .llama import LlamaFamily
from .lpe import laplacian_pe
from .nanogpt import NanoGPTFamily
from .neural_graph import AUX_EDGE_VALUE, EdgeType, NeuralGraph, UnsupportedLayerError
from .qwen import Qwen3Family
from .sequential import build_sequential_graph
from .transformer import TransformerFamily, build_transformer_graph, split_blocks
from .vit import ViTFamily

__all__ = ['AUX_EDGE_VALUE', 'FAMILIES', 'BertFamily', 'EdgeType', 'GPT2Family', 'LlamaFamily', 'NanoGPTFamily',
           'Qwen3Family', 'ViTFamily', 'NeuralGraph', 'TransformerFamily', 'UnsupportedLayerError',
           'build_graph', 'build_gpt2_graph', 'build_sequential_graph', 'build_transformer_graph', 'family_of',
           'graph_for_module', 'head_counts', 'is_gpt2', 'laplacian_pe', 'param_shapes', 'split_blocks']

#: Transformer families, most specific first (Qwen3 has every Llama parameter and more).
FAMILIES: tuple[type[TransformerFamily], ...] = (GPT2Family, Qwen3Family, LlamaFamily, BertFamily, NanoGPTFamily,
                                                 ViTFamily)


def param_shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) list of a module, in `named_parameters()` order."""
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def family_of(params: Iterable[tuple[str, tuple[int, ...]]],
              model_type: str | None = None) -> type[TransformerFamily] | None:
    """The transformer family of a parameter list (or of a transformers `model_type`), None if none."""
    if model_type is not None:
        for family in FAMILIES:
            if model_type in family.model_types:
                return family
    names = [name for name, _ in params]
    for family in FAMILIES:
        if any(name.endswith(family.marker) for name in names):
            return family
    return None


def build_graph(params: Iterable[tuple[str, tuple[int, ...]]], num_heads: int | None = None,
                num_key_value_heads: int | None = None, family: type[TransformerFamily] | None = None,
                pos_w: bool = True) -> NeuralGraph:
    """Build the neural graph of a (name, shape) list; transformers need `num_heads`.

    `num_key_value_heads` is for grouped-query attention (Llama, Qwen3; default `num_heads`).
    `pos_w=False` leaves every node's word-embedding index at 0.
    """
    params = [(name, tuple(int(s) for s in shape)) for name, shape in params]
    family = family or family_of(params)
    if family is None:
        return build_sequential_graph(params)
    if num_heads is None:
        raise ValueError(f'this looks like a {family.title} (parameter ending {family.marker!r}): pass num_heads')
    return build_transformer_graph(params, family(num_heads, num_key_value_heads), pos_w=pos_w)


def head_counts(model: torch.nn.Module) -> tuple[int | None, int | None]:
    """(attention heads, key/value heads) of a model, from its config or its attention modules."""
    config = getattr(model, 'config', None)
    if config is not None:
        heads = getattr(config, 'num_attention_heads', None) or getattr(config, 'n_head', None)
        return heads, getattr(config, 'num_key_value_heads', None)
    for module in model.modules():
        if isinstance(getattr(module, 'num_heads', None), int):
            return module.num_heads, None
    return None, None


def graph_for_module(model: torch.nn.Module, num_heads: int | None = None,
                     num_key_value_heads: int | None = None) -> NeuralGraph:
    """Build the neural graph of a module; transformers models give their family and head counts.

    Outside transformer families, an `nn.Embedding` is refused: its (rows, dim) weight has a
    linear layer's shape, but rows are tokens, not neurons fed by the previous layer.
    """
    shapes = param_shapes(model)
    config = getattr(model, 'config', None)
    family = family_of(shapes, getattr(config, 'model_type', None))
    if family is None:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Embedding):
                weight = f'{name}.weight' if name else 'weight'
                raise UnsupportedLayerError(f"parameter '{weight}' is an nn.Embedding, which the MLP/convnet "
                                            f'neural graph cannot represent (transformer families can: '
                                            f"{', '.join(f.title for f in FAMILIES)})")
        return build_sequential_graph(shapes)
    heads, kv_heads = head_counts(model)
    return build_graph(shapes, num_heads or heads, num_key_value_heads or kv_heads, family=family)
