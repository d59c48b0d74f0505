"""One Ray task per trajectory, each finished one recorded in the manifest as it lands.

Shared by collection and conversion. An item is a (group, index) pair, the group being anything
with a `.name` (a task spec, a published task). `remaining` lists the items the manifest does not
mark done; the driver submits every item, waits for them in completion order, writes the returned
manifest row (or a `failed` row with the error's first line) and advances a progress bar. Ray
retries an item whose worker dies (`max_retries`).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray
from tqdm import tqdm

from .manifest import Manifest
from .watchdog import init_ray

_ANSI = re.compile(r'\x1b\[[0-9;]*m')


def describe_failure(err: BaseException) -> str:
    """One line for a failed Ray task: the root exception's type and message (not Ray's header), no colours."""
    cause = getattr(err, 'cause', None)
    if isinstance(err, ray.exceptions.RayTaskError) and cause is not None:
        err = cause
    lines = [line for line in _ANSI.sub('', str(err)).splitlines() if line.strip()]
    message = lines[-1].strip() if isinstance(err, ray.exceptions.RayError) and lines else ' '.join(lines[:1])
    return f'{type(err).__name__}: {message}'[:500]


def worker_host() -> str:
    """Where a Ray task runs: the host name and the Ray node (several nodes may share one host)."""
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return f'{socket.gethostname()} node {node[:12]}' if node else socket.gethostname()


Group = TypeVar('Group')
Item = tuple[Group, int]


@dataclass
class RunResult:
    done: list[Any] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def remaining(groups: Sequence[tuple[Group, int]], manifest: Manifest) -> tuple[list[Item], int]:
    """For (group, trajectory count) pairs: (the items not done yet, how many are done already)."""
    done = manifest.done()
    todo = [(g, i) for g, n in groups for i in range(n) if (g.name, i) not in done]
    return todo, sum(n for _, n in groups) - len(todo)


def run_per_trajectory(items: Sequence[Item], submit: Callable[[Item], ray.ObjectRef], manifest: Manifest,
                       desc: str, address: str | None = None, progress: bool = True,
                       failed_fields: Callable[[Item], dict[str, Any]] | None = None) -> RunResult:
    """Run `submit(item)` for every item on Ray; manifest rows are written as results arrive."""
    result = RunResult()
    if not items:
        return result
    with manifest.lease():  # refused here if another driver writes this store; rows re-read once held
        done = manifest.done()
        items = [item for item in items if (item[0].name, item[1]) not in done]
        if items and not ray.is_initialized():
            init_ray(address)
        start = time.time()
        _run(items, submit, manifest, desc, progress, failed_fields, result)
        result.seconds = time.time() - start
    return result


def _run(items: Sequence[Item], submit: Callable[[Item], ray.ObjectRef], manifest: Manifest, desc: str,
         progress: bool, failed_fields: Callable[[Item], dict[str, Any]] | None, result: RunResult) -> None:
    pending = {submit(item): item for item in items}
    with tqdm(total=len(items), desc=desc, unit='traj', disable=not progress) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(ready[0])
            task, index = item[0].name, item[1]
            try:
                row = ray.get(ready[0])
                result.done.append(item)
            except Exception as err:  # the task raised, or its worker was lost past its retries
                row = dict(task=task, index=index, status='failed', error=describe_failure(err),
                           updated=time.time(), **(failed_fields(item) if failed_fields else {}))
                result.failed.append(f'{task}[{index}]: {row["error"]}')
            manifest.upsert(row)
            bar.update(1)
