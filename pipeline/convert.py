"""Convert the published float16 memmaps into a trajectory store, one Ray task per trajectory.

Each task reads its trajectory from the source file block by block (one store chunk of states
at a time, with plain file reads into a reused buffer, so memory stays bounded whatever the
file size), writes it, reads it back and compares every value with the source, and returns the
manifest row with a checksum. The driver marks a trajectory done only then, so a killed
conversion reruns exactly the trajectories that have no `done` row.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from nino.graph import param_shapes

from .published import PublishedTask, published_task
from .scheduler import remaining, run_per_trajectory, worker_host
from .store import StoreError, TrajectoryStore
from .tasks import TaskSpec, build_model


class SourceError(ValueError):
    """A source file that is missing or does not have the published layout."""


@dataclass
class ConvertSummary:
    scheduled: int = 0
    skipped: int = 0
    done: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes_read: int = 0

    def __str__(self) -> str:
        rate = self.bytes_read / self.seconds / 1e6 if self.seconds else 0.0
        lines = [f'scheduled {self.scheduled}, done {self.done}, failed {len(self.failed)}, already done '
                 f'{self.skipped}, {self.seconds:.1f} s, {rate:.0f} MB/s of source']
        return '\n'.join(lines + [f'  failed: {f}' for f in self.failed])


def check_sources(task: PublishedTask, source: Path) -> None:
    """Every file of the task exists with exactly the size its published shape implies."""
    expected = task.file_sizes()
    for name, size in expected.items():
        path = source / name
        if not path.is_file():
            raise SourceError(f'{path}: missing (task {task.name} needs {sorted(expected)})')
        if path.stat().st_size != size:
            rows = task.n_traj if name == task.metrics_file else task.n_traj // task.parts
            raise SourceError(f'{path}: {path.stat().st_size} bytes, but ({rows}, {task.n_states}, ...) float16 '
                              f'means {size}')


def _locate(task: PublishedTask, index: int) -> tuple[str, int]:
    per_part = task.n_traj // task.parts
    return task.part_files()[index // per_part], index % per_part


def convert_trajectory(store_url: str, task_dict: dict[str, Any], source: str, index: int) -> dict[str, Any]:
    """Copy trajectory `index` of a published task into the store and check it; returns its manifest row."""
    start = time.time()
    task = PublishedTask(**{**task_dict, 'metrics': tuple(task_dict['metrics'])})
    group = TrajectoryStore(store_url).group(task.name)
    filename, local = _locate(task, index)
    state_bytes = 2 * task.n_params
    cs = group.chunk_states
    buf = np.empty((cs, task.n_params), dtype=np.float16)
    digest = hashlib.sha256()
    with open(Path(source) / filename, 'rb') as f:
        for s in range(0, task.n_states, cs):
            n = min(cs, task.n_states - s)
            f.seek((local * task.n_states + s) * state_bytes)
            block = buf[:n]
            if f.readinto(memoryview(block).cast('B')) != n * state_bytes:
                raise SourceError(f'{filename}: short read at trajectory {local}, state {s}')
            group.write_states(index, s, block)
            back = group.read_params(index, slice(s, s + n))
            if not np.array_equal(back.view(np.uint16), block.view(np.uint16)):
                raise StoreError(f'{task.name}[{index}]: states {s}..{s + n} read back differ from {filename}')
            digest.update(block.tobytes())
    m = len(task.metrics)
    with open(Path(source) / task.metrics_file, 'rb') as f:
        f.seek(index * task.n_states * m * 2)
        metrics = np.frombuffer(f.read(task.n_states * m * 2), dtype=np.float16).reshape(task.n_states, m)
    metrics = metrics.astype(np.float32)
    group.write_metrics(index, metrics)
    if not np.array_equal(group.read_metrics(index), metrics, equal_nan=True):
        raise StoreError(f'{task.name}[{index}]: metrics read back differ from {task.metrics_file}')
    digest.update(metrics.tobytes())
    last = dict(zip(task.metrics, metrics[-1].tolist()))
    return dict(task=task.name, index=index, status='done', seed=None, lr=None,
                hparams=f'{{"source": "{filename}", "row": {local}}}',
                final_train_loss=last.get('train_loss'), final_val_loss=last.get('test_loss'),
                final_val_acc=last.get('test_acc'), wall_time=time.time() - start, host=worker_host(),
                checksum=digest.hexdigest(), error=None, updated=time.time())


_convert_remote = ray.remote(num_cpus=1)(convert_trajectory)


def prepare(tasks: list[str], source: Path, store: TrajectoryStore,
            shapes: dict[str, tuple[int, int]] | None = None) -> list[PublishedTask]:
    """Check the sources and create (or check) the task groups."""
    out = []
    for name in tasks:
        task = published_task(name)
        if shapes and name in shapes:
            task = task.with_shape(*shapes[name])
        check_sources(task, source)
        spec = TaskSpec.from_dict(task.spec_dict())
        layout = param_shapes(build_model(spec.arch))
        n = sum(int(np.prod(s)) for _, s in layout)
        if n != task.n_params:
            raise SourceError(f'{name}: the architecture has {n} parameters but the files hold {task.n_params}')
        group = store.ensure_group(spec, layout, list(task.metrics))
        group.group.attrs['source'] = {'files': task.files(), 'repo': 'SamsungSAILMontreal/nino_metatrain@mmap'}
        out.append(task)
    return out


def convert(tasks: list[str], source: str | Path, store_url: str, shapes: dict[str, tuple[int, int]] | None = None,
            address: str | None = None, retries: int = 3, progress: bool = True) -> ConvertSummary:
    """Convert (or finish converting) published tasks from `source` (a folder with the files)."""
    source = Path(source)
    store = TrajectoryStore(store_url)
    published = prepare(tasks, source, store, shapes)
    manifest = store.manifest()
    todo, skipped = remaining([(t, t.n_traj) for t in published], manifest)
    summary = ConvertSummary(scheduled=len(todo), skipped=skipped)

    def submit(item: tuple[PublishedTask, int]) -> ray.ObjectRef:
        task, i = item
        return _convert_remote.options(max_retries=retries, name=f'convert:{task.name}[{i}]').remote(
            store_url, {**task.__dict__, 'metrics': list(task.metrics)}, str(source.resolve()), i)

    run = run_per_trajectory(todo, submit, manifest, 'converting', address, progress)
    summary.done, summary.failed, summary.seconds = len(run.done), run.failed, run.seconds
    summary.bytes_read = sum(2 * t.n_states * t.n_params for t, _ in run.done)
    return summary
