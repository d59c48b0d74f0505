"""The `NeuralGraph` container: nodes, edges, edge types and the parameter <-> edge mapping.

A neural graph turns a network into a graph whose nodes are neurons and whose edges carry the
parameters. Builders (`nino.graph.sequential`, `nino.graph.gpt2`) decide the topology; this module
owns what every graph can do once built: turn a flat state matrix (P, c) into edge features
(E, max_feat_size * c) and turn per-edge predictions back into a flat parameter vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch
from torch import Tensor


class EdgeType(IntEnum):
    """Edge types, numbered as in the reference implementation (embedding rows of the nowcaster)."""

    LINEAR = 1
    BIAS = 2  # biases and any other parameter that fits no other type
    CONV = 3
    NORM = 4
    WORD_EMBEDDING = 5
    POSITION_EMBEDDING = 6
    ATTN_Q = 7
    ATTN_K = 8
    ATTN_V = 9
    RESIDUAL = 10
    ATTN_HEAD = 11
    SELF_LOOP = 13


#: Feature value written in slot 0 of edges that hold no parameter (all other slots are zero).
AUX_EDGE_VALUE = {EdgeType.RESIDUAL: 1.0, EdgeType.ATTN_HEAD: 1.0, EdgeType.SELF_LOOP: 2.0}


class UnsupportedLayerError(ValueError):
    """A parameter that the neural graph cannot represent; the message names it."""


@dataclass
class NeuralGraph:
    """A built neural graph.

    Attributes:
        edge_index: (2, E) source and target node of each edge, self-loops last.
        edge_type: (E,) `EdgeType` of each edge.
        pos_w: (N,) word-embedding row index + 1 of each node (0 where none).
        param_index: (E, F) index into the flat parameter vector of each edge feature slot,
            -1 where the slot holds no parameter (padding, residual/head edges, self-loops).
        params: the network's (name, shape) list in `named_parameters()` order.
    """

    edge_index: Tensor
    edge_type: Tensor
    pos_w: Tensor
    param_index: Tensor
    params: list[tuple[str, tuple[int, ...]]]
    _slots: Tensor = field(init=False, repr=False)
    _sources: Tensor = field(init=False, repr=False)
    _aux_edges: Tensor = field(init=False, repr=False)
    _aux_values: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        flat = self.param_index.reshape(-1)
        self._slots = torch.nonzero(flat >= 0).flatten()
        self._sources = flat[self._slots]
        counts = torch.bincount(self._sources, minlength=self.num_params)
        if len(counts) != self.num_params or not bool((counts == 1).all()):
            raise AssertionError('neural graph does not map every parameter to exactly one edge slot')
        values = torch.zeros(len(self.edge_type))
        for etype, value in AUX_EDGE_VALUE.items():
            values[self.edge_type == etype] = value
        self._aux_edges = torch.nonzero(values).flatten()
        self._aux_values = values[self._aux_edges]

    @property
    def num_nodes(self) -> int:
        return len(self.pos_w)

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    @property
    def max_feat_size(self) -> int:
        return self.param_index.shape[1]

    @property
    def num_params(self) -> int:
        return sum(_numel(shape) for _, shape in self.params)

    def edge_features(self, states: Tensor) -> Tensor:
        """Flat states (P, c) -> edge features (E, max_feat_size * c), feature-slot major."""
        if states.dim() == 1:
            states = states.unsqueeze(1)
        if states.dim() != 2 or states.shape[0] != self.num_params:
            raise ValueError(f'states must have shape ({self.num_params}, c), got {tuple(states.shape)}')
        c = states.shape[1]
        feats = states.new_zeros(self.num_edges * self.max_feat_size, c)
        feats[self._slots.to(states.device)] = states[self._sources.to(states.device)]
        feats = feats.view(self.num_edges, self.max_feat_size, c)
        feats[self._aux_edges.to(states.device), 0, :] = self._aux_values.to(states).unsqueeze(1)
        return feats.view(self.num_edges, self.max_feat_size * c)

    def to_vector(self, edge_values: Tensor) -> Tensor:
        """Per-edge values (E, max_feat_size) -> flat parameter vector (P,)."""
        if edge_values.shape != (self.num_edges, self.max_feat_size):
            raise ValueError(f'edge values must have shape ({self.num_edges}, {self.max_feat_size}), '
                             f'got {tuple(edge_values.shape)}')
        x = edge_values.new_empty(self.num_params)
        x[self._sources.to(x.device)] = edge_values.reshape(-1)[self._slots.to(x.device)]
        return x


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@dataclass
class EdgeBlock:
    """Edges contributed by one (possibly virtual) parameter while a builder walks the network."""

    layer: str  # module path, e.g. 'transformer.h.0.attn.c_attn.q'
    key: str  # last name component, e.g. 'weight', 'bias', 'head0', 'res'
    edge_type: EdgeType
    src: Tensor
    dst: Tensor
    param_index: Tensor | None  # (n_edges, feat) or None for auxiliary edges


def assemble(blocks: list[EdgeBlock], params: list[tuple[str, tuple[int, ...]]],
             pos_w_rows: int = 0) -> NeuralGraph:
    """Concatenate edge blocks (grouped by layer in order of first appearance), add self-loops.

    Blocks are copied into preallocated tensors and dropped from `blocks` one by one, so building
    a graph of E edges holds about one copy of them at a time (a 50M-edge embedding would
    otherwise pass through several concatenations).
    """
    layer_order: dict[str, int] = {}
    for b in blocks:
        layer_order.setdefault(b.layer, len(layer_order))
    order = sorted(range(len(blocks)), key=lambda i: layer_order[blocks[i].layer])  # stable: keeps key order
    feat = max([b.param_index.shape[1] for b in blocks if b.param_index is not None] + [1])
    num_edges = sum(len(b.src) for b in blocks)
    num_nodes = int(max(max(int(b.src.max()), int(b.dst.max())) for b in blocks if len(b.src))) + 1

    edge_index = torch.empty(2, num_edges + num_nodes, dtype=torch.long)
    edge_type = torch.empty(num_edges + num_nodes, dtype=torch.long)
    index = torch.full((num_edges + num_nodes, feat), -1, dtype=torch.long)
    start = 0
    for i in order:
        b, blocks[i] = blocks[i], None
        n = len(b.src)
        edge_index[0, start:start + n] = b.src
        edge_index[1, start:start + n] = b.dst
        edge_type[start:start + n] = int(b.edge_type)
        if b.param_index is not None:
            index[start:start + n, :b.param_index.shape[1]] = b.param_index
        start += n
    blocks.clear()
    edge_index[:, num_edges:] = torch.arange(num_nodes)
    edge_type[num_edges:] = int(EdgeType.SELF_LOOP)

    pos_w = torch.zeros(num_nodes, dtype=torch.long)
    pos_w[:pos_w_rows] = torch.arange(1, pos_w_rows + 1)
    return NeuralGraph(edge_index=edge_index, edge_type=edge_type, pos_w=pos_w, param_index=index, params=params)
