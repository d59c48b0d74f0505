"""The nowcasters: NiNo (a GNN over the neural graph) and WNN+ (a per-parameter MLP).

Both take the scaled edge features of c past states (E, max_feat_size * c) and predict, for every
edge feature slot, the change from the last state `seq_len` steps ahead at once (direct
multi-step); the prediction is the last state plus that change. At inference `k` selects one
horizon and only that output row is computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gnn import Edges, EdgeUpdate, MessagePassingLayer, edge_chunks, map_edges


@dataclass
class NiNoConfig:
    """Architecture of a nowcaster (defaults: the paper's best NiNo without word-index encoding)."""

    ctx: int = 5  # past states in
    hid: int = 128
    layers: int = 3  # message-passing layers (gnn only)
    gnn: bool = True  # False: per-parameter MLP (WNN+)
    max_feat_size: int = 9  # largest conv kernel (3x3) the edge features hold
    seq_len: int = 40  # future steps predicted at once
    edge_types: int = 15
    lpe: int = 8  # Laplacian eigenvectors as node features (gnn only)
    wte_pos_enc: bool = False  # node embedding of the word-embedding row index (gnn only)
    vocab_size: int = 50257
    chunk_size: int = 100_000  # edges per chunk at inference

    @classmethod
    def from_dict(cls, d: dict) -> NiNoConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f'unknown nowcaster config fields: {unknown}')
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _select_rows(linear: nn.Linear, rows: Tensor | slice) -> tuple[Tensor, Tensor]:
    return linear.weight[rows], linear.bias[rows]


class Nowcaster(nn.Module):
    """Common interface: `forward(edge_attr, edge_type, edge_index, lpe, pos_w, k)`.

    Edge tensors may live on another device than the nowcaster (e.g. the CPU while it runs on a
    GPU: the reference's `message_passing_device`): without gradients and with `config.chunk_size`
    set, edges then move to the nowcaster's device one chunk at a time and predictions come back to
    the edges' device, so the nowcaster's device holds its weights, node features and one chunk.
    """

    config: NiNoConfig

    @property
    def device(self) -> torch.device | None:
        """Where the weights are (None for a nowcaster without weights: it runs where the edges are)."""
        weight = next(self.parameters(), None)
        return None if weight is None else weight.device

    def _streams(self, num_edges: int) -> bool:
        """Whether edges are processed chunk by chunk (inference with chunking on, more edges than a chunk)."""
        return not torch.is_grad_enabled() and bool(self.config.chunk_size) and num_edges > self.config.chunk_size

    def _check_features(self, edge_attr: Tensor, any_size: bool = False) -> int:
        """Feature slots per edge; more than `max_feat_size` only for nowcasters that treat slots apart."""
        ctx = self.config.ctx
        if edge_attr.dim() != 2 or edge_attr.shape[1] % ctx:
            raise ValueError(f'edge features must be (E, feat * {ctx}), got {tuple(edge_attr.shape)}')
        feat = edge_attr.shape[1] // ctx
        if feat > self.config.max_feat_size and not any_size:
            raise ValueError(f'edge features hold {feat} values per edge but this nowcaster supports at '
                             f'most {self.config.max_feat_size} (e.g. a conv kernel larger than 3x3)')
        return feat

    def _check_k(self, k: int | None) -> None:
        if k is not None and not 1 <= k <= self.config.seq_len:
            raise ValueError(f'k must be in [1, {self.config.seq_len}], got {k}')


