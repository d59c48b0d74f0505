"""Dataset readers (IDX for MNIST/FashionMNIST, ...) that turn files on disk into tensors."""

from .idx import load_idx_dataset, read_idx

__all__ = ['load_idx_dataset', 'read_idx']
