"""Data shared by the benchmarks, built once under runs/ (the first run takes a while).

- `real_store()`: real trajectories recorded by `jobs.collect` with benchmarks/configs/real-trajectories.yaml
  (4 FM-16 runs in the published shape, 2,688 states x 14,378 parameters; 2 byte-level GPT-2 runs).
- `published_files()`: the paper's published layout and naming: fm-16.dat holds the 4 real FM-16
  trajectories; lm1b-3-24_p1/_p2.dat hold one synthetic random-walk trajectory each in the
  published GPT-2 layout (124 states x 1,252,464 parameters: GPT-2 runs of that size are not
  recorded on this machine).
- `published_store(version)`: those files converted with `pipeline.convert` into a store of the
  given layout version (version 1 stores are what this project wrote before).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.published import published_task  # noqa: E402
from pipeline.store import TrajectoryStore  # noqa: E402

RUNS = ROOT / 'runs'
SHARED = ROOT.parent / 'shared'
CONFIG = ROOT / 'benchmarks' / 'configs' / 'real-trajectories.yaml'
#: (n_traj, n_states) of the published-layout files the benchmarks build.
SHAPES = {'fm-16': (4, 2688), 'lm1b-3-24': (2, 124)}


def real_store() -> Path:
    """The real-trajectory store (version 1), collected on first use (~15 minutes on 2 cores)."""
    path = RUNS / 'bench-stores' / 'real-v1'
    store = TrajectoryStore(path, version=1) if not (path / 'zarr.json').exists() else None
    if store is not None or len(TrajectoryStore(path, mode='r').manifest().done()) < 6:
        from jobs.collect import collect
        print(collect(CONFIG, str(path)))
    return path


def published_files() -> Path:
    """A folder with fm-16 and lm1b-3-24 files in the published layout (see the module docstring)."""
    folder = RUNS / 'bench-published'
    folder.mkdir(parents=True, exist_ok=True)
    fm = published_task('fm-16').with_shape(*SHAPES['fm-16'])
    if not (folder / fm.metrics_file).exists():
        group = TrajectoryStore(real_store(), mode='r').group('fm-16')
        out = np.memmap(folder / 'fm-16.dat', np.float16, 'w+', shape=(fm.n_traj, fm.n_states, fm.n_params))
        metrics = np.zeros((fm.n_traj, fm.n_states, len(fm.metrics)), np.float16)
        for i in range(fm.n_traj):
            out[i] = group.read_params(i)
            recorded = group.read_metrics(i)  # train_loss, train_acc, val_loss, val_acc
            metrics[i] = recorded[:, [2, 3, 0, 1]]  # published order: test_loss, test_acc, train_loss, train_acc
        out.flush()
        metrics.tofile(folder / fm.metrics_file)
    lm = published_task('lm1b-3-24').with_shape(*SHAPES['lm1b-3-24'])
    if not (folder / lm.metrics_file).exists():
        rng = np.random.default_rng(0)
        for name in lm.part_files():
            out = np.memmap(folder / name, np.float16, 'w+', shape=(1, lm.n_states, lm.n_params))
            x = rng.normal(0, 0.05, lm.n_params).astype(np.float32)
            for s in range(lm.n_states):
                x += rng.normal(0, 1e-3, lm.n_params).astype(np.float32)
                out[0, s] = x.astype(np.float16)
            out.flush()
        rng.random((lm.n_traj, lm.n_states, len(lm.metrics))).astype(np.float16).tofile(folder / lm.metrics_file)
    return folder


def published_store(version: int = 2) -> Path:
    """The published-layout files converted into a store of layout `version`."""
    from pipeline.convert import convert
    path = RUNS / 'bench-stores' / f'published-v{version}'
    if not (path / 'zarr.json').exists():
        TrajectoryStore(path, version=version)
    if len(TrajectoryStore(path, mode='r').manifest().done()) < sum(n for n, _ in SHAPES.values()):
        print(convert(list(SHAPES), published_files(), str(path), SHAPES))
    return path
