"""Evaluation outputs a person reads: curves CSV/JSON, the speedup table, and PNG plots.

`jobs.evaluate` writes them for the methods of one call. Run as a job, this module writes them for
every finished run in an evaluation folder, whatever call made it, so variants run in separate calls
(`--k-max 10,20`, then the plain nowcaster) are compared seed by seed in one table:

    python -m jobs.report --config jobs/configs/mnist1d-eval.yaml --runs runs/mnist1d/kmax \
        [--methods 'adam,nino_no_posw*'] [--tasks a,b] [--out DIR]

Targets and metrics come from the config (its tasks' names select the runs); outputs go to
RUNS/report unless `--out` says otherwise. Two runs of one task, seed and method (made with another
period, task spec or checkpoint) and runs of one task and seed that did not start from the same
weights are refused, naming the files: report such runs from separate folders.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np

from metatrain.evaluation import (
    BASE,
    Curve,
    SpeedupRow,
    load_curve,
    markdown_table,
    metric_of,
    paired_table,
    paired_variants,
    per_seed_table,
    speedups,
)
from pipeline.tasks import ConfigError


def write_curves(curves: list[Curve], out: Path) -> None:
    """`curves.json` (every curve) and `curves.csv` (one row per evaluation point)."""
    (out / 'curves.json').write_text(json.dumps([c.to_dict() for c in curves], indent=1))
    with open(out / 'curves.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['task', 'seed', 'method', 'step', 'metric', 'value', 'nowcast_before', 'grad_evals'])
        for c in curves:
            grads = c.grad_evals if len(c.grad_evals) == len(c.steps) else [''] * len(c.steps)  # '': not counted
            for s, v, g in zip(c.steps, c.values, grads):
                w.writerow([c.task, c.seed, c.method, s, c.metric, repr(v), sum(n <= s for n in c.nowcast_steps), g])


def write_table(rows: list[SpeedupRow], targets: dict[str, float], metrics: dict[str, str], out: Path,
                curves: list[Curve] | None = None) -> str:
    """`summary.md` (the speedup table; from `curves` the variants' paired table when there are
    variants, and the per-seed tables) and `speedups.csv`; returns the speedup table."""
    table = markdown_table(rows, targets, metrics)
    extra = ''
    if curves:
        paired = paired_variants(curves, targets)
        if paired:
            extra += ('\n\nEach variant against its nowcaster, and against itself with one option fewer, on '
                      'the same seeds (speedup over Adam of the variant minus that of the method against; seeds '
                      'where all three reached the target):'
                      f'\n\n{paired_table(paired)}')
        extra += f'\n\n{per_seed_table(curves, targets)}'
    (out / 'summary.md').write_text(table + extra + '\n')
    with open(out / 'speedups.csv', 'w', newline='') as f:
        w = csv.writer(f)
        names = [f.name for f in fields(SpeedupRow)]
        w.writerow(names)
        for r in rows:
            w.writerow([getattr(r, n) for n in names])
    return table


def _styles(methods: list[str]) -> dict[str, tuple[str, str | tuple]]:
    """(colour, line style) per method: one colour per nowcaster, one line style per set of options
    (`NAME+...` variants share NAME's colour), so a dozen methods stay apart in one plot."""
    names = list(dict.fromkeys(m.split('+')[0] for m in methods))
    options = list(dict.fromkeys('+'.join(m.split('+')[1:]) for m in methods))
    dashes = ['-', '--', '-.', ':', (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2))]
    return {m: (f'C{names.index(m.split("+")[0]) % 10}',
                dashes[options.index('+'.join(m.split('+')[1:])) % len(dashes)]) for m in methods}