class NiNoGNN(Nowcaster):
    """NiNo: message passing over the neural graph, then an edge head.

    The paper's model has `layers` message-passing layers with an edge update after all but the
    last; the last layer only updates node features, which the edge head never reads, so it is
    not built (official checkpoints' weights for it are skipped at import).
    """

    def __init__(self, config: NiNoConfig) -> None:
        super().__init__()
        self.config = c = config
        self.edge_type_embed = nn.Embedding(c.edge_types, c.hid)
        self.edge_proj = nn.Linear(c.max_feat_size * c.ctx, c.hid)
        self.node_proj = nn.Linear(c.lpe, c.hid) if c.lpe else None
        self.word_embed = nn.Embedding(c.vocab_size + 1, c.hid) if c.wte_pos_enc else None
        self.layers = nn.ModuleList(MessagePassingLayer(c.hid) for _ in range(c.layers - 1))
        self.head = _mlp([c.hid, c.hid, c.max_feat_size * c.seq_len])
        _init_weights(self)

    def forward(self, edge_attr: Tensor, edge_type: Tensor, edge_index: Tensor,
                lpe: Tensor | None = None, pos_w: Tensor | None = None, k: int | None = None,
                add_last: bool = True, edge_sample_ratio: float = 0.0) -> Tensor:
        """Predict (E, feat) at horizon k, or (E, feat, seq_len) for all horizons when k is None;
        `add_last=False` (all horizons only) returns the predicted change from the last state.
        `edge_sample_ratio` in (0, 1) (inference only): each layer's messages pass over that random
        fraction of the edges, as the reference's large-model mode; edge updates still cover every edge."""
        c = self.config
        feat = self._check_features(edge_attr)
        self._check_k(k)
        here = self.device
        if edge_attr.device != here and not self._streams(len(edge_attr)):  # all edges at once: move them all
            return self(edge_attr.to(here), edge_type.to(here), edge_index.to(here), lpe, pos_w, k, add_last,
                        edge_sample_ratio).to(edge_attr.device)
        last = edge_attr.view(-1, feat, c.ctx)[:, :, -1]
        num_nodes = int(edge_index.max()) + 1 if lpe is None else lpe.shape[0]
        lpe, pos_w = (None if t is None else t.to(here) for t in (lpe, pos_w))

        # e = edge_proj(features) + embedding(type) = [features, one_hot(type)] A^T + bias (see nino.gnn.Edges)
        edge_map = Edges(None, torch.cat([self.edge_proj.weight[:, :feat * c.ctx], self.edge_type_embed.weight.t()],
                                         dim=1), self.edge_proj.bias)
        h = torch.zeros(num_nodes, c.hid, dtype=edge_attr.dtype, device=here)
        if self.node_proj is not None:
            if lpe is None:
                raise ValueError('this nowcaster needs the Laplacian positional encoding (lpe)')
            h = h + self.node_proj(lpe)
        if self.word_embed is not None:
            if pos_w is None:
                raise ValueError('this nowcaster needs pos_w (word-embedding row index per node)')
            h = h + self.word_embed(pos_w)
        if edge_sample_ratio and torch.is_grad_enabled():
            raise ValueError('edge_sample_ratio is for inference (torch.no_grad()) only')
        if self._streams(len(edge_attr)):
            return self._streamed(edge_attr, edge_type, edge_map, edge_index, h, last, feat, k, add_last,
                                  edge_sample_ratio)
        edges = Edges(self._inputs(edge_attr, edge_type), edge_map.weight, edge_map.bias)
        for layer in self.layers:
            h, edges = layer(h, edge_index, edges, c.chunk_size, edge_sample_ratio)

        hidden, out = self.head[0], self.head[2]
        if k is None:
            delta = out(F.silu(edges.project(hidden.weight, hidden.bias))).view(-1, c.max_feat_size, c.seq_len)
            delta = delta[:, :feat]
            return last.unsqueeze(-1) + delta if add_last else delta
        rows = torch.arange(feat, device=edge_attr.device) * c.seq_len + (k - 1)
        w_out, b_out = _select_rows(out, rows)
        w_hid, b_hid = edges.compose(hidden.weight, hidden.bias)
        delta = map_edges(lambda s: F.linear(F.silu(F.linear(edges.x[s], w_hid, b_hid)), w_out, b_out), len(edges),
                          c.chunk_size)
        return last + delta


    def _inputs(self, edge_attr: Tensor, edge_type: Tensor) -> Tensor:
        """The first layer's edge inputs: [features, one_hot(type)]."""
        return torch.cat([edge_attr, F.one_hot(edge_type, self.config.edge_types).to(edge_attr.dtype)], dim=1)

    def _streamed(self, edge_attr: Tensor, edge_type: Tensor, edge_map: Edges, edge_index: Tensor, h: Tensor,
                  last: Tensor, feat: int, k: int | None, add_last: bool, edge_sample_ratio: float) -> Tensor:
        """Inference with per-edge features computed chunk by chunk and never stored for all edges.

        A layer's edge features depend only on the raw inputs and the node features of the layers
        before, so each pass over the edges recomputes them per chunk from the raw inputs: memory
        is the inputs plus one chunk's (chunk, hid) features instead of (E, hid) per layer. The
        recomputation repeats only the cheap first edge update (the 60-column input, not 128). Even
        the first layer's inputs (features and a one-hot type) are built per chunk, on the
        nowcaster's device from the chunk's raw inputs, wherever the edges are kept.
        """
        c = self.config
        num_edges = len(edge_attr)
        here, there = h.device, edge_attr.device
        updates: list[tuple[Tensor, Tensor, Tensor]] = []  # per finished layer: EdgeUpdate.start terms

        def edge_x(idx: slice | Tensor) -> Tensor:  # the current layer's edge inputs for some edges
            x = self._inputs(edge_attr[idx].to(here), edge_type[idx].to(here))
            ends = edge_index[:, idx].to(here)
            for terms in updates:
                x = EdgeUpdate.apply_to(terms, x, ends)
            return x

        current = edge_map  # the affine map from edge_x() to the current edge features
        for layer in self.layers:
            state = layer.conv.start(h, current)
            groups: list[slice] | list[Tensor] = edge_chunks(num_edges, c.chunk_size)
            if 0.0 < edge_sample_ratio < 1.0:  # messages over a random fraction of the edges
                keep = torch.randperm(num_edges, device=edge_index.device)[:int(num_edges * edge_sample_ratio)]
                groups = [keep[s] for s in edge_chunks(len(keep), c.chunk_size)]
            for g in groups:
                layer.conv.accumulate(state, edge_x(g), edge_index[:, g].to(here))
            h = F.silu(layer.conv.finish(h, state))
            updates.append(layer.edge_update.start(h, current))
            current = Edges(None, layer.edge_update.edge_out.weight, layer.edge_update.edge_out.bias)

        hidden, out = self.head[0], self.head[2]
        w_hid, b_hid = current.compose(hidden.weight, hidden.bias)
        rows = slice(None) if k is None else torch.arange(feat, device=here) * c.seq_len + (k - 1)
        w_out, b_out = _select_rows(out, rows)
        delta = map_edges(lambda s: F.linear(F.silu(F.linear(edge_x(s), w_hid, b_hid)), w_out, b_out).to(there),
                          num_edges, c.chunk_size)
        if k is not None:
            return last + delta
        delta = delta.view(-1, c.max_feat_size, c.seq_len)[:, :feat]
        return last.unsqueeze(-1) + delta if add_last else delta


