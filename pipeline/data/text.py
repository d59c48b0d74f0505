"""Plain-text corpora as token tensors.

Tokenizers: `bytes` (UTF-8 bytes, vocabulary 256, needs no files), `gpt2` (GPT-2's byte-level
BPE, vocabulary 50,257, `vocab.json` + `merges.txt` fetched once through the Hugging Face hub
cache from `openai-community/gpt2`), or a folder holding `vocab.json` + `merges.txt` in GPT-2's
format (e.g. a BPE trained with `tokenizers` on your own corpus).
"""

from __future__ import annotations

from functools import lru_cache
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


GPT2_REPO = 'openai-community/gpt2'


def bpe_files(tokenizer: str) -> tuple[Path, Path]:
    """(vocab.json, merges.txt) of a BPE tokenizer: 'gpt2' through the hub cache, or a folder."""
    if tokenizer == 'gpt2':
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
        try:
            return tuple(Path(hf_hub_download(GPT2_REPO, name)) for name in ('vocab.json', 'merges.txt'))
        except LocalEntryNotFoundError:
            raise FileNotFoundError(f"tokenizer 'gpt2': {GPT2_REPO} vocab.json/merges.txt are not in the hub cache "
                                    f"and the hub cannot be reached") from None
    folder = Path(tokenizer)
    files = folder / 'vocab.json', folder / 'merges.txt'
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"tokenizer {tokenizer!r}: not 'bytes' or 'gpt2', and {folder} lacks "
                                f"{' and '.join(missing)} (GPT-2 BPE format)")
    return files


@lru_cache(maxsize=4)
def load_bpe(tokenizer: str):
    """A byte-level BPE tokenizer (`tokenizers.ByteLevelBPETokenizer`) in GPT-2's format, loaded once per process."""
    from tokenizers import ByteLevelBPETokenizer
    vocab, merges = bpe_files(tokenizer)
    return ByteLevelBPETokenizer.from_file(str(vocab), str(merges))


def tokenizer_vocab_size(tokenizer: str) -> int:
    """Vocabulary size of a tokenizer ('bytes', 'gpt2' or a BPE folder) without tokenizing anything."""
    return ByteTokenizer.vocab_size if tokenizer == 'bytes' else load_bpe(tokenizer).get_vocab_size()


def load_text_tokens(path: str | Path, tokenizer: str = 'bytes') -> torch.Tensor:
    """Tokenize a text file (int64 tokens)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'text corpus not found: {path}')
    return encode_text(path.read_text(encoding='utf-8'), tokenizer)


def encode_text(text: str, tokenizer: str = 'bytes') -> torch.Tensor:
    """Tokenize a string (int64 tokens) with 'bytes', 'gpt2' or a BPE folder."""
    if tokenizer == 'bytes':
        return ByteTokenizer().encode(text)
    return torch.tensor(load_bpe(tokenizer).encode(text).ids, dtype=torch.int64)
