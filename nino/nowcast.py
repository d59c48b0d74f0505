"""One nowcast of a whole model: scale, predict over one or several neural graphs, unscale.

`ModelGraphs` holds the neural graph of a model, or with `subgraph=True` one graph per
transformer block (the reference's subgraph mode: embeddings join the first block, the final
norm and an untied head the last). Scaling statistics are always taken over the whole model
first; then each part's edge features are built, predicted and turned back into its slice of
the flat vector one part at a time. For large models (more than `KEEP_GRAPHS_UP_TO` parameters
by default) a part's graph is built when needed and dropped after use, keeping only its
positional encoding: memory then follows the largest part, not the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .graph import build_graph, family_of, graph_for_module, head_counts, laplacian_pe, param_shapes, split_blocks
from .graph.neural_graph import NeuralGraph
from .graph.transformer import TransformerFamily
from .model import Nowcaster
from .scaling import apply_scale, layer_stats, unscale_states

#: Models up to this many parameters keep their graphs between nowcasts (rebuilding costs ~0.1 s
#: per million edges; keeping costs ~50 bytes per edge).
KEEP_GRAPHS_UP_TO = 20_000_000


@dataclass
class GraphPart:
    """The parameters [start, stop) of the flat vector one neural graph covers, and its encoding."""

    params: list[tuple[str, tuple[int, ...]]]
    start: int
    stop: int
    graph_kwargs: dict = field(default_factory=dict)
    graph: NeuralGraph | None = None  # None when not built yet, or dropped after use
    lpe: Tensor | None = None
    num_nodes: int = 0
    num_edges: int = 0


class ModelGraphs:
    """The neural graph(s) of a model and the nowcast over them."""

    def __init__(self, params: Sequence[tuple[str, tuple[int, ...]]], parts: list[GraphPart],
                 keep_graphs: bool | None = None) -> None:
        self.params = [(name, tuple(int(s) for s in shape)) for name, shape in params]
        self.parts = parts
        self.keep_graphs = parts[-1].stop <= KEEP_GRAPHS_UP_TO if keep_graphs is None else keep_graphs
        self.device = torch.device('cpu')

    @classmethod
    def build(cls, params: Sequence[tuple[str, tuple[int, ...]]], num_heads: int | None = None,
              num_key_value_heads: int | None = None, family: type[TransformerFamily] | None = None,
              subgraph: bool = False, keep_graphs: bool | None = None) -> ModelGraphs:
        """Graph(s) of a (name, shape) list; `subgraph=True` makes one per transformer block."""
        params = [(name, tuple(int(s) for s in shape)) for name, shape in params]
        family = family or family_of(params)
        if subgraph and family is None:
            raise ValueError('subgraph=True splits transformers into blocks; this model is not one of the known '
                             'transformer families (GPT-2, Llama, Qwen3, BERT, nanoGPT)')
        groups = split_blocks(params, family) if subgraph else [list(range(len(params)))]
        sizes = [int(torch.Size(shape).numel()) for _, shape in params]
        kwargs = dict(num_heads=num_heads, num_key_value_heads=num_key_value_heads, family=family)
        parts = []
        for group in groups:
            start = sum(sizes[:group[0]])
            parts.append(GraphPart([params[i] for i in group], start, start + sum(sizes[i] for i in group), kwargs))
        graphs = cls(params, parts, keep_graphs)
        graphs.graph(0)  # errors in the parameter list surface now, not at the first nowcast
        if not graphs.keep_graphs:
            graphs.release(0)
        return graphs

    @classmethod
    def for_module(cls, model: torch.nn.Module, num_heads: int | None = None, num_key_value_heads: int | None = None,
                   subgraph: bool = False, keep_graphs: bool | None = None) -> ModelGraphs:
        """Graph(s) of a module, its family and head counts taken from the model as `graph_for_module` does."""
        shapes = param_shapes(model)
        family = family_of(shapes, getattr(getattr(model, 'config', None), 'model_type', None))
        if family is None and not subgraph:
            graph = graph_for_module(model)
            part = GraphPart(shapes, 0, graph.num_params, graph=graph, num_nodes=graph.num_nodes,
                             num_edges=graph.num_edges)
            return cls(shapes, [part], keep_graphs=True)
        heads, kv_heads = head_counts(model)
        return cls.build(shapes, num_heads or heads, num_key_value_heads or kv_heads, family, subgraph, keep_graphs)

    @property
    def num_params(self) -> int:
        return self.parts[-1].stop

    def graph(self, i: int) -> NeuralGraph:
        """The graph of part i, built (and moved to the device) if it is not held."""
        part = self.parts[i]
        if part.graph is None:
            g = _moved(build_graph(part.params, **part.graph_kwargs), self.device)
            part.graph, part.num_nodes, part.num_edges = g, g.num_nodes, g.num_edges
        return part.graph

    def release(self, i: int) -> None:
        """Drop the graph of part i unless graphs are kept."""
        if not self.keep_graphs:
            self.parts[i].graph = None

    def set_lpe(self, lpe: Tensor | Sequence[Tensor | None] | None, k: int) -> None:
        """Use precomputed positional encodings (one tensor, or one per part), computing those not given."""
        given = [lpe] if isinstance(lpe, Tensor) else list(lpe) if lpe is not None else [None] * len(self.parts)
        if len(given) != len(self.parts):
            raise ValueError(f'lpe: {len(given)} tensors given for {len(self.parts)} graphs')
        for i, (part, pe) in enumerate(zip(self.parts, given)):
            g = self.graph(i)
            if pe is None:
                pe = laplacian_pe(g.edge_index.cpu(), g.num_nodes, k)
            elif tuple(pe.shape) != (g.num_nodes, k):
                where = f' for graph {i}' if len(self.parts) > 1 else ''
                raise ValueError(f'lpe{where} must have shape ({g.num_nodes}, {k}), got {tuple(pe.shape)}')
            part.lpe = pe.float().to(self.device)
            self.release(i)

    @property
    def lpe(self) -> list[Tensor | None]:
        return [part.lpe for part in self.parts]

    def to(self, device: str | torch.device) -> ModelGraphs:
        """Keep graphs and encodings on a device (in place)."""
        self.device = torch.device(device)
        for part in self.parts:
            if part.graph is not None:
                _moved(part.graph, self.device)
            if part.lpe is not None:
                part.lpe = part.lpe.to(device)
        return self

    @torch.no_grad()
    def predict(self, nowcaster: Nowcaster, states: Tensor, k: int, edge_sample_ratio: float = 0.0,
                autocast: torch.dtype | None = None) -> Tensor:
        """The flat parameters (P,) predicted k steps after the last of `states` (P, c), on the states'
        device (the graphs' too; the nowcaster may run on another, see `Nowcaster`).

        `edge_sample_ratio` in (0, 1): messages pass over that random fraction of the edges (every
        parameter still gets a prediction). `autocast`: run the nowcaster under autocast to that dtype.
        """
        if states.shape[0] != self.num_params:
            raise ValueError(f'states have {states.shape[0]} rows, the model has {self.num_params} parameters')
        stats = layer_stats(states, self.params)  # over the whole model, then each part scaled on its own
        out = torch.empty(self.num_params, dtype=states.dtype, device=states.device)
        first = 0  # index of the part's first parameter tensor
        runs_on = (nowcaster.device or states.device).type
        for i, part in enumerate(self.parts):
            g = self.graph(i)
            part_stats = stats[first:first + len(part.params)]
            first += len(part.params)
            features = g.edge_features(apply_scale(states[part.start:part.stop], part.params, part_stats))
            with torch.autocast(runs_on, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                pred = nowcaster(features, edge_type=g.edge_type, edge_index=g.edge_index, lpe=part.lpe,
                                 pos_w=g.pos_w, k=k, **_sampling(nowcaster, edge_sample_ratio))
            del features
            out[part.start:part.stop] = g.to_vector(pred.to(states.dtype))
            del pred
            self.release(i)
        return unscale_states(out, self.params, stats)


def _moved(g: NeuralGraph, device: torch.device) -> NeuralGraph:
    """The graph with the tensors a nowcaster reads (edges, types, word-embedding rows) on `device`."""
    g.edge_index, g.edge_type, g.pos_w = (t.to(device) for t in (g.edge_index, g.edge_type, g.pos_w))
    return g


def check_edge_sample_ratio(ratio: float) -> float:
    """`ratio` if it is a valid fraction of edges to pass messages over (0: all edges)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f'edge_sample_ratio must be in [0, 1), got {ratio}')
    return ratio


def _sampling(nowcaster: Nowcaster, ratio: float) -> dict:
    """The edge-sampling argument for nowcasters that pass messages (the MLP has none)."""
    check_edge_sample_ratio(ratio)
    return {'edge_sample_ratio': ratio} if ratio and nowcaster.config.gnn else {}
