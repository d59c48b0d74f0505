"""Task registry: the networks (and later datasets and optimizers) that trajectories are recorded on."""

from .vision import ConvNet

__all__ = ['ConvNet']
