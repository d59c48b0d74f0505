"""Neural graphs of feed-forward networks: MLPs and convnets whose layers run one after another.

Layout (identical to the reference implementation's): the first layer's inputs are nodes
0..n_in-1; every weight of shape (out, in, ...) adds a dense block of edges from its input
neurons to `out` new neurons; every 1-D parameter (bias, norm weight or bias) adds one extra node
connected to the neurons of the weight before it. Each such extra node is numbered just before
the neurons it feeds, so columns are shifted by the number of 1-D parameters met so far.
A conv kernel is one edge whose features are its kh*kw positions.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .neural_graph import EdgeBlock, EdgeType, NeuralGraph, UnsupportedLayerError, _numel, assemble


def param_type(name: str, shape: tuple[int, ...]) -> EdgeType:
    """Edge type of a parameter of a feed-forward network, from its name and shape."""
    if len(shape) == 1:
        return EdgeType.NORM if name.endswith('.weight') else EdgeType.BIAS
    if len(shape) == 4:
        return EdgeType.CONV
    if len(shape) == 2:
        return EdgeType.LINEAR
    raise UnsupportedLayerError(
        f"parameter '{name}' has shape {tuple(shape)}: the neural graph supports 1-D (bias/norm), "
        f"2-D (linear) and 4-D (conv2d) parameters")


def build_sequential_graph(params: Iterable[tuple[str, tuple[int, ...]]]) -> NeuralGraph:
    """Build the neural graph of an MLP or convnet from its (name, shape) list."""
    params = [(name, tuple(int(s) for s in shape)) for name, shape in params]
    if not params:
        raise UnsupportedLayerError('the model has no parameters')
    blocks: list[EdgeBlock] = []
    shifts: dict[int, list[tuple[int, EdgeBlock]]] = {}  # first column -> (extra nodes, block)
    col, row, flat, width = 0, 0, 0, None
    for i, (name, shape) in enumerate(params):
        etype = param_type(name, shape)
        n_out = shape[0]
        n_in = shape[1] if len(shape) > 1 else 1
        feat = _numel(shape[2:])
        if len(shape) == 1:
            if width is None:
                raise UnsupportedLayerError(f"parameter '{name}' is 1-D but no weight comes before it")
            if n_out != width:
                raise UnsupportedLayerError(
                    f"parameter '{name}' has {n_out} values but the layer before it has {width} outputs")
            col = max(0, col - n_out)
        else:
            if width is not None and n_in != width:
                raise UnsupportedLayerError(
                    f"parameter '{name}' takes {n_in} inputs but the layer before it has {width} outputs; "
                    f"the sequential neural graph needs each layer to consume the previous one's outputs")
            if i == 0:
                col = n_in
            width = n_out

        index = torch.arange(flat, flat + _numel(shape)).view(n_out, n_in, feat).transpose(0, 1)
        block = EdgeBlock(layer=name.rpartition('.')[0], key=name.rpartition('.')[2], edge_type=etype,
                          src=torch.arange(row, row + n_in).repeat_interleave(n_out),
                          dst=torch.arange(col, col + n_out).repeat(n_in),
                          param_index=index.reshape(n_in * n_out, feat))
        blocks.append(block)
        shifts.setdefault(col, []).append((1 if len(shape) == 1 else 0, block))
        row += n_in
        col += n_out
        flat += _numel(shape)

    extra = 0
    for group in shifts.values():
        extra += sum(n for n, _ in group)
        for _, block in group:
            block.dst += extra
    return assemble(blocks, params)
