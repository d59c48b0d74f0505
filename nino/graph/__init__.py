"""Neural graphs: networks as graphs of neurons whose edges carry the parameters.

`build_graph(params, num_heads=None)` picks the builder from the parameter names (GPT-2 when a
fused `attn.c_attn.weight` is present, otherwise the sequential MLP/convnet builder);
`graph_for_module(model)` does the same for an `nn.Module`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .gpt2 import build_gpt2_graph, is_gpt2
from .lpe import laplacian_pe
from .neural_graph import AUX_EDGE_VALUE, EdgeType, NeuralGraph, UnsupportedLayerError
from .sequential import build_sequential_graph

__all__ = ['AUX_EDGE_VALUE', 'EdgeType', 'NeuralGraph', 'UnsupportedLayerError', 'build_graph',
           'build_gpt2_graph', 'build_sequential_graph', 'graph_for_module', 'laplacian_pe',
           'param_shapes']


def param_shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) list of a module, in `named_parameters()` order."""
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def build_graph(params: Iterable[tuple[str, tuple[int, ...]]], num_heads: int | None = None) -> NeuralGraph:
    """Build the neural graph of a (name, shape) list; GPT-2 models need `num_heads`."""
    params = [(name, tuple(shape)) for name, shape in params]
    if is_gpt2(params):
        if num_heads is None:
            raise ValueError('this looks like a GPT-2 (attn.c_attn.weight): pass num_heads')
        return build_gpt2_graph(params, num_heads)
    return build_sequential_graph(params)


def graph_for_module(model: torch.nn.Module, num_heads: int | None = None) -> NeuralGraph:
    """Build the neural graph of a module; a transformers GPT-2 gives its head count itself.

    Outside GPT-2 models, an `nn.Embedding` is refused: its (rows, dim) weight has a linear layer's
    shape, but rows are tokens, not neurons fed by the previous layer.
    """
    config = getattr(model, 'config', None)
    if num_heads is None and config is not None:
        num_heads = getattr(config, 'n_head', None)
    shapes = param_shapes(model)
    if not is_gpt2(shapes):
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Embedding):
                weight = f'{name}.weight' if name else 'weight'
                raise UnsupportedLayerError(f"parameter '{weight}' is an nn.Embedding, which the MLP/convnet "
                                            f'neural graph cannot represent (GPT-2 models can)')
    return build_graph(shapes, num_heads=num_heads)
