"""Reader for the IDX format of MNIST and FashionMNIST (optionally gzip-compressed)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
           0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (`.gz` or plain) into an array of the shape its header gives."""
    path = Path(path)
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rb') as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f'{path}: not an IDX file (bad magic number {raw[:4].hex()})')
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    start = 4 + 4 * ndim
    if len(raw) - start != count * dtype.itemsize:
        raise ValueError(f'{path}: header says shape {dims} ({count * dtype.itemsize} bytes) but the file '
                         f'holds {len(raw) - start} bytes of data')
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(dims)


def load_idx_dataset(images: str | Path, labels: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 (n, 1, h, w) in [0, 1] and labels as int64 (n,)."""
    x = read_idx(images)
    y = read_idx(labels)
    if len(x) != len(y):
        raise ValueError(f'{images} has {len(x)} images but {labels} has {len(y)} labels')
    x = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(y.astype(np.int64))
