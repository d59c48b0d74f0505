"""Evaluate nowcasters against Adam: `python -m jobs.evaluate --config jobs/configs/eval-*.yaml
--nino CKPT[,CKPT...] --seeds 5 --out results/NAME [--tasks a,b] [--address ADDR]`.

For every (task, seed, method) one Ray task trains the task from that seed: with the base optimizer
alone ('adam'), with each nowcaster checkpoint (named after its file), and with the
linear-extrapolation baseline ('linear'); same initial weights and batches for all methods. Each
finished run is saved under OUT/runs/ and skipped by a rerun; its file name carries a digest of the
task spec, the period (nowcasting methods only) and the checkpoint's bytes, so a changed config or a
retrained checkpoint is run again rather than read stale. `--period N` overrides every task's
period; `--guard N` adds each nowcaster guarded (`nino.NiNo(guard=...)`, scoring N batches of the
dataset's guard split (`guard_size`) or else N fixed training batches; method NAME+guardN, with
`--guard-delay D` judged D steps after the nowcast: NAME+guardNdD; without a delay `--guard-horizons H`
also scores the predictions at k/2, ..., k/2^(H-1): NAME+guardN+hH). `--upd-scale`, `--k-power` and
`--k-max` take comma-separated values and run each nowcaster with every combination (NiNo's
`upd_scale`, `k_power`, `k_max`; methods NAME+uS+pP+kK, defaults left out of the name; see
`metatrain.evaluation.MethodOptions`); `--record-initial` adds each with NiNo's `record_initial`
(NAME+init). `--reorder N` adds the controls adam+order1 ... adam+orderN: Adam from the same initial
weights with its batches in another order, whose rows (how often they end at least as good as adam,
their paired difference) show the noise the other rows sit in. Seeds are 1000, 1001, ...;
`--seed-offset N` starts them at 1000 + N, so settings chosen on the first seeds can be confirmed on
fresh ones (runs of a seed already in OUT are reused whatever the offset). Outputs in OUT:
curves.json, curves.csv, summary.md (the speedup table, then steps to target and final metric per
seed), speedups.csv, curves_<task>.png, speedup.png, for this call's methods; `python -m jobs.report`
writes the same over every run in OUT, whatever call made it.

The config lists tasks (task-spec entries, as in collection configs) with a `target` value per
task and an optional `period` (steps between nowcasts, default 1000), e.g.

    seeds: 3
    tasks:
      - preset: fm-16
        dataset: {root: ../shared/data/fashion-mnist-t10k-4443, val_size: 443}
        steps: 4000
        eval_every: 100
        period: 1000
        target: {metric: val_acc, value: 0.80}
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from metatrain.evaluation import (
    BASE,
    LINEAR,
    Curve,
    MethodOptions,
    load_curve,
    method_nowcaster,
    metric_of,
    parse_method,
    run_curve,
    speedups,
)
from nino.checkpoint import file_sha256
from pipeline.scheduler import describe_failure
from pipeline.tasks import ConfigError, TaskSpec, expand_task, read_config_file
from pipeline.watchdog import init_ray

from .collect import prepared_spec
from .report import plot_curves, plot_speedups, write_curves, write_table


def load_eval_config(path: str | Path) -> tuple[dict[str, Any], list[tuple[TaskSpec, int, float]]]:
    """(config, [(spec, period, target)]) with dataset paths made absolute."""
    cfg = read_config_file(path)
    if not isinstance(cfg, dict) or not isinstance(cfg.get('tasks'), list):
        raise ConfigError(f"{path}: field 'tasks' must be a list")
    pairs = []
    for i, entry in enumerate(cfg['tasks']):
        entry = dict(entry) if isinstance(entry, dict) else entry
        period = entry.pop('period', 1000) if isinstance(entry, dict) else 1000
        try:
            pairs += [(spec, period) for spec in expand_task(entry, i)]
        except ConfigError as err:
            raise ConfigError(f'{path}: {err}') from None
    out = []
    for spec, period in pairs:
        target = spec.target.get('value')
        if not isinstance(target, (int, float)) or isinstance(target, bool):
            raise ConfigError(f"{path}: task '{spec.name}': field 'target' needs a numeric 'value'")
        if not isinstance(period, int) or isinstance(period, bool) or period < 1:
            raise ConfigError(f"{path}: task '{spec.name}': field 'period' must be a positive integer, "
                              f"got {period!r}")
        try:
            metric_of(spec)
        except ValueError as err:
            raise ConfigError(f'{path}: {err}') from None
        out.append((prepared_spec(spec, path), period, float(target)))
    return cfg, out


EVAL_SEED = 1000  # the first evaluation seed; collections use seeds well below it


def run_file(spec: TaskSpec, period: int, seed: int, method: str, ckpt_digest: str) -> str:
    """File name of one finished run (`seed` counted from EVAL_SEED): readable prefix and a digest of
    everything that defines the run (not the period for the base optimizer alone, which never nowcasts,
    so one Adam run serves evaluations at every period)."""
    nowcasts = parse_method(method).name != BASE
    key = hashlib.sha256(json.dumps([spec.to_dict(), period if nowcasts else None, ckpt_digest],
                                    sort_keys=True).encode())
    return f'{spec.name}-s{seed}-{method}-{key.hexdigest()[:10]}.json'


def _run(spec_dict: dict, seed: int, method: str, ckpt: str | None, period: int) -> dict:
    spec = TaskSpec.from_dict(spec_dict)
    nowcaster = method_nowcaster(method, ckpt)
    return run_curve(spec, seed, method, nowcaster, period).to_dict()


_run_remote = ray.remote(num_cpus=1, max_retries=2)(_run)


class RunFailed(RuntimeError):
    """An evaluation run raised; the message holds its root cause."""


def check_periods(task_list: list[tuple[TaskSpec, int, float]], methods: dict[str, str | None]) -> None:
    """Every task's period must be a multiple of each nowcaster's ctx (its states are period // ctx apart)
    and longer than a guard's delay (each nowcast is judged before the next)."""
    for method, ckpt in methods.items():
        options = parse_method(method)
        if options.name == BASE:
            continue
        try:
            ctx = method_nowcaster(method, ckpt).config.ctx
        except (ValueError, OSError) as err:
            raise ConfigError(str(err)) from None
        for spec, period, _ in task_list:
            if period % ctx:
                raise ConfigError(f"task '{spec.name}': period {period} is not a multiple of the ctx ({ctx}) of "
                                  f"nowcaster {method!r}: its {ctx} input states are period // ctx steps apart")
            if options.guard_delay >= period:
                raise ConfigError(f"task '{spec.name}': period {period} is not longer than the guard delay "
                                  f"({options.guard_delay}) of {method!r}: each nowcast is judged before the next")


def evaluate(config: str | Path, out: str | Path, nino: list[str], seeds: int | None = None,
             tasks: list[str] | None = None, address: str | None = None, baselines: bool = True,
             progress: bool = True, period: int | None = None, guard: int = 0,
             guard_delay: int = 0, guard_branch: bool = False, guard_horizons: int = 1,
             upd_scales: list[float] | None = None, k_powers: list[float] | None = None,
             k_maxes: list[int | None] | None = None, seed_offset: int = 0,
             record_initial: bool = False, reorder: int = 0) -> tuple[list[Curve], str]:
    """Run (or finish) the evaluation grid; write outputs; return the curves and the table. Each
    nowcaster runs with every combination of `upd_scales`, `k_powers` and `k_maxes` (default: the
    paper's 1, 2 and the nowcaster's seq_len), and guarded as well with `guard` > 0 (`guard_delay`,
    `guard_branch`: NiNo's options of those names; `guard_horizons` H: NiNo's `guard_horizons` 1, 1/2,
    ..., 1/2^(H-1)); with
    `record_initial` each also with its states recorded from the initial one on; `reorder` adds Adam
    with its batches in `reorder` other orders (`adam+order1`, ...). The seeds are
    `EVAL_SEED + seed_offset` onwards."""
    cfg, task_list = load_eval_config(config)
    if period is not None:
        if period < 1:
            raise ConfigError(f'--period must be a positive integer, got {period}')
        task_list = [(spec, period, target) for spec, _, target in task_list]
    if tasks:
        known = [s.name for s, _, _ in task_list]
        missing = sorted(set(tasks) - set(known))
        if missing:
            raise ConfigError(f'{config}: tasks {missing} are not in the config (have {known})')
        task_list = [t for t in task_list if t[0].name in tasks]
    seeds = seeds or int(cfg.get('seeds', 3))
    if seed_offset < 0:
        raise ConfigError(f'--seed-offset must be 0 or more, got {seed_offset}')
    for value in upd_scales or []:
        if not value > 0:
            raise ConfigError(f'--upd-scale values must be positive, got {value}')
    for value in k_maxes or []:
        if value is not None and value < 1:
            raise ConfigError(f'--k-max values must be positive horizons, got {value}')
    if reorder < 0:
        raise ConfigError(f'--reorder must be 0 or more, got {reorder}')
    if guard_branch and not (guard and guard_delay):
        raise ConfigError(f'--guard-branch needs --guard and --guard-delay (got {guard} and {guard_delay})')
    if guard_horizons < 1 or (guard_horizons > 1 and not (guard and not guard_delay)):
        raise ConfigError(f'--guard-horizons must be 1 or more, and above 1 it needs --guard without '
                          f'--guard-delay (got {guard_horizons}, --guard {guard}, --guard-delay {guard_delay})')
    methods: dict[str, str | None] = {BASE: None}
    methods.update({MethodOptions(BASE, order=o).label: None for o in range(1, reorder + 1)})
    for ckpt in nino:
        name = Path(ckpt).name.split('.')[0]
        if '+' in name:
            raise ConfigError(f"nowcaster file {ckpt}: '+' separates method options, rename the file")
        if any(m == name or m.startswith(f'{name}+') for m in methods):
            raise ConfigError(f'two nowcasters named {name!r}: rename one of the files')
        if not Path(ckpt).is_file():
            raise ConfigError(f'nowcaster checkpoint not found: {ckpt}')
        for u, p, k, init in itertools.product(upd_scales or [1.0], k_powers or [2.0], k_maxes or [None],
                                               [False, True] if record_initial else [False]):
            options = MethodOptions(name, upd_scale=u, k_power=p, k_max=k, record_initial=init)
            methods[options.label] = str(Path(ckpt).resolve())
            if guard:
                guarded = replace(options, guard=guard, guard_delay=guard_delay, guard_branch=guard_branch,
                                  guard_horizons=guard_horizons)
                methods[guarded.label] = methods[options.label]
    if baselines:
        methods[LINEAR] = None
    check_periods(task_list, methods)

    out = Path(out)
    runs = out / 'runs'
    runs.mkdir(parents=True, exist_ok=True)
    digests = {m: file_sha256(c) if c else '' for m, c in methods.items()}
    grid = [(spec, period, seed, m, run_file(spec, period, seed, m, digests[m]))
            for spec, period, _ in task_list for seed in range(seed_offset, seed_offset + seeds) for m in methods]
    todo = [g for g in grid if not (runs / g[4]).exists()]
    if todo:
        if not ray.is_initialized():
            init_ray(address)
        pending = {_run_remote.remote(spec.to_dict(), EVAL_SEED + seed, m, methods[m], period): name
                   for spec, period, seed, m, name in todo}
        with tqdm(total=len(grid), initial=len(grid) - len(todo), desc='evaluation runs', disable=not progress) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                name = pending.pop(ready[0])
                try:
                    curve = ray.get(ready[0])
                except ray.exceptions.RayError as err:  # finished runs stay saved: a rerun resumes
                    raise RunFailed(f'evaluation run {name} failed: {describe_failure(err)}') from None
                tmp = runs / f'.{name}.tmp'
                tmp.write_text(json.dumps(curve))
                os.replace(tmp, runs / name)
                bar.update(1)
    curves = [load_curve(runs / name) for *_, name in grid]
    targets = {spec.name: target for spec, _, target in task_list}
    metrics = {spec.name: metric_of(spec) for spec, _, _ in task_list}
    rows = speedups(curves, targets)
    write_curves(curves, out)
    table = write_table(rows, targets, metrics, out, curves)
    plot_curves(curves, targets, out)
    plot_speedups(rows, out)
    return curves, table


def _numbers(flag: str, text: str, kind: type) -> list:
    try:
        return [kind(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise ConfigError(f'{flag}: expected comma-separated numbers, got {text!r}') from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m jobs.evaluate', description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True, help='evaluation config (tasks with targets)')
    parser.add_argument('--nino', default='', help='comma-separated nowcaster checkpoints')
    parser.add_argument('--tasks', default=None, help='comma-separated task names from the config')
    parser.add_argument('--seeds', type=int, default=None)
    parser.add_argument('--record-initial', action='store_true', help='also run each nowcaster with its states '
                        'recorded from the initial one on (NAME+init: every nowcast period // ctx - 1 steps sooner)')
    parser.add_argument('--reorder', type=int, default=0, help='also run Adam with its batches in this many '
                        'other orders (adam+order1, ...): the run-to-run noise the other rows sit in')
    parser.add_argument('--seed-offset', type=int, default=0, help=f'start the seeds at {EVAL_SEED} + this '
                                                                   '(fresh seeds to confirm chosen settings)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--address', default=None, help='Ray cluster address (default: local)')
    parser.add_argument('--no-baselines', action='store_true', help='skip the linear-extrapolation baseline')
    parser.add_argument('--period', type=int, default=None, help="steps between nowcasts for every task "
                                                                 "(default: each task's 'period')")
    parser.add_argument('--guard', type=int, default=0, help='also run each nowcaster guarded, scoring this '
                                                             'many training batches per candidate')
    parser.add_argument('--guard-delay', type=int, default=0, help='judge each guarded nowcast this many steps '
                                                                   'after it (rolling it back if it did not pay off)')
    parser.add_argument('--guard-branch', action='store_true', help='judge each guarded nowcast against the base '
                        "optimizer's own --guard-delay steps from before it, and switch to those on a rollback "
                        '(NAME+guardNdD+branch)')
    parser.add_argument('--guard-horizons', type=int, default=1, help='with an immediate guard, also score '
                        'the predictions at k/2, ..., k/2^(H-1) (NAME+guardN+hH)')
    parser.add_argument('--upd-scale', default='1', help='comma-separated scales of the predicted change; each '
                                                         'nowcaster runs with every one (default: 1)')
    parser.add_argument('--k-power', default='2', help='comma-separated decay powers of the horizon k (default: 2)')
    parser.add_argument('--k-max', default='', help="comma-separated first horizons (default: the nowcaster's "
                                                    "seq_len)")
    args = parser.parse_args(argv)
    try:
        options = {'upd_scales': _numbers('--upd-scale', args.upd_scale, float),
                   'k_powers': _numbers('--k-power', args.k_power, float),
                   'k_maxes': _numbers('--k-max', args.k_max, int) or None}
        _, table = evaluate(args.config, args.out, [c for c in args.nino.split(',') if c], args.seeds,
                            args.tasks.split(',') if args.tasks else None,
                            args.address or os.environ.get('RAY_ADDRESS'), not args.no_baselines,
                            period=args.period, guard=args.guard, guard_delay=args.guard_delay,
                            guard_branch=args.guard_branch, guard_horizons=args.guard_horizons,
                            seed_offset=args.seed_offset,
                            record_initial=args.record_initial, reorder=args.reorder,
                            **options)
    except ConfigError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(table)
    print(f'\noutputs in {args.out}: summary.md, curves.csv, curves.json, speedups.csv, curves_*.png, speedup.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
