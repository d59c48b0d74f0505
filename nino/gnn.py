"""Message passing over neural graphs: edge-modulated node updates and edge updates.

One `MessagePassingLayer` does, for nodes h (N, d) and edges e (E, d) with edge j -> i:

    m_ji   = scale(e_ji) * (W [h_i, h_j] + b) + shift(e_ji)      (edge-modulated message)
    h_i'   = silu(out(update([h_i, mean_j m_ji])))                (node update)
    e_ji'  = edge_out(silu(edge_in(e_ji) + src(h_j') + dst(h_i')))  (edge update)

The per-edge matrix products dominate the cost, so the layers are computed with fewer of them;
the maps are the same, only the order of (exact-arithmetic) operations changes:
- `W [h_i, h_j]` is two per-node projections gathered per edge (N << E).
- Edge features are kept as an affine map of a tensor (`Edges`: e = x A^T + c) and only ever used
  through another linear map, so the two maps compose into one small matrix before touching the
  edges: `edge_out` is never applied on its own (it folds into the next layer's `modulation` and
  `edge_in`, or into the head's first layer), and the first layer reads the raw edge inputs
  (features and a one-hot of the edge type, 60 columns instead of 128).
- Of the message, only `scale(e_ji) * b_j` needs a product per edge: the mean over j of
  `scale(e_ji) * a_i + shift(e_ji)` is `a_i * scale(sum_j e_ji) + shift(sum_j e_ji)` (biases
  counted per edge), computed on per-node sums of x.
Work over edges runs in chunks when gradients are off; `NiNoGNN` then also streams: each layer's
edge features are recomputed per chunk from the raw inputs (the layers expose `start`,
`accumulate`, `finish` / `apply_to` for this), so no (E, hidden) tensor is ever stored and
inference memory is the raw inputs plus one chunk, whatever the number of edges.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def edge_chunks(num_edges: int, chunk_size: int | None) -> list[slice]:
    """Slices covering [0, num_edges); one slice when chunking is off or gradients are on."""
    if not chunk_size or chunk_size <= 0 or torch.is_grad_enabled():
        return [slice(0, num_edges)]
    return [slice(i, min(i + chunk_size, num_edges)) for i in range(0, num_edges, chunk_size)]


def map_edges(fn: Callable[[slice], Tensor], num_edges: int, chunk_size: int | None) -> Tensor:
    """Evaluate `fn` on slices of the edges and stack the results into one preallocated tensor."""
    parts = edge_chunks(num_edges, chunk_size)
    if len(parts) == 1:
        return fn(parts[0])
    first = fn(parts[0])
    out = first.new_empty(num_edges, *first.shape[1:])
    out[parts[0]] = first
    for s in parts[1:]:
        out[s] = fn(s)
    return out


class Edges:
    """Edge features as an affine map e = x A^T + c of a tensor x (E, n), never materialised.

    Streamed inference keeps only the map (x None) and computes x chunk by chunk.
    """

    def __init__(self, x: Tensor | None, weight: Tensor, bias: Tensor, scratch: bool = False) -> None:
        """`scratch`: x belongs to the forward pass and may be overwritten by chunked inference."""
        self.x, self.weight, self.bias, self.scratch = x, weight, bias, scratch

    def __len__(self) -> int:
        return len(self.x)

    def compose(self, weight: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(W A, W c + b): the map x -> W e + b as one matrix and bias (float32, outside autocast)."""
        with torch.autocast(self.weight.device.type, enabled=False):
            w = weight.float() @ self.weight.float()
            b = weight.float() @ self.bias.float()
            return w, b if bias is None else b + bias.float()

    def project(self, weight: Tensor, bias: Tensor | None = None, s: slice = slice(None)) -> Tensor:
        """W e + b for the edges `s`."""
        w, b = self.compose(weight, bias)
        return F.linear(self.x[s], w, b)