def plot_curves(curves: list[Curve], targets: dict[str, float], out: Path) -> list[Path]:
    """One PNG per task: mean validation curve per method (band: min-max over seeds, plain methods only),
    nowcasts marked; a nowcaster's variants share its colour and differ in line style."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    paths = []
    for task in sorted({c.task for c in curves}):
        task_curves = [c for c in curves if c.task == task]
        methods = [BASE] + sorted({c.method for c in task_curves} - {BASE})
        styles = _styles(methods)
        fig, ax = plt.subplots(figsize=(7 if len(methods) <= 6 else 10, 4.5))
        for method in methods:
            cs = [c for c in task_curves if c.method == method]
            if not cs:
                continue
            steps = np.array(cs[0].steps)
            values = np.array([c.values for c in cs if len(c.values) == len(steps)])
            color, dash = styles[method]
            base = method == BASE  # drawn on top: every method follows it exactly until its first nowcast
            ax.plot(steps, values.mean(0), color=color, ls=dash, label=f'{method} ({len(values)} seeds)',
                    lw=2.2 if base else 1.4, zorder=3 if base else 2)
            if '+' not in method:
                ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.12)
                for s in cs[0].nowcast_steps:
                    ax.axvline(s, color=color, alpha=0.35, lw=0.8, ls=':')
        ax.axhline(targets[task], color='k', lw=0.8, ls='--', label='target')
        ax.set_xlabel('training step (dotted: nowcasts)')
        ax.set_ylabel(task_curves[0].metric)
        if task_curves[0].metric == 'val_ppl':
            ax.set_yscale('log')
        ax.set_title(task)
        if len(methods) <= 6:
            ax.legend(fontsize=8)
        else:
            ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        path = out / f'curves_{task}.png'
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_speedups(rows: list[SpeedupRow], out: Path) -> Path:
    """Bar chart of mean speedup over Adam (error bar: std over seeds) per task and method."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in rows})
    methods = [m for m in dict.fromkeys(r.method for r in rows) if m != BASE]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) * max(1, len(methods)) / 2), 4))
    width = 0.8 / max(1, len(methods))
    for j, method in enumerate(methods):
        means = [next((r.speedup_mean for r in rows if r.task == t and r.method == method), math.nan) for t in tasks]
        stds = [next((r.speedup_std for r in rows if r.task == t and r.method == method), math.nan) for t in tasks]
        xs = np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * width
        ax.bar(xs, np.nan_to_num(means), width, yerr=np.nan_to_num(stds), label=method, color=f'C{j + 1}')
    ax.axhline(1.0, color='k', lw=0.8, ls='--')
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel('speedup over Adam (steps to target)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / 'speedup.png'
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def folder_curves(runs: Path, tasks: Iterable[str], methods: Sequence[str] = ()) -> list[Curve]:
    """Every finished run in `runs` (an evaluation folder's `runs/`) of `tasks`, and of `methods` (shell
    patterns; all when empty), with a ConfigError naming the files for two runs of one (task, seed,
    method) or runs of one (task, seed) from different initial weights."""
    tasks = set(tasks)
    found: dict[tuple[str, int, str], tuple[Curve, Path]] = {}
    for path in sorted(runs.glob('*.json')):
        try:
            curve = load_curve(path)
        except (ValueError, TypeError) as err:
            raise ConfigError(f'{path}: not an evaluation run ({type(err).__name__}: {err})') from None
        if curve.task not in tasks or (methods and not any(fnmatch.fnmatchcase(curve.method, m) for m in methods)):
            continue
        key = (curve.task, curve.seed, curve.method)
        if key in found:
            raise ConfigError(f'{found[key][1].name} and {path.name} are both {curve.method} on {curve.task}, seed '
                              f'{curve.seed} (another period, task spec or checkpoint): report them from '
                              f'separate folders')
        found[key] = (curve, path)
    firsts: dict[tuple[str, int], tuple[Curve, Path]] = {}
    for curve, path in found.values():
        first = firsts.setdefault((curve.task, curve.seed), (curve, path))
        if curve.init_checksum != first[0].init_checksum:
            raise ConfigError(f'{first[1].name} and {path.name} did not start from the same weights (another '
                              f'task spec under the name {curve.task!r}): report them from separate folders')
    curves = [curve for curve, _ in found.values()]
    for task in sorted(tasks & {c.task for c in curves}):
        if not any(c.task == task and c.method == BASE for c in curves):
            raise ConfigError(f"{runs}: no '{BASE}' run of task '{task}' to compare with")
    if not curves:
        raise ConfigError(f'{runs}: no finished runs of tasks {sorted(tasks)}'
                          + (f' and methods {list(methods)}' if methods else ''))
    return curves


def main(argv: list[str] | None = None) -> int:
    from jobs.evaluate import load_eval_config  # it writes through this module: imported here, not at the top

    parser = argparse.ArgumentParser(prog='python -m jobs.report', description=__doc__.split('\n\n')[1])
    parser.add_argument('--config', required=True, help='the evaluation config (tasks with targets)')
    parser.add_argument('--runs', required=True, help="an evaluation folder (jobs.evaluate's --out)")
    parser.add_argument('--methods', default='', help="comma-separated method names or patterns ('nino*')")
    parser.add_argument('--tasks', default='', help='comma-separated task names from the config')
    parser.add_argument('--out', default=None, help='output folder (default: RUNS/report)')
    args = parser.parse_args(argv)
    try:
        _, task_list = load_eval_config(args.config)
        targets = {spec.name: target for spec, _, target in task_list}
        metrics = {spec.name: metric_of(spec) for spec, _, _ in task_list}
        chosen = [t for t in args.tasks.split(',') if t] or list(targets)
        unknown = sorted(set(chosen) - set(targets))
        if unknown:
            raise ConfigError(f'{args.config}: tasks {unknown} are not in the config (have {list(targets)})')
        runs = Path(args.runs) / 'runs'
        if not runs.is_dir():
            raise ConfigError(f'{args.runs}: no runs/ folder (not an evaluation folder)')
        curves = folder_curves(runs, chosen, [m for m in args.methods.split(',') if m])
    except ConfigError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.runs) / 'report'
    out.mkdir(parents=True, exist_ok=True)
    present = {c.task for c in curves}
    targets = {t: v for t, v in targets.items() if t in present}
    rows = speedups(curves, targets)
    write_curves(curves, out)
    table = write_table(rows, targets, metrics, out, curves)
    plot_curves(curves, targets, out)
    plot_speedups(rows, out)
    print(table)
    print(f'\n{len(curves)} runs; outputs in {out}: summary.md, curves.csv, curves.json, speedups.csv, '
          f'curves_*.png, speedup.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
