"""Recording trajectories into a store in this process, one after another (no Ray): for tests,
benchmarks and small checks. `jobs.collect` records the same way, one trajectory per Ray task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nino.graph import param_shapes

from .record import METRICS, Trajectory, record_trajectory
from .store import TaskGroup, TrajectoryStore
from .tasks import TaskSpec, build_model, load_tasks


def record_into(group: TaskGroup, spec: TaskSpec, index: int) -> Trajectory:
    """Record trajectory `index` of `spec` into its region of the task's group: states streamed in
    chunks as they are recorded, then the metrics."""
    traj = record_trajectory(spec, index, sink=lambda start, block: group.write_states(index, start, block),
                             chunk_states=group.chunk_states)
    group.write_metrics(index, traj.metrics)
    return traj


def record_store(path: str | Path, entries: list[dict[str, Any]]) -> Path:
    """Every trajectory of the task entries (as under `tasks:` in a collect config) recorded into the
    store at `path`, each marked done in its manifest."""
    store = TrajectoryStore(path)
    manifest = store.manifest()
    for spec in load_tasks({'tasks': entries}):
        group = store.ensure_group(spec, param_shapes(build_model(spec.arch)), list(METRICS))
        for i in range(spec.trajectories):
            traj = record_into(group, spec, i)
            manifest.upsert(dict(task=spec.name, index=i, status='done', seed=traj.seed, lr=traj.lr,
                                 checksum=traj.checksum))
    return Path(path)