class EdgeModulatedConv(nn.Module):
    """Node update with messages scaled and shifted by the edge features; mean aggregation.

    `forward` takes all edges at once (training, chunked inference). The same computation is
    exposed in parts for streamed inference (`NiNoGNN` without gradients): `start` gives the
    per-node terms and the composed edge maps, `accumulate` adds one group of edges, `finish`
    turns the sums into the new node features.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.message = nn.Linear(2 * dim, dim)  # on [h_target, h_source]
        self.modulation = nn.Linear(dim, 2 * dim)  # edge features -> (scale, shift)
        self.update = nn.Linear(2 * dim, dim)  # on [h, aggregated messages]
        self.out = nn.Linear(dim, dim)

    def forward(self, h: Tensor, edge_index: Tensor, edges: Edges, chunk_size: int | None = None,
                sample_ratio: float = 0.0) -> Tensor:
        """`sample_ratio` in (0, 1): aggregate messages over that random fraction of the edges only."""
        if 0.0 < sample_ratio < 1.0:
            keep = torch.randperm(len(edges), device=edge_index.device)[:int(len(edges) * sample_ratio)]
            edge_index = edge_index[:, keep]
            edges = Edges(edges.x.index_select(0, keep), edges.weight, edges.bias)
        state = self.start(h, edges)
        for s in edge_chunks(len(edges), chunk_size):
            self.accumulate(state, edges.x[s], edge_index[:, s])
        return self.finish(h, state)

    def start(self, h: Tensor, edges: Edges) -> dict[str, Tensor]:
        """Per-node message terms, the edge map composed with `modulation`, and empty sums."""
        num_nodes = h.shape[0]
        w_dst, w_src = self.message.weight[:, :self.dim], self.message.weight[:, self.dim:]
        w, bias = self.modulation.weight, self.modulation.bias  # rows: scale, then shift
        w_scale, b_scale = edges.compose(w[:self.dim], bias[:self.dim])
        w_shift, b_shift = edges.compose(w[self.dim:], bias[self.dim:])
        a = F.linear(h, w_dst, self.message.bias).float()
        return dict(a=a, b=F.linear(h, w_src).float(), w_scale=w_scale, b_scale=b_scale, w_shift=w_shift,
                    b_shift=b_shift, agg=a.new_zeros(num_nodes, self.dim),  # float32 even under autocast
                    sums=a.new_zeros(num_nodes, edges.weight.shape[1]), degree=a.new_zeros(num_nodes))

    def accumulate(self, state: dict[str, Tensor], x: Tensor, edge_index: Tensor) -> None:
        """Add the messages of edges with inputs x (n, in) and ends edge_index (2, n) to the sums."""
        src, dst = edge_index
        scale = F.linear(x, state['w_scale'], state['b_scale']).float()
        state['agg'] = state['agg'].index_add(0, dst, scale * state['b'].index_select(0, src))
        state['sums'] = state['sums'].index_add(0, dst, x.float())
        state['degree'] = state['degree'] + torch.bincount(dst, minlength=len(state['degree'])).to(state['degree'])

    def finish(self, h: Tensor, state: dict[str, Tensor]) -> Tensor:
        """The updated node features from the accumulated sums."""
        sums, degree = state['sums'], state['degree']
        with torch.autocast(h.device.type, enabled=False):  # per node: sums of many edges, kept in float32
            shift_sum = torch.addmm(degree.unsqueeze(1) * state['b_shift'], sums, state['w_shift'].t())
            scale_sum = torch.addmm(degree.unsqueeze(1) * state['b_scale'], sums, state['w_scale'].t())
        agg = torch.addcmul(state['agg'] + shift_sum, state['a'], scale_sum)
        agg = (agg / degree.clamp(min=1).unsqueeze(1)).to(h.dtype)
        return self.out(self.update(torch.cat([h, agg], dim=-1)))


class EdgeUpdate(nn.Module):
    """New edge features from the old ones and the updated features of both end nodes."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.edge_in = nn.Linear(dim, dim)
        self.src = nn.Linear(dim, dim)
        self.dst = nn.Linear(dim, dim)
        self.edge_out = nn.Linear(dim, dim)

    def forward(self, h: Tensor, edge_index: Tensor, edges: Edges, chunk_size: int | None = None) -> Edges:
        """The new edges, as `edge_out` of silu(edge_in(e) + src(h_j) + dst(h_i)) (not applied: see `Edges`)."""
        terms = self.start(h, edges)
        parts = edge_chunks(len(edges), chunk_size)
        if len(parts) == 1:
            x = self.apply_to(terms, edges.x, edge_index)
        else:  # inference only (gradients are off when chunking): in place over the last layer's x
            x = edges.x if edges.scratch else terms[1].new_empty(len(edges), terms[1].shape[1])
            for s in parts:
                x[s] = self.apply_to(terms, edges.x[s], edge_index[:, s])
        return Edges(x, self.edge_out.weight, self.edge_out.bias, scratch=True)

    def start(self, h: Tensor, edges: Edges) -> tuple[Tensor, Tensor, Tensor]:
        """(the edge map composed with `edge_in`, per-node source terms with its bias, per-node target terms)."""
        w_in, b_in = edges.compose(self.edge_in.weight, self.edge_in.bias)
        return w_in, self.src(h) + b_in.to(h.dtype), self.dst(h)  # the composed bias added once per node

    @staticmethod
    def apply_to(terms: tuple[Tensor, Tensor, Tensor], x: Tensor, edge_index: Tensor) -> Tensor:
        """silu(x w_in^T + hs_j + ht_i) for edges with inputs x and ends edge_index (before `edge_out`)."""
        w_in, hs, ht = terms
        ends = hs.index_select(0, edge_index[0]) + ht.index_select(0, edge_index[1])
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else ends.dtype
        return F.silu(ends.to(dtype).addmm_(x.to(dtype), w_in.t().to(dtype)))  # in place: not needed for backward


class MessagePassingLayer(nn.Module):
    """An edge-modulated node update followed by an edge update."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = EdgeModulatedConv(dim)
        self.edge_update = EdgeUpdate(dim)

    def forward(self, h: Tensor, edge_index: Tensor, edges: Edges, chunk_size: int | None = None,
                sample_ratio: float = 0.0) -> tuple[Tensor, Edges]:
        h = F.silu(self.conv(h, edge_index, edges, chunk_size, sample_ratio))
        return h, self.edge_update(h, edge_index, edges, chunk_size)
