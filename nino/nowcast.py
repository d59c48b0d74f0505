"""One nowcast of a whole model: scale, predict over one or several neural graphs, unscale.

`ModelGraphs` holds the neural graph of a model, or with `subgraph=True` one graph per
transformer block (the reference's subgraph mode: embeddings join the first block, the final
norm and an untied head the last). Scaling statistics are always taken over the whole model
first; then each part's edge features are built, predicted and turned back into its slice of
the flat vector one part at a time, so the memory of the step is bounded by the largest part's
edges rather than the model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .graph import build_graph, family_of, graph_for_module, head_counts, laplacian_pe, param_shapes, split_blocks
from .graph.neural_graph import NeuralGraph
from .graph.transformer import TransformerFamily
from .model import Nowcaster
from .scaling import scale_states, unscale_states


@dataclass
class GraphPart:
    """One neural graph and the slice [start, stop) of the flat parameter vector it covers."""

    graph: NeuralGraph
    start: int
    stop: int
    lpe: Tensor | None = None


class ModelGraphs:
    """The neural graph(s) of a model and the nowcast over them."""

    def __init__(self, params: Sequence[tuple[str, tuple[int, ...]]], parts: list[GraphPart]) -> None:
        self.params = [(name, tuple(int(s) for s in shape)) for name, shape in params]
        self.parts = parts

    @classmethod
    def build(cls, params: Sequence[tuple[str, tuple[int, ...]]], num_heads: int | None = None,
              num_key_value_heads: int | None = None, family: type[TransformerFamily] | None = None,
              subgraph: bool = False) -> ModelGraphs:
        """Graph(s) of a (name, shape) list; `subgraph=True` makes one per transformer block."""
        params = [(name, tuple(int(s) for s in shape)) for name, shape in params]
        family = family or family_of(params)
        if subgraph and family is None:
            raise ValueError('subgraph=True splits transformers into blocks; this model is not one of the known '
                             'transformer families (GPT-2, Llama, Qwen3, BERT, nanoGPT)')
        groups = split_blocks(params, family) if subgraph else [list(range(len(params)))]
        sizes = [int(torch.Size(shape).numel()) for _, shape in params]
        parts = []
        for group in groups:
            start = sum(sizes[:group[0]])
            graph = build_graph([params[i] for i in group], num_heads, num_key_value_heads, family=family)
            parts.append(GraphPart(graph, start, start + graph.num_params))
        return cls(params, parts)

    @classmethod
    def for_module(cls, model: torch.nn.Module, num_heads: int | None = None, num_key_value_heads: int | None = None,
                   subgraph: bool = False) -> ModelGraphs:
        """Graph(s) of a module, its family and head counts taken from the model as `graph_for_module` does."""
        shapes = param_shapes(model)
        family = family_of(shapes, getattr(getattr(model, 'config', None), 'model_type', None))
        if family is None and not subgraph:
            graph = graph_for_module(model)
            return cls(shapes, [GraphPart(graph, 0, graph.num_params)])
        heads, kv_heads = head_counts(model)
        return cls.build(shapes, num_heads or heads, num_key_value_heads or kv_heads, family, subgraph)

    @property
    def num_params(self) -> int:
        return self.parts[-1].stop

    def set_lpe(self, lpe: Tensor | Sequence[Tensor] | None, k: int) -> None:
        """Use precomputed positional encodings (one tensor, or one per part), computing those not given."""
        given = [lpe] if isinstance(lpe, Tensor) else list(lpe) if lpe is not None else [None] * len(self.parts)
        if len(given) != len(self.parts):
            raise ValueError(f'lpe: {len(given)} tensors given for {len(self.parts)} graphs')
        for i, (part, pe) in enumerate(zip(self.parts, given)):
            if pe is None:
                pe = laplacian_pe(part.graph.edge_index, part.graph.num_nodes, k)
            elif tuple(pe.shape) != (part.graph.num_nodes, k):
                where = f' for graph {i}' if len(self.parts) > 1 else ''
                raise ValueError(f'lpe{where} must have shape ({part.graph.num_nodes}, {k}), got {tuple(pe.shape)}')
            part.lpe = pe.float()

    @property
    def lpe(self) -> list[Tensor | None]:
        return [part.lpe for part in self.parts]

    def to(self, device: str | torch.device) -> ModelGraphs:
        """Move the graphs' index tensors and encodings to a device (in place)."""
        for part in self.parts:
            g = part.graph
            g.edge_index, g.edge_type, g.pos_w = g.edge_index.to(device), g.edge_type.to(device), g.pos_w.to(device)
            if part.lpe is not None:
                part.lpe = part.lpe.to(device)
        return self

    @torch.no_grad()
    def predict(self, nowcaster: Nowcaster, states: Tensor, k: int, edge_sample_ratio: float = 0.0,
                autocast: torch.dtype | None = None) -> Tensor:
        """The flat parameters (P,) predicted k steps after the last of `states` (P, c).

        `edge_sample_ratio` in (0, 1): messages pass over that random fraction of the edges (every
        parameter still gets a prediction). `autocast`: run the nowcaster under autocast to that dtype.
        """
        if states.shape[0] != self.num_params:
            raise ValueError(f'states have {states.shape[0]} rows, the model has {self.num_params} parameters')
        scaled, stats = scale_states(states, self.params)
        out = torch.empty(self.num_params, dtype=states.dtype, device=states.device)
        for part in self.parts:
            g = part.graph
            with torch.autocast(states.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                pred = nowcaster(g.edge_features(scaled[part.start:part.stop]), edge_type=g.edge_type,
                                 edge_index=g.edge_index, lpe=part.lpe, pos_w=g.pos_w, k=k,
                                 **_sampling(nowcaster, edge_sample_ratio))
            out[part.start:part.stop] = g.to_vector(pred.to(states.dtype))
        return unscale_states(out, self.params, stats)


def _sampling(nowcaster: Nowcaster, ratio: float) -> dict:
    """The edge-sampling argument for nowcasters that pass messages (the MLP has none)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f'edge_sample_ratio must be in [0, 1), got {ratio}')
    return {'edge_sample_ratio': ratio} if ratio and nowcaster.config.gnn else {}
