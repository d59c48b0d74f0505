"""Per-layer standardisation of parameter states and its inverse.

Each parameter tensor (a "layer" here) is standardised with one mean and one standard deviation
computed over all its values in all c states, so the nowcaster sees every layer on the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

EPS = 1e-6


def layer_sizes(params: Sequence[tuple[str, tuple[int, ...]]]) -> list[int]:
    """Number of values of each parameter in a (name, shape) list."""
    return [int(torch.Size(shape).numel()) for _, shape in params]


def scale_states(states: Tensor, params: Sequence[tuple[str, tuple[int, ...]]],
                 eps: float = EPS) -> tuple[Tensor, Tensor]:
    """Standardise states (P, c) per layer.

    Returns the scaled states and `stats` (L, 2) holding each layer's (mean, std), where std is
    the unbiased standard deviation; scaled = (x - mean) / (std + eps).
    """
    sizes = layer_sizes(params)
    if sum(sizes) != states.shape[0]:
        raise ValueError(f'states have {states.shape[0]} rows but the parameters have {sum(sizes)} values')
    out = torch.empty_like(states)
    stats = states.new_empty(len(sizes), 2)
    for i, (w, o) in enumerate(zip(states.split(sizes), out.split(sizes))):
        mean, std = w.mean(), w.std()
        o.copy_((w - mean) / (std + eps))
        stats[i, 0], stats[i, 1] = mean, std
    return out, stats


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
