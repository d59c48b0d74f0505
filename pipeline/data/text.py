"""Plain-text corpora as token tensors; byte-level tokenizer (vocabulary 256)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class ByteTokenizer:
    """UTF-8 bytes as tokens: needs no files, so tests and offline runs never download."""

    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(text.encode('utf-8'), dtype=np.uint8).astype(np.int64))

    def decode(self, tokens: torch.Tensor) -> str:
        return bytes(tokens.to(torch.uint8).tolist()).decode('utf-8', errors='replace')


def load_text_tokens(path: str | Path, tokenizer: str = 'bytes') -> torch.Tensor:
    """Tokenize a text file (int64 tokens)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'text corpus not found: {path}')
    if tokenizer != 'bytes':
        raise ValueError(f"tokenizer {tokenizer!r} is not available offline; use 'bytes'")
    return ByteTokenizer().encode(path.read_text(encoding='utf-8'))
