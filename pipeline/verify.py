"""Checks of a trajectory store: shapes, completeness, NaN/Inf, checksums; names each bad trajectory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .store import TrajectoryStore


@dataclass
class Problem:
    task: str
    index: int | None
    message: str

    def __str__(self) -> str:
        where = self.task if self.index is None else f'{self.task}[{self.index}]'
        return f'{where}: {self.message}'


def verify_store(store: TrajectoryStore, progress: bool = False) -> tuple[int, list[Problem]]:
    """(trajectories checked, problems found); `progress` shows a bar over the trajectories."""
    manifest = store.manifest()
    problems: list[Problem] = []
    checked = 0
    groups = {name: store.group(name) for name in store.task_names()}
    bar = tqdm(total=sum(g.spec.trajectories for g in groups.values()), unit='traj', desc='verify',
               disable=not progress)
    for name, group in groups.items():
        spec = group.spec
        n_params = sum(int(np.prod(s)) for _, s in group.layout)
        want = (spec.trajectories, spec.num_states, n_params)
        if group.params.shape != want:
            problems.append(Problem(name, None, f'params has shape {group.params.shape}, spec says {want}'))
            bar.update(spec.trajectories)
            continue
        cs = group.chunk_states
        for i in range(spec.trajectories):
            bar.update(1)
            row = manifest.rows.get((name, i))
            if row is None or row['status'] != 'done':
                status = 'missing from the manifest' if row is None else f"status '{row['status']}'"
                problems.append(Problem(name, i, f'incomplete: {status}'))
                continue
            checked += 1
            digest = hashlib.sha256()
            bad = None
            for c, start in enumerate(range(0, spec.num_states, cs)):
                try:
                    block = group.read_params(i, slice(start, start + cs))
                except Exception as err:  # a codec error means the chunk's bytes are damaged
                    bad = f'chunk params/c/{i}/{c}/0 cannot be read ({type(err).__name__}: {err})'
                    break
                if not np.isfinite(block).all():
                    bad = f'chunk params/c/{i}/{c}/0 holds NaN/Inf'
                    break
                digest.update(np.ascontiguousarray(block).tobytes())
            if bad is None:
                digest.update(np.ascontiguousarray(group.read_metrics(i)).tobytes())
                if digest.hexdigest() != row['checksum']:
                    bad = 'checksum does not match the manifest (data changed after it was written)'
            if bad is not None:
                problems.append(Problem(name, i, bad))
    bar.close()
    for task, i in sorted(manifest.done()):
        if task not in groups:
            problems.append(Problem(task, i, 'in the manifest but the store has no such task group'))
    return checked, problems
