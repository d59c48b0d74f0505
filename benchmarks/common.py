"""Stores shared by the loader and training benchmarks (built once under runs/bench-stores/)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nino.graph import param_shapes  # noqa: E402
from pipeline.record import METRICS, record_trajectory  # noqa: E402
from pipeline.store import TrajectoryStore  # noqa: E402
from pipeline.tasks import build_model, load_tasks  # noqa: E402

SHARED = ROOT.parent / 'shared'
STORES = ROOT / 'runs' / 'bench-stores'


def fm16_store(trajectories: int = 4, steps: int = 800) -> Path:
    """Real FM-16 trajectories (states every 4 steps) on the shared FashionMNIST subset."""
    path = STORES / f'fm16-{trajectories}x{steps}'
    if (path / 'manifest.parquet').exists():
        return path
    spec, = load_tasks({'tasks': [{'preset': 'fm-16', 'dataset': {'root': str(SHARED / 'data' /
                                                                          'fashion-mnist-t10k-4443')},
                                   'steps': steps, 'eval_every': steps, 'trajectories': trajectories}]})
    store = TrajectoryStore(path)
    group = store.ensure_group(spec, param_shapes(build_model(spec.arch)), list(METRICS))
    manifest = store.manifest()
    for i in range(trajectories):
        traj = record_trajectory(spec, i, sink=lambda s, b, i=i: group.write_states(i, s, b),
                                 chunk_states=group.chunk_states)
        group.write_metrics(i, traj.metrics)
        manifest.upsert(dict(task=spec.name, index=i, status='done', checksum=traj.checksum))
    return path


def gpt2_store(trajectories: int = 2, states: int = 25) -> Path:
    """Synthetic random-walk states in the layout of the published lm1b-3-24 GPT-2 (1.25M params)."""
    path = STORES / f'gpt2-3-24-{trajectories}x{states}'
    if (path / 'manifest.parquet').exists():
        return path
    spec, = load_tasks({'tasks': [{'preset': 'lm-3-24', 'name': 'lm1b-3-24',
                                   'arch': {'vocab_size': 50257, 'n_positions': 1024},
                                   'dataset': {'path': 'synthetic'}, 'steps': 200 * (states - 1),
                                   'trajectories': trajectories}]})
    layout = param_shapes(build_model(spec.arch))
    store = TrajectoryStore(path)
    group = store.ensure_group(spec, layout, list(METRICS))
    n = sum(int(np.prod(s)) for _, s in layout)
    rng = np.random.default_rng(0)
    manifest = store.manifest()
    for i in range(trajectories):
        x = rng.normal(0, 0.02, n).astype(np.float32)
        for start in range(0, states, group.chunk_states):
            block = []
            for _ in range(min(group.chunk_states, states - start)):
                x = x + rng.normal(0, 1e-3, n).astype(np.float32)
                block.append(x.astype(np.float16))
            group.write_states(i, start, np.stack(block))
        manifest.upsert(dict(task=spec.name, index=i, status='done'))
    return path
