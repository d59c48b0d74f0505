"""Meta-train a nowcaster: `python -m jobs.train --store URL --run-dir runs/NAME [--resume auto]`.

Settings come from `--config jobs/configs/train-*.yaml` (TrainConfig fields), then the flags
below override them; `--set window.step=12 --set model.hid=128` overrides any field, nested ones
with dots (values are read as YAML). Data-parallel training: `torchrun --nproc_per_node N -m jobs.train ...`
(gloo on CPU, NCCL on CUDA; rank 0 writes logs and checkpoints). The run directory holds
`log.csv`, `tensorboard/`, `checkpoints/step-*.pt` (resume state) and `nowcaster.safetensors`,
which `nino.NiNo(..., ckpt=...)` loads directly.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch.distributed as dist
import yaml

from metatrain.training import TrainConfig, TrainingDiverged, train
from pipeline.tasks import read_config_file


def apply_override(values: dict, item: str) -> None:
    """Apply one `KEY[.SUBKEY]=VALUE` to a config mapping (the value parsed as YAML)."""
    key, sep, raw = item.partition('=')
    if not sep or not key:
        raise ValueError(f'--set {item!r}: expected KEY=VALUE, e.g. window.step=12')
    *parents, leaf = key.split('.')
    target = values
    for name in parents:
        target = target.setdefault(name, {})
        if not isinstance(target, dict):
            raise ValueError(f'--set {item!r}: {name!r} is not a mapping')
    try:
        target[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ValueError(f'--set {item!r}: {err}') from None


def build_config(args: argparse.Namespace) -> TrainConfig:
    values = {}
    if args.config:
        values = read_config_file(args.config) or {}
        if not isinstance(values, dict):
            raise ValueError(f'{args.config}: must hold a mapping of training config fields')
    overrides = dict(store=args.store, run_dir=args.run_dir, steps=args.steps, amp=args.amp, device=args.device,
                     num_workers=args.num_workers, seed=args.seed, holdout=args.holdout,
                     tasks=args.tasks.split(',') if args.tasks else None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    for item in args.set or []:
        apply_override(values, item)
    for name in ('store', 'run_dir'):
        if not values.get(name):
            raise ValueError(f"no {name} given (--{name.replace('_', '-')} or the config's '{name}')")
    return TrainConfig.from_dict(values)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m jobs.train', description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', help='YAML file of TrainConfig fields')
    parser.add_argument('--store', help='trajectory store path or fsspec URL')
    parser.add_argument('--tasks', help='comma-separated task groups (default: all in the store)')
    parser.add_argument('--run-dir', dest='run_dir', help='where logs and checkpoints go')
    parser.add_argument('--resume', default=None, help="'auto' (newest valid checkpoint) or a checkpoint path")
    parser.add_argument('--steps', type=int)
    parser.add_argument('--amp', choices=['none', 'bf16', 'fp16'])
    parser.add_argument('--device')
    parser.add_argument('--num-workers', dest='num_workers', type=int)
    parser.add_argument('--holdout', type=int)
    parser.add_argument('--seed', type=int)
    parser.add_argument('--set', action='append', metavar='KEY=VALUE',
                        help='override a config field, nested with dots (repeatable)')
    parser.add_argument('--no-progress', action='store_true')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)

    try:
        cfg = build_config(args)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    distributed = int(os.environ.get('WORLD_SIZE', '1')) > 1
    if distributed:
        dist.init_process_group('nccl' if cfg.device.startswith('cuda') else 'gloo')
    try:
        summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    except TrainingDiverged as err:
        print(f'error: {err}', file=sys.stderr)
        return 3
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    finally:
        if distributed:
            dist.destroy_process_group()
    print(f"done: step {summary['step']}, last loss {summary['losses'][-1] if summary['losses'] else float('nan'):.5f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
