"""Per-layer standardisation of parameter states and its inverse.

Each parameter tensor (a "layer" here) is standardised with one mean and one standard deviation
computed over all its values in all c states, so the nowcaster sees every layer on the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

EPS = 1e-6


def layer_sizes(params: Sequence[tuple[str, tuple[int, ...]]]) -> list[int]:
    """Number of values of each parameter in a (name, shape) list."""
    return [int(torch.Size(shape).numel()) for _, shape in params]


def layer_stats(states: Tensor, params: Sequence[tuple[str, tuple[int, ...]]], float64: bool = False) -> Tensor:
    """(L, 2) mean and unbiased std of each layer over all its values in all states.

    With `float64`, statistics are computed by numpy in float64 (then cast): the result does not
    depend on torch's thread count, which keeps data loading bit-identical across workers.
    """
    sizes = layer_sizes(params)
    if sum(sizes) != states.shape[0]:
        raise ValueError(f'states have {states.shape[0]} rows but the parameters have {sum(sizes)} values')
    stats = states.new_empty(len(sizes), 2)
    for i, w in enumerate(states.split(sizes)):
        if float64:
            a = w.detach().cpu().numpy().astype(np.float64)
            stats[i, 0], stats[i, 1] = float(a.mean()), float(a.std(ddof=1))
        else:
            stats[i, 0], stats[i, 1] = w.mean(), w.std()
    return stats


def apply_scale(states: Tensor, params: Sequence[tuple[str, tuple[int, ...]]], stats: Tensor,
                eps: float = EPS) -> Tensor:
    """Standardise states (P, n) with given per-layer stats: (x - mean) / (std + eps)."""
    sizes = layer_sizes(params)
    out = torch.empty_like(states)
    for i, (w, o) in enumerate(zip(states.split(sizes), out.split(sizes))):
        o.copy_((w - stats[i, 0]) / (stats[i, 1] + eps))
    return out


def scale_states(states: Tensor, params: Sequence[tuple[str, tuple[int, ...]]],
                 eps: float = EPS, float64: bool = False) -> tuple[Tensor, Tensor]:
    """Standardise states (P, c) per layer with their own statistics.

    Returns the scaled states and `stats` (L, 2) holding each layer's (mean, std), where std is
    the unbiased standard deviation; scaled = (x - mean) / (std + eps).
    """
    stats = layer_stats(states, params, float64)
    return apply_scale(states, params, stats, eps), stats


def unscale_states(x: Tensor, params: Sequence[tuple[str, tuple[int, ...]]], stats: Tensor) -> Tensor:
    """Invert `scale_states` for a flat vector (P,) or matrix (P, n).

    As in the reference implementation, the inverse multiplies by std without eps; this keeps
    predictions equal to the published code's to the last digit.
    """
    sizes = layer_sizes(params)
    out = torch.empty_like(x)
    for i, (w, o) in enumerate(zip(x.split(sizes), out.split(sizes))):
        o.copy_(w * stats[i, 1] + stats[i, 0])
    return out
