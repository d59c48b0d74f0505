"""Datasets: readers (IDX, CIFAR batches, text), downloaders, and task data with batches."""

from .datasets import ClassificationData, TaskData, TokenData, check_vocab, load_dataset
from .download import ChecksumError, download_dataset, download_file
from .idx import load_idx_dataset, read_idx

__all__ = ['ChecksumError', 'ClassificationData', 'TaskData', 'TokenData', 'check_vocab', 'download_dataset',
           'download_file', 'load_dataset', 'load_idx_dataset', 'read_idx']
