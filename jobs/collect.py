"""Collect trajectories with Ray: `python -m jobs.collect --config jobs/configs/NAME.yaml`.

One Ray task per trajectory writes straight into its own region of the store; the driver marks a
trajectory done in the manifest only after the task returned, i.e. after all its data is
written. A rerun schedules only trajectories that are missing or failed. Worker crashes are
retried by Ray (`--retries`). Locally `ray.init()` starts a cluster on this machine; on a
cluster submit the same command with `ray job submit --working-dir . -- python -m jobs.collect ...`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
import torch

from nino.checkpoint import file_sha256
from nino.graph import param_shapes
from pipeline.data import load_dataset
from pipeline.lease import LeaseError
from pipeline.record import METRICS, with_nowcaster
from pipeline.record_here import record_into
from pipeline.scheduler import remaining, run_per_trajectory, worker_host
from pipeline.store import StoreError, TrajectoryStore
from pipeline.tasks import ConfigError, TaskSpec, build_model, load_tasks, read_config_file, with_absolute_paths

#: Top-level fields of a collection config.
COLLECT_FIELDS = {'store', 'tasks'}


@dataclass
class Summary:
    scheduled: int = 0
    skipped: int = 0  # already done before this run
    done: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def per_hour(self) -> float:
        return self.done / self.seconds * 3600 if self.seconds else 0.0

    def __str__(self) -> str:
        lines = [f'scheduled {self.scheduled}, done {self.done}, failed {len(self.failed)}, '
                 f'already done {self.skipped}, {self.seconds:.1f} s, {self.per_hour:.0f} trajectories/hour']
        lines += [f'  failed: {f}' for f in self.failed]
        return '\n'.join(lines)


def load_config(path: str | Path) -> tuple[dict[str, Any], list[TaskSpec]]:
    """Read a collection config; dataset paths are made absolute (relative to the working dir)."""
    cfg = read_config_file(path)
    unknown = sorted(set(cfg) - COLLECT_FIELDS) if isinstance(cfg, dict) else []
    if unknown:
        raise ConfigError(f'{path}: unknown top-level field(s) {unknown}; known: {sorted(COLLECT_FIELDS)}')
    try:
        specs = load_tasks(cfg)
    except ConfigError as err:
        raise ConfigError(f'{path}: {err}') from None
    return cfg, [prepared_spec(spec, path) for spec in specs]


def prepared_spec(spec: TaskSpec, path: str | Path) -> TaskSpec:
    """The spec with absolute dataset paths, its data loaded once on the driver (missing files, corpora
    too small for the context and split, a tokenizer larger than the model) and its nowcaster, if any,
    set up on a fresh model (missing or bad checkpoint, period it cannot use) before any Ray work and
    its file's SHA-256 recorded as `nowcast.sha256`; errors name the config file and the task."""
    spec = with_absolute_paths(spec)
    try:
        load_dataset(spec.dataset, spec.arch.get('vocab_size'))
    except (ValueError, OSError) as err:
        raise ConfigError(f"{path}: task '{spec.name}': {err}") from None
    if spec.nowcast:
        try:
            model = build_model(spec.arch)
            with_nowcaster(spec, model, torch.optim.SGD(model.parameters(), lr=0.0))
            spec = replace(spec, nowcast={**spec.nowcast, 'sha256': file_sha256(spec.nowcast['ckpt'])})
        except (ValueError, OSError) as err:
            raise ConfigError(f"{path}: task '{spec.name}': field 'nowcast': {err}") from None
    return spec


def record_into_store(store_url: str, spec_dict: dict[str, Any], index: int) -> dict[str, Any]:
    """Record one trajectory into its region of the store; returns its manifest row."""
    spec = TaskSpec.from_dict(spec_dict)
    traj = record_into(TrajectoryStore(store_url).group(spec.name), spec, index)
    last = traj.metrics[-1]
    return dict(task=spec.name, index=index, status='done', seed=traj.seed, lr=traj.lr,
                hparams=f'{{"lr": {traj.lr!r}, "seed": {traj.seed}}}', final_train_loss=float(last[0]),
                final_val_loss=float(last[2]), final_val_acc=float(last[3]), wall_time=traj.wall_time,
                host=worker_host(), checksum=traj.checksum, error=None, updated=time.time())


_record_remote = ray.remote(record_into_store)


def collect(config: str | Path, store_url: str | None = None, address: str | None = None,
            retries: int = 3, progress: bool = True) -> Summary:
    """Run (or resume) a collection; returns what happened."""
    cfg, specs = load_config(config)
    store_url = store_url or cfg.get('store')
    if not store_url:
        raise ConfigError(f"{config}: no store given (field 'store' or --store)")
    store = TrajectoryStore(store_url)
    for spec in specs:
        store.ensure_group(spec, param_shapes(build_model(spec.arch)), list(METRICS))
    manifest = store.manifest()
    todo, skipped = remaining([(s, s.trajectories) for s in specs], manifest)
    summary = Summary(scheduled=len(todo), skipped=skipped)

    def submit(item: tuple[TaskSpec, int]) -> ray.ObjectRef:
        spec, i = item
        return _record_remote.options(num_cpus=spec.threads, max_retries=retries,
                                      name=f'record:{spec.name}[{i}]').remote(store_url, spec.to_dict(), i)

    def failed_fields(item: tuple[TaskSpec, int]) -> dict[str, Any]:
        spec, i = item
        return dict(seed=spec.trajectory_seed(i), lr=spec.trajectory_lr(i))

    run = run_per_trajectory(todo, submit, manifest, 'trajectories', address, progress, failed_fields)
    summary.done, summary.failed, summary.seconds = len(run.done), run.failed, run.seconds
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m jobs.collect', description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True, help='YAML config (see jobs/configs/)')
    parser.add_argument('--store', default=None, help="store path or fsspec URL (default: the config's 'store')")
    parser.add_argument('--address', default=None, help='Ray cluster address (default: local, or RAY_ADDRESS)')
    parser.add_argument('--retries', type=int, default=3, help='retries of a trajectory whose worker died')
    args = parser.parse_args(argv)
    try:
        summary = collect(args.config, args.store, args.address or os.environ.get('RAY_ADDRESS'), args.retries)
    except (ConfigError, StoreError, LeaseError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(summary)
    return 1 if summary.failed else 0


if __name__ == '__main__':
    sys.exit(main())
