"""Task datasets: a `dataset` mapping of a task spec -> tensors with train/validation batches.

    {name: fashion-mnist | mnist, root: DIR, val_size: N}   IDX files (train/t10k pair, or one
                                                            images/labels pair split into train/val)
    {name: cifar10 | cifar100, root: DIR}                    CIFAR python batches
    {name: text, path: FILE, tokenizer: bytes|gpt2|DIR, context: 64, val_fraction: 0.1}  (see text.py)
    {name: hf-text, dataset: NAME, config: CONFIG | train_files: FILE, val_files: FILE, ...}  (see hf_text.py)
    {name: digits, val_size: 297}                            scikit-learn's bundled 8x8 digits
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .cifar import load_cifar
from .hf_text import load_hf_text
from .idx import load_idx_dataset
from .text import encode_text, load_text_tokens, tokenizer_vocab_size


@dataclass
class ClassificationData:
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(self.x_train), (batch_size,), generator=generator)
        return self.x_train[idx], self.y_train[idx]

    def val_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, len(self.x_val), batch_size):
            yield self.x_val[i:i + batch_size], self.y_val[i:i + batch_size]


@dataclass
class TokenData:
    train: Tensor
    val: Tensor
    context: int
    max_val_windows: int = 256

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        starts = torch.randint(0, len(self.train) - self.context - 1, (batch_size,), generator=generator)
        return self._windows(self.train, starts)

    def val_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        n = min(self.max_val_windows, (len(self.val) - 1) // self.context)
        starts = torch.arange(n) * self.context
        for i in range(0, n, batch_size):
            yield self._windows(self.val, starts[i:i + batch_size])

    def _windows(self, tokens: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        offsets = starts.unsqueeze(1) + torch.arange(self.context + 1)
        w = tokens[offsets]
        return w[:, :-1], w[:, 1:]


TaskData = ClassificationData | TokenData


def _split(x: Tensor, y: Tensor, val_size: int) -> ClassificationData:
    if not 0 < val_size < len(x):
        raise ValueError(f'val_size must be in (0, {len(x)}), got {val_size}')
    return ClassificationData(x[:-val_size], y[:-val_size], x[-val_size:], y[-val_size:])


def _find(root: Path, stem: str) -> Path | None:
    for name in (f'{stem}.gz', stem):
        if (root / name).is_file():
            return root / name
    return None


def _idx(cfg: dict[str, Any]) -> ClassificationData:
    root = Path(cfg['root'])
    train = _find(root, 'train-images-idx3-ubyte'), _find(root, 'train-labels-idx1-ubyte')
    test = _find(root, 't10k-images-idx3-ubyte'), _find(root, 't10k-labels-idx1-ubyte')
    single = _find(root, 'images-idx3-ubyte'), _find(root, 'labels-idx1-ubyte')
    if all(train) and all(test):
        return ClassificationData(*load_idx_dataset(*train), *load_idx_dataset(*test))
    if all(single):
        x, y = load_idx_dataset(*single)
        return _split(x, y, int(cfg.get('val_size', len(x) // 10)))
    raise FileNotFoundError(f'{root}: no IDX files (expected train-/t10k-images-idx3-ubyte[.gz] and labels, '
                            f'or images-idx3-ubyte[.gz] and labels-idx1-ubyte[.gz])')


def _digits(cfg: dict[str, Any]) -> ClassificationData:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.data).float().div(16.0).view(-1, 1, 8, 8)
    y = torch.from_numpy(d.target).long()
    return _split(x, y, int(cfg.get('val_size', 297)))


def _text(cfg: dict[str, Any]) -> TokenData:
    tokens = load_text_tokens(cfg['path'], cfg.get('tokenizer', 'bytes'))
    return _token_data(tokens, None, cfg, f"text corpus {cfg['path']}")


def _hf_text(cfg: dict[str, Any]) -> TokenData:
    train, val = load_hf_text(cfg)
    tokenizer = cfg.get('tokenizer', 'bytes')
    what = f"dataset 'hf-text' ({cfg.get('dataset') or cfg.get('train_files')})"
    return _token_data(encode_text(train, tokenizer), None if val is None else encode_text(val, tokenizer), cfg, what)


def _token_data(tokens: Tensor, val: Tensor | None, cfg: dict[str, Any], what: str) -> TokenData:
    """Training and validation token streams; without `val`, the last `val_fraction` of `tokens`."""
    context = int(cfg.get('context', 64))
    if val is not None:
        for split, t in (('training', tokens), ('validation', val)):
            if len(t) < context + 2:
                raise ValueError(f'{what}: the {split} split has {len(t)} tokens, too few for context {context} '
                                 f'(at least {context + 2})')
        return TokenData(tokens, val, context)
    fraction = float(cfg.get('val_fraction', 0.1))
    n_val = int(len(tokens) * fraction)
    if n_val < context + 1 or len(tokens) - n_val < context + 2:
        need = max(context + 2 + int(fraction * (context + 2) / max(1e-9, 1 - fraction)) + 1,
                   int((context + 1) / max(fraction, 1e-9)) + 1)
        raise ValueError(f'{what}: {len(tokens)} tokens are too few for context {context} with '
                         f'val_fraction {fraction:g} (each split needs more than one context window; at least '
                         f'{need} tokens)')
    return TokenData(tokens[:-n_val], tokens[-n_val:], context)


def _cifar(cfg: dict[str, Any]) -> ClassificationData:
    train = load_cifar(cfg['root'], cfg['name'], 'train')
    return ClassificationData(*train, *load_cifar(cfg['root'], cfg['name'], 'test'))


_LOADERS = {'fashion-mnist': _idx, 'mnist': _idx, 'digits': _digits, 'text': _text, 'hf-text': _hf_text,
            'cifar10': _cifar, 'cifar100': _cifar}


def load_dataset(cfg: dict[str, Any], model_vocab: int | None = None) -> TaskData:
    """Load (once per process) the dataset a task spec's `dataset` mapping names.

    `model_vocab` (a language model's vocab_size) is checked against the tokenizer's vocabulary.
    """
    check_vocab(cfg, model_vocab)
    return _load_cached(tuple(sorted((k, str(v)) for k, v in cfg.items())))


def check_vocab(cfg: dict[str, Any], model_vocab: int | None) -> None:
    """ValueError if a text dataset's tokenizer has more tokens than the model's vocab_size (cheap: no tokenizing)."""
    if cfg.get('name') not in ('text', 'hf-text') or model_vocab is None:
        return
    tokenizer = cfg.get('tokenizer', 'bytes')
    n = tokenizer_vocab_size(tokenizer)
    if n > model_vocab:
        raise ValueError(f"tokenizer {tokenizer!r} has {n} tokens but the model's arch.vocab_size is "
                         f"{model_vocab}: set arch.vocab_size to {n}")


@lru_cache(maxsize=8)
def _load_cached(key: tuple[tuple[str, str], ...]) -> TaskData:
    cfg = dict(key)
    name = cfg.get('name')
    if name not in _LOADERS:
        raise ValueError(f'unknown dataset {name!r} (known: {sorted(_LOADERS)})')
    try:
        return _LOADERS[name](cfg)
    except KeyError as err:
        raise ValueError(f'dataset {name!r} needs field {err}') from None
