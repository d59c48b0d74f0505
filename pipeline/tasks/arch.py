"""What the toolkit needs to know about one family of networks, and the registry of families.

An `Architecture` (one module per family: `convnet`, `mlp`, `gpt2`, `llama`) builds the network
from a task spec's `arch` mapping, scales its width for `widths:` in configs, says which neural
graph arguments apply (head counts), which parameter is the word embedding (the loader samples
its rows; the store chunks it in row blocks) and which validation metrics a task may target.
Adding a family is its module plus `register(...)`; nothing else branches on `arch['type']`.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class Architecture:
    """A family of networks; subclasses set the class attributes and implement `build`."""

    type = ''  # the `arch.type` of task specs
    required: tuple[str, ...] = ()  # `arch` fields that must be given
    language_model = False  # token inputs, val_ppl/val_loss targets, one scale for all layers in the loader
    word_embedding: str | None = None  # suffix of the (vocab, dim) word-embedding parameter, if any

    def build(self, arch: dict[str, Any]) -> nn.Module:
        """The network an `arch` mapping describes."""
        raise NotImplementedError

    def scale_width(self, arch: dict[str, Any], mult: float) -> dict[str, Any]:
        """The `arch` mapping with its width multiplied by `mult` (ValueError when not supported)."""
        raise ValueError(f"field 'widths' is not supported for arch type {self.type!r}")

    def graph_kwargs(self, arch: dict[str, Any]) -> dict[str, Any]:
        """Arguments of `nino.graph.build_graph` beyond the parameter list (e.g. head counts)."""
        return {}

    @property
    def metrics(self) -> tuple[str, ...]:
        """Target metrics a task may use, the default first."""
        return ('val_ppl', 'val_loss') if self.language_model else ('val_acc', 'val_loss')

    def check(self, arch: dict[str, Any]) -> None:
        """Raise ValueError naming the first missing required field."""
        for name in self.required:
            if name not in arch:
                raise ValueError(f"arch of type {self.type!r} needs field '{name}'")


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Make a family known by its `type` (a later registration of the same type replaces it)."""
    _REGISTRY[arch.type] = arch
    return arch


def architecture(arch_type: str) -> Architecture:
    """The registered family of an `arch.type`; ValueError listing the known ones otherwise."""
    try:
        return _REGISTRY[arch_type]
    except KeyError:
        raise ValueError(f'unknown arch type {arch_type!r} (known: {", ".join(sorted(_REGISTRY))})') from None


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Build the network an `arch` mapping describes."""
    family = architecture(arch['type'])
    family.check(arch)
    return family.build(arch)


def word_embedding_suffixes() -> tuple[str, ...]:
    """Parameter-name suffixes of the registered families' word embeddings."""
    return tuple(sorted({a.word_embedding for a in _REGISTRY.values() if a.word_embedding}))
