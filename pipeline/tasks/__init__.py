"""Task registry: declarative task specs, presets, and one module per architecture family."""

from . import convnet, gpt2, llama, mlp  # noqa: F401  (each registers its family)
from .arch import Architecture, architecture, build_model, register, word_embedding_suffixes
from .convnet import ConvNet
from .mlp import MLP
from .presets import PRESETS
from .spec import (
    ConfigError,
    TaskSpec,
    dataset_locations,
    expand_task,
    load_tasks,
    read_config_file,
    with_absolute_paths,
)

__all__ = ['MLP', 'PRESETS', 'Architecture', 'ConfigError', 'ConvNet', 'TaskSpec', 'architecture', 'build_model',
           'dataset_locations', 'expand_task', 'load_tasks', 'read_config_file', 'register', 'with_absolute_paths',
           'word_embedding_suffixes']
