"""Declarative task specs and their families, read from YAML/dicts with errors that name the field.

A `TaskSpec` is one task group of the trajectory store: one architecture (fixed parameter
layout), one dataset, one optimizer with a learning-rate range, and how many trajectories to
record. A config's task entry may list several width multipliers; each becomes its own group.
Trajectory i of a group uses seed `seed + i` and a learning rate drawn log-uniformly from
`lr` (when a range) with a generator seeded by that seed, so any trajectory can be recomputed
alone and in any order.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nino.config import parse_number

from .arch import architecture
from .presets import PRESETS


class ConfigError(ValueError):
    """A malformed config; the message names the field."""


@dataclass(frozen=True)
class TaskSpec:
    """One task group: everything needed to (re)compute any of its trajectories."""

    name: str
    arch: dict[str, Any]
    dataset: dict[str, Any]
    optimizer: str = 'adamw'
    lr: tuple[float, float] = (1e-3, 1e-3)  # log-uniform range; equal ends: fixed
    weight_decay: float = 0.01
    batch_size: int = 128
    steps: int = 1000
    record_every: int = 4
    eval_every: int = 100
    trajectories: int = 1
    seed: int = 0
    threads: int = 1  # torch threads per trajectory (and the Ray task's CPU request)
    target: dict[str, Any] = field(default_factory=dict)  # e.g. {'metric': 'val_acc', 'value': 0.8}
    # record training *with* a nowcaster: {'ckpt': path, 'period': steps} and, once prepared for collection,
    # 'sha256' of the checkpoint file (what a store compares, not the path); empty: the base optimizer alone
    nowcast: dict[str, Any] = field(default_factory=dict)

    @property
    def num_states(self) -> int:
        """States recorded: the initial one and one after every `record_every` steps."""
        return self.steps // self.record_every + 1

    def trajectory_seed(self, index: int) -> int:
        return self.seed + index

    def trajectory_lr(self, index: int) -> float:
        lo, hi = self.lr
        if lo == hi:
            return float(lo)
        rng = np.random.default_rng(self.trajectory_seed(index))
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d['lr'] = list(self.lr)
        if not self.nowcast:  # left out, so that specs written before the field existed compare equal
            del d['nowcast']
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        return _build_spec(d, where=f"task '{d.get('name', '?')}'")


_INT_FIELDS = ('batch_size', 'steps', 'record_every', 'eval_every', 'trajectories', 'seed', 'threads')
_POSITIVE = ('batch_size', 'steps', 'record_every', 'eval_every', 'trajectories', 'threads')
_OPTIMIZERS = ('adamw', 'adam', 'sgd')


def _build_spec(d: dict[str, Any], where: str) -> TaskSpec:
    known = {f.name for f in fields(TaskSpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f'{where}: unknown field(s) {unknown}; known: {sorted(known)}')
    for name in ('name', 'arch', 'dataset'):
        if name not in d:
            raise ConfigError(f"{where}: missing field '{name}'")
    values = dict(d)
    for name in _INT_FIELDS:
        if name in values:
            _check_int(name, values[name], name in _POSITIVE, where)
    if not isinstance(values['arch'], dict) or 'type' not in values['arch']:
        raise ConfigError(f"{where}: field 'arch' must be a mapping with a 'type'")
    try:
        architecture(values['arch']['type']).check(values['arch'])
    except ValueError as err:
        raise ConfigError(f"{where}: field 'arch': {err}") from None
    if not isinstance(values['dataset'], dict) or 'name' not in values['dataset']:
        raise ConfigError(f"{where}: field 'dataset' must be a mapping with a 'name'")
    if values.get('optimizer', 'adamw') not in _OPTIMIZERS:
        raise ConfigError(f"{where}: field 'optimizer' must be one of {list(_OPTIMIZERS)}, "
                          f"got {values['optimizer']!r}")
    if 'lr' in values:
        values['lr'] = _lr_range(values['lr'], where)
    if values.get('nowcast'):
        values['nowcast'] = _nowcast(values['nowcast'], where)
    if 'weight_decay' in values:
        try:
            values['weight_decay'] = parse_number('weight_decay', values['weight_decay'], float, where)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    spec = TaskSpec(**values)
    if spec.record_every > spec.steps:
        raise ConfigError(f"{where}: field 'record_every' ({spec.record_every}) exceeds 'steps' ({spec.steps})")
    if spec.eval_every % spec.record_every:
        raise ConfigError(f"{where}: field 'eval_every' ({spec.eval_every}) must be a multiple of "
                          f"'record_every' ({spec.record_every})")
    return spec


_NOWCAST_FIELDS = ('ckpt', 'period')
_SHA256 = re.compile('[0-9a-f]{64}')


def _nowcast(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict) or not set(_NOWCAST_FIELDS) <= set(v) <= {*_NOWCAST_FIELDS, 'sha256'}:
        raise ConfigError(f"{where}: field 'nowcast' must be a mapping with {list(_NOWCAST_FIELDS)} "
                          f"(and optionally 'sha256'), got {v!r}")
    _check_int('nowcast.period', v['period'], True, where)
    if not isinstance(v['ckpt'], str) or not v['ckpt']:
        raise ConfigError(f"{where}: field 'nowcast.ckpt' must be a checkpoint path, got {v['ckpt']!r}")
    if 'sha256' in v and not (isinstance(v['sha256'], str) and _SHA256.fullmatch(v['sha256'])):
        raise ConfigError(f"{where}: field 'nowcast.sha256' must be 64 lowercase hex digits, got {v['sha256']!r}")
    return dict(v)


def _check_int(name: str, v: Any, positive: bool, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{where}: field '{name}' must be an integer, got {v!r}")
    if positive and v < 1:
        raise ConfigError(f"{where}: field '{name}' must be >= 1, got {v}")


def _lr_range(v: Any, where: str) -> tuple[float, float]:
    values = v if isinstance(v, (list, tuple)) else [v, v]
    try:
        low, high = (parse_number('lr', x, float, where) for x in values)
    except ValueError:  # not numbers, or not two of them
        low = high = math.nan
    if not 0 < low <= high:
        raise ConfigError(f"{where}: field 'lr' must be a positive number or a range [low, high], got {v!r}")
    return low, high


def expand_task(entry: dict[str, Any], index: int) -> list[TaskSpec]:
    """One config entry -> task groups (a preset filled in, one group per width multiplier)."""
    where = f"tasks[{index}]" + (f" ('{entry['name']}')" if isinstance(entry, dict) and 'name' in entry else '')
    if not isinstance(entry, dict):
        raise ConfigError(f'{where}: must be a mapping, got {type(entry).__name__}')
    entry = dict(entry)
    preset = entry.pop('preset', None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"{where}: field 'preset' must be one of {sorted(PRESETS)}, got {preset!r}")
        base = dict(PRESETS[preset])
        for key in ('arch', 'dataset'):
            if key in entry:
                if not isinstance(entry[key], dict):
                    raise ConfigError(f"{where}: field '{key}' must be a mapping")
                entry[key] = {**base[key], **entry[key]}
        entry = {**base, **entry}
        entry.setdefault('name', preset)
    widths = entry.pop('widths', None)
    if widths is None:
        return [_build_spec(entry, where)]
    if not isinstance(widths, list) or not widths or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ConfigError(f"{where}: field 'widths' must be a non-empty list of positive multipliers")
    specs = []
    for w in widths:
        arch = _scale_width(entry.get('arch'), w, where)
        name = entry.get('name', '?') if w == 1 else f"{entry.get('name', '?')}-w{w:g}"
        specs.append(_build_spec({**entry, 'name': name, 'arch': arch}, where))
    return specs


def _scale_width(arch: Any, mult: float, where: str) -> dict[str, Any]:
    if not isinstance(arch, dict) or 'type' not in arch:
        raise ConfigError(f"{where}: field 'arch' must be a mapping with a 'type'")
    try:
        family = architecture(arch['type'])
        family.check(arch)
        return family.scale_width(dict(arch), mult)
    except ValueError as err:
        raise ConfigError(f'{where}: {err}') from None


def load_tasks(config: dict[str, Any]) -> list[TaskSpec]:
    """All task groups of a collection config (its `tasks` list)."""
    if not isinstance(config, dict):
        raise ConfigError('config must be a mapping')
    tasks = config.get('tasks')
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError("field 'tasks' must be a non-empty list")
    specs = [s for i, entry in enumerate(tasks) for s in expand_task(entry, i)]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"field 'tasks': task names must be unique, repeated: {dup}")
    return specs


def read_config_file(path: str | Path) -> Any:
    """Parse a YAML config file; a missing file or bad YAML is a ConfigError naming the file."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f'{path}: config file not found') from None
    except yaml.YAMLError as err:
        raise ConfigError(f'{path}: not valid YAML: {err}') from None


_PATH_FIELDS = ('root', 'path', 'tokenizer', 'train_files', 'val_files', 'cache_dir')
_TOKENIZER_NAMES = ('bytes', 'gpt2')


def dataset_locations(dataset: dict[str, Any]) -> list[str]:
    """The dataset fields that say where files lie (a tokenizer given by name is not one)."""
    return [k for k in _PATH_FIELDS
            if k in dataset and not (k == 'tokenizer' and dataset[k] in _TOKENIZER_NAMES)]


def with_absolute_paths(spec: TaskSpec) -> TaskSpec:
    """The spec with its dataset paths (`dataset_locations`) and its nowcaster checkpoint resolved against
    the working directory."""
    dataset = dict(spec.dataset)
    for key in dataset_locations(dataset):
        dataset[key] = str(Path(dataset[key]).expanduser().resolve())
    d = {**spec.to_dict(), 'dataset': dataset}
    if spec.nowcast:
        d['nowcast'] = {**spec.nowcast, 'ckpt': str(Path(spec.nowcast['ckpt']).expanduser().resolve())}
    return TaskSpec.from_dict(d)
