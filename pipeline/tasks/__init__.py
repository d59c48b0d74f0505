"""Task registry: declarative task specs, presets and the networks they train."""

from .models import MLP, build_model
from .presets import PRESETS
from .spec import ConfigError, TaskSpec, expand_task, load_tasks, read_config_file, with_absolute_paths
from .vision import ConvNet

__all__ = ['MLP', 'PRESETS', 'ConfigError', 'ConvNet', 'TaskSpec', 'build_model', 'expand_task', 'load_tasks',
           'read_config_file', 'with_absolute_paths']
