"""Multilayer perceptrons: `arch: {type: mlp, in_features: N, hidden: [...], num_classes: C}`."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .arch import Architecture, register


class MLP(nn.Module):
    """Flatten, then Linear-ReLU layers and a linear classifier."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPArch(Architecture):
    type = 'mlp'
    required = ('in_features', 'hidden')

    def build(self, arch: dict[str, Any]) -> nn.Module:
        return MLP(arch['in_features'], list(arch['hidden']), arch.get('num_classes', 10))

    def scale_width(self, arch: dict[str, Any], mult: float) -> dict[str, Any]:
        return {**arch, 'hidden': [max(1, round(c * mult)) for c in arch['hidden']]}


register(MLPArch())
