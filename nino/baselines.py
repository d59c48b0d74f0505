"""Baseline nowcasters that learn nothing: linear extrapolation of each parameter's trajectory."""

from __future__ import annotations

import torch
from torch import Tensor

from .model import NiNoConfig, Nowcaster


class LinearExtrapolation(Nowcaster):
    """Fit a least-squares line through each value's c states; predict the last state plus k slopes.

    Works on the same (scaled) edge features as the learned nowcasters, so it plugs into
    `nino.NiNo` unchanged; a per-layer affine scaling commutes with a linear fit.
    """

    def __init__(self, ctx: int = 5, seq_len: int = 40, max_feat_size: int = 9) -> None:
        super().__init__()
        self.config = NiNoConfig(ctx=ctx, seq_len=seq_len, max_feat_size=max_feat_size, gnn=False, lpe=0, hid=1)

    def forward(self, edge_attr: Tensor, edge_type: Tensor | None = None, edge_index: Tensor | None = None,
                lpe: Tensor | None = None, pos_w: Tensor | None = None, k: int | None = None) -> Tensor:
        c = self.config
        feat = self._check_features(edge_attr)
        self._check_k(k)
        x = edge_attr.view(-1, feat, c.ctx)
        t = torch.arange(c.ctx, dtype=x.dtype, device=x.device) - (c.ctx - 1) / 2
        slope = (x * t).sum(-1) / (t * t).sum()
        last = x[:, :, -1]
        if k is not None:
            return last + k * slope
        ks = torch.arange(1, c.seq_len + 1, dtype=x.dtype, device=x.device)
        return last.unsqueeze(-1) + slope.unsqueeze(-1) * ks