class NiNoMLP(Nowcaster):
    """WNN+: the same edge inputs and edge-type embedding, one MLP per parameter, no message passing."""

    def __init__(self, config: NiNoConfig) -> None:
        super().__init__()
        self.config = c = config
        self.edge_type_embed = nn.Embedding(c.edge_types, c.hid)
        self.edge_proj = nn.Linear(c.ctx, c.hid)
        self.mlp = _mlp([c.hid] * 4 + [c.seq_len])
        _init_weights(self)

    def forward(self, edge_attr: Tensor, edge_type: Tensor, edge_index: Tensor | None = None,
                lpe: Tensor | None = None, pos_w: Tensor | None = None, k: int | None = None,
                add_last: bool = True) -> Tensor:
        """Predict (E, feat) at horizon k, or (E, feat, seq_len) when k is None; `add_last=False` (all
        horizons only) returns the predicted change from the last state."""
        c = self.config
        feat = self._check_features(edge_attr, any_size=True)  # one MLP per slot: any kernel size
        self._check_k(k)
        here = self.device
        x = edge_attr.view(-1, feat, c.ctx)
        last = x[:, :, -1]
        body, out = self.mlp[:-1], self.mlp[-1]
        if k is None:
            delta = self.mlp(self.edge_proj(x.to(here)) + self.edge_type_embed(edge_type.to(here)).unsqueeze(1))
            delta = delta.to(x.device)
            return last.unsqueeze(-1) + delta if add_last else delta
        w_out, b_out = _select_rows(out, slice(k - 1, k))

        def run(s: slice) -> Tensor:
            h = self.edge_proj(x[s].to(here)) + self.edge_type_embed(edge_type[s].to(here)).unsqueeze(1)
            return F.linear(body(h), w_out, b_out).squeeze(-1).to(x.device)

        return last + map_edges(run, len(x), c.chunk_size)


def build_nowcaster(config: NiNoConfig) -> Nowcaster:
    """The GNN or the MLP nowcaster for a config."""
    return NiNoGNN(config) if config.gnn else NiNoMLP(config)


def _init_weights(module: nn.Module) -> None:
    """Normal(0, 0.02) weights and zero biases, as in the reference training code."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
