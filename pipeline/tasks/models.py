"""Networks of the task registry, built from an `arch` mapping of a task spec."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .vision import ConvNet


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


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Build the network an `arch` mapping describes (types: convnet, mlp, gpt2)."""
    kind = arch['type']
    kwargs = {k: v for k, v in arch.items() if k != 'type'}
    try:
        if kind == 'convnet':
            return ConvNet(in_channels=kwargs.get('in_channels', 1), channels=tuple(kwargs['channels']),
                           num_classes=kwargs.get('num_classes', 10))
        if kind == 'mlp':
            return MLP(kwargs['in_features'], list(kwargs['hidden']), kwargs.get('num_classes', 10))
        if kind == 'gpt2':
            from transformers import GPT2Config, GPT2LMHeadModel
            config = GPT2Config(n_embd=kwargs['n_embd'], n_layer=kwargs['n_layer'], n_head=kwargs['n_head'],
                                vocab_size=kwargs['vocab_size'], n_positions=kwargs['n_positions'],
                                bos_token_id=kwargs['vocab_size'] - 1, eos_token_id=kwargs['vocab_size'] - 1)
            return GPT2LMHeadModel(config)
    except KeyError as err:
        raise ValueError(f"arch of type {kind!r} needs field {err}") from None
    raise ValueError(f'unknown arch type {kind!r} (known: convnet, mlp, gpt2)')
