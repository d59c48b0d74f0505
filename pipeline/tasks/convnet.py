"""The paper's vision convnets (FM-16, FM-32, C10-16, ...): `arch: {type: convnet, channels: [...]}`."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .arch import Architecture, register


class ConvNet(nn.Module):
    """3x3 convs (first with stride 2, no padding; then 'same'), ReLU, global average pool, linear.

    Parameter names (`fc.0`, `fc.2`, `fc.4`, `fc.8`) follow the published trajectory dataset's
    `named_parameters()` order and names.
    """

    def __init__(self, in_channels: int = 1, channels: tuple[int, int, int] = (16, 32, 32),
                 num_classes: int = 10) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.fc = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, stride=2), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(c3, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class ConvNetArch(Architecture):
    type = 'convnet'
    required = ('channels',)

    def build(self, arch: dict[str, Any]) -> nn.Module:
        return ConvNet(in_channels=arch.get('in_channels', 1), channels=tuple(arch['channels']),
                       num_classes=arch.get('num_classes', 10))

    def scale_width(self, arch: dict[str, Any], mult: float) -> dict[str, Any]:
        return {**arch, 'channels': [max(1, round(c * mult)) for c in arch['channels']]}


register(ConvNetArch())
