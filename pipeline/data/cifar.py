"""Reader for the CIFAR-10/100 "python version" batches (pickled dicts of uint8 arrays).

The batches are pickles, and a plain `pickle.load` of a crafted file runs arbitrary code. They are
read with `SafeUnpickler`, which builds only what those files hold (dicts, lists, bytes, numbers and
numpy arrays) and refuses any other global, naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

_LAYOUTS = {  # name -> (folder, train files, test files, label key)
    'cifar10': ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'], b'labels'),
    'cifar100': ('cifar-100-python', ['train'], ['test'], b'fine_labels'),
}


#: The only globals a CIFAR batch refers to: how numpy pickles an array (numpy 1 and 2 module names).
_ALLOWED_GLOBALS = {('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', '_reconstruct'),
                    ('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', 'scalar'),
                    ('numpy._core.multiarray', 'scalar'), ('numpy.core.numeric', '_frombuffer'),
                    ('numpy._core.numeric', '_frombuffer'), ('_codecs', 'encode')}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that admits only the numpy array machinery a CIFAR batch needs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'refused global {module}.{name}: a CIFAR batch holds only arrays and lists')


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f'CIFAR batch missing: {path}')
    with open(path, 'rb') as f:
        try:
            d = SafeUnpickler(f, encoding='bytes').load()
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise ValueError(f'{path}: not a CIFAR batch ({err})') from None
    if not isinstance(d, dict):
        raise ValueError(f'{path}: not a CIFAR batch (a {type(d).__name__}, not a dict)')
    try:
        x = np.asarray(d[b'data'], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[label_key], dtype=np.int64)
    except KeyError as err:
        raise ValueError(f'{path}: CIFAR batch has no field {err!r}') from None
    if len(x) != len(y):
        raise ValueError(f'{path}: {len(x)} images but {len(y)} labels')
    return x, y


def load_cifar(root: str | Path, name: str = 'cifar10', split: str = 'train') -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 (n, 3, 32, 32) in [0, 1] and labels int64 for a CIFAR split."""
    folder, train, test, key = _LAYOUTS[name]
    base = Path(root) / folder if (Path(root) / folder).is_dir() else Path(root)
    parts = [_read_batch(base / f, key) for f in (train if split == 'train' else test)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y)
