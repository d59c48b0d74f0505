"""Collection throughput, Ray + recording overhead, worker scaling, and the params codec choice.

    python benchmarks/collect.py [--steps 400] [--trajectories 4]

1. FM-16 (the paper's convnet, shared FashionMNIST subset, batch 128, 1 thread per trajectory):
   a bare PyTorch loop; the same run recorded in-process; the same runs through the Ray job
   with 1 and with 2 workers. Prints trajectories/hour per core, the overhead of Ray + recording
   over the bare loop, and the 1 -> 2 worker scaling.
2. Codecs: one recorded FM-16 and one GPT-2 (lm-3-24) trajectory written with every candidate
   params codec; prints store bytes over raw float16 bytes and write/read throughput.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.collect import collect  # noqa: E402
from nino.graph import param_shapes  # noqa: E402
from pipeline.data import load_dataset  # noqa: E402
from pipeline.record import METRICS, loss_and_correct, make_optimizer, record_trajectory, torch_threads  # noqa: E402
from pipeline.store import PARAMS_CODECS, TrajectoryStore  # noqa: E402
from pipeline.tasks import TaskSpec, build_model, load_tasks  # noqa: E402

SHARED = ROOT.parent / 'shared'


def fm16_entry(steps: int, trajectories: int) -> dict:
    return {'preset': 'fm-16', 'dataset': {'root': str(SHARED / 'data' / 'fashion-mnist-t10k-4443'), 'val_size': 443},
            'steps': steps, 'eval_every': steps // 2, 'trajectories': trajectories}


def bare_loop(spec: TaskSpec) -> float:
    """Seconds for the same training without recording, evaluation or Ray."""
    data = load_dataset(spec.dataset)
    start = time.perf_counter()
    with torch_threads(spec.threads):
        torch.manual_seed(spec.trajectory_seed(0))
        model = build_model(spec.arch)
        opt = make_optimizer(spec.optimizer, model.parameters(), spec.trajectory_lr(0), spec.weight_decay)
        gen = torch.Generator().manual_seed(spec.trajectory_seed(0))
        for _ in range(spec.steps):
            x, y = data.train_batch(spec.batch_size, gen)
            loss, _ = loss_and_correct(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def ray_run(tmp: Path, entry: dict, workers: int) -> float:
    import ray
    store = tmp / f'store-{workers}'
    config = tmp / f'cfg-{workers}.yaml'
    config.write_text(yaml.safe_dump({'store': str(store), 'tasks': [entry]}))
    ray.init(num_cpus=workers, include_dashboard=False, logging_level='ERROR', log_to_driver=False)
    try:
        # warm the workers (imports, dataset) so the figure is steady-state collection
        warm = dict(entry, trajectories=workers, steps=4, eval_every=4)
        warm_cfg = tmp / f'warm-{workers}.yaml'
        warm_cfg.write_text(yaml.safe_dump({'store': str(tmp / f'warm-{workers}'), 'tasks': [warm]}))
        collect(warm_cfg, progress=False)
        start = time.perf_counter()
        summary = collect(config, progress=False)
        assert summary.done == entry['trajectories'], summary
        return time.perf_counter() - start
    finally:
        ray.shutdown()


def throughput(steps: int, trajectories: int) -> None:
    entry = fm16_entry(steps, trajectories)
    spec, = load_tasks({'tasks': [entry]})
    load_dataset(spec.dataset)
    bare = min(bare_loop(spec) for _ in range(2))
    t0 = time.perf_counter()
    record_trajectory(spec, 0)
    recorded = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        one = ray_run(Path(d), entry, 1)
        two = ray_run(Path(d), entry, 2)
    per_traj_1 = one / trajectories
    print(f'\n### FM-16 collection ({steps} steps, batch 128, {trajectories} trajectories, 1 thread each)\n')
    print('| run | seconds per trajectory | trajectories/hour | overhead over bare loop |')
    print('|---|---:|---:|---:|')
    print(f'| bare PyTorch loop | {bare:.2f} | {3600 / bare:.0f} | - |')
    print(f'| recorded in-process (states every 4 steps, 2 evaluations) | {recorded:.2f} | {3600 / recorded:.0f} '
          f'| {100 * (recorded / bare - 1):+.1f}% |')
    print(f'| Ray job, 1 worker | {per_traj_1:.2f} | {3600 / per_traj_1:.0f} | {100 * (per_traj_1 / bare - 1):+.1f}% |')
    print(f'| Ray job, 2 workers | {two / trajectories:.2f} | {3600 * trajectories / two:.0f} | - |')
    print(f'\nper core: {3600 / per_traj_1:.0f} trajectories/hour; scaling 1 -> 2 workers: {one / two:.2f}x')


def codecs(steps: int) -> None:
    specs = load_tasks({'tasks': [
        fm16_entry(steps, 1),
        {'preset': 'lm-3-24', 'dataset': {'path': str(SHARED / 'data' / 'tinyshakespeare' / 'input.txt')},
         'steps': 1000, 'record_every': 50, 'eval_every': 500}]})
    print('\n### Params codecs (store bytes / raw float16 bytes; throughput of the zarr write and read)\n')
    print('| trajectory | codec | ratio | write MB/s | read MB/s |')
    print('|---|---|---:|---:|---:|')
    for spec in specs:
        traj = record_trajectory(spec, 0)
        raw = traj.params.nbytes
        for name in PARAMS_CODECS:
            with tempfile.TemporaryDirectory() as d:
                store = TrajectoryStore(Path(d) / 's')
                group = store.ensure_group(spec, param_shapes(build_model(spec.arch)), list(METRICS), codec=name)
                cs = group.chunk_states
                t0 = time.perf_counter()
                for start in range(0, len(traj.params), cs):
                    group.write_states(0, start, traj.params[start:start + cs])
                write = time.perf_counter() - t0
                t0 = time.perf_counter()
                back = group.read_params(0)
                read = time.perf_counter() - t0
                assert np.array_equal(back.view(np.uint16), traj.params.view(np.uint16))
                size = sum(f.stat().st_size for f in (Path(d) / 's' / spec.name / 'params' / 'c').rglob('*')
                           if f.is_file())
            print(f'| {spec.name} {traj.params.shape} | {name} | {size / raw:.3f} | {raw / write / 1e6:.0f} '
                  f'| {raw / read / 1e6:.0f} |', flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--trajectories', type=int, default=4)
    args = parser.parse_args()
    print(f'torch {torch.__version__}; {args.steps} FM-16 steps per trajectory')
    codecs(args.steps)
    throughput(args.steps, args.trajectories)


if __name__ == '__main__':
    main()
