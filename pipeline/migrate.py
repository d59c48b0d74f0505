"""Rewrite a store in the current layout (`python -m pipeline migrate SRC DST`): a version-1 store, or a
version-2 store whose task groups were laid out before a layout change.

One Ray task per trajectory: it copies the trajectory's states shard by shard from SRC into DST
(written in `store.VERSION`'s layout), reads every shard back and compares it bit for bit,
copies the metrics, and checks that the SHA-256 of what DST now holds equals SRC's manifest
checksum. Only then does the driver mark it done in DST's manifest (copying SRC's row), so a
killed migration reruns exactly the trajectories that have no `done` row in DST. Trajectories
SRC does not mark done are not copied. SRC is only read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from .scheduler import remaining, run_per_trajectory
from .store import VERSION, StoreError, TaskGroup, TrajectoryStore


@dataclass
class MigrateSummary:
    scheduled: int = 0
    skipped: int = 0  # already migrated
    not_done: int = 0  # not done in the source, so not copied
    done: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [f'scheduled {self.scheduled}, done {self.done}, failed {len(self.failed)}, already migrated '
                 f'{self.skipped}, not done in the source {self.not_done}, {self.seconds:.1f} s']
        return '\n'.join(lines + [f'  failed: {f}' for f in self.failed])


def copy_trajectory(src: TaskGroup, dst: TaskGroup, index: int) -> str:
    """Copy one trajectory block by block with a read-back check; returns the SHA-256 of what dst holds."""
    digest = hashlib.sha256()
    step = dst.chunk_states
    n_states = src.params.shape[1]
    for start in range(0, n_states, step):
        block = src.read_params(index, slice(start, start + step))
        dst.write_states(index, start, block)
        back = dst.read_params(index, slice(start, start + step))
        if not np.array_equal(back.view(np.uint16), block.view(np.uint16)):
            raise StoreError(f'{dst.name}[{index}]: states {start}..{start + len(block)} read back differ')
        digest.update(np.ascontiguousarray(back).tobytes())
    metrics = src.read_metrics(index)
    dst.write_metrics(index, metrics)
    back = dst.read_metrics(index)
    if not np.array_equal(back, metrics, equal_nan=True):
        raise StoreError(f'{dst.name}[{index}]: metrics read back differ')
    digest.update(np.ascontiguousarray(back).tobytes())
    return digest.hexdigest()


def migrate_trajectory(src_url: str, dst_url: str, task: str, index: int, row: dict[str, Any]) -> dict[str, Any]:
    checksum = copy_trajectory(TrajectoryStore(src_url, mode='r').group(task),
                               TrajectoryStore(dst_url).group(task), index)
    if row.get('checksum') and checksum != row['checksum']:
        raise StoreError(f'{task}[{index}]: data does not match the source manifest checksum (source damaged?)')
    return {**row, 'checksum': checksum}


_migrate_remote = ray.remote(num_cpus=1)(migrate_trajectory)


@dataclass(frozen=True)
class _Task:
    name: str


def migrate(src_url: str, dst_url: str, address: str | None = None, retries: int = 3,
            progress: bool = True) -> MigrateSummary:
    """Migrate (or finish migrating) every done trajectory of SRC into DST."""
    if Path(src_url).resolve() == Path(dst_url).resolve() and '://' not in src_url + dst_url:
        raise StoreError(f'{dst_url}: migrate into a new store, not over the source')
    src = TrajectoryStore(src_url, mode='r')
    dst = TrajectoryStore(dst_url, version=VERSION)
    if dst.version != VERSION:
        raise StoreError(f'{dst_url}: an existing version-{dst.version} store; migrate into a new folder')
    src_rows = src.manifest().rows
    done = src.manifest().done()
    groups = []
    for name in src.task_names():
        group = src.group(name)
        dst.ensure_group(group.spec, group.layout, group.metric_names)
        groups.append((_Task(name), group.spec.trajectories))
    dst_manifest = dst.manifest()
    todo, skipped = remaining(groups, dst_manifest)
    ready = [item for item in todo if (item[0].name, item[1]) in done]
    summary = MigrateSummary(scheduled=len(ready), skipped=skipped, not_done=len(todo) - len(ready))

    def submit(item: tuple[_Task, int]) -> ray.ObjectRef:
        task, i = item
        return _migrate_remote.options(max_retries=retries, name=f'migrate:{task.name}[{i}]').remote(
            src_url, dst_url, task.name, i, src_rows[(task.name, i)])

    run = run_per_trajectory(ready, submit, dst_manifest, 'migrating', address, progress)
    summary.done, summary.failed, summary.seconds = len(run.done), run.failed, run.seconds
    return summary
