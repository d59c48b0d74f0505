"""Evaluating nowcasters: training curves with and without them, steps to target, speedups.

`run_curve` trains one task from one seed with a method (the base optimizer alone, a nowcaster
checkpoint, or a baseline) and records the validation metric at every evaluation point. All methods
of a (task, seed) start from the same initial weights and see the same batches in the same order
(each curve carries checksums of both, so this can be checked), except `+orderO` methods, whose
batches come in another order: `adam+order1` against `adam` shows how much of a difference between
two runs of one seed is noise. `steps_to_target` and `speedups` do the arithmetic: speedup =
steps(base) / steps(method), mean, std and a 95% t-interval of the mean over the seeds where both
reached the target; beside it the metric at the end of the budget, its difference from the base's
on the same seeds (mean and 95% t-interval) and on how many seeds it is at least the base's, so a
method that reaches the target sooner but ends worse shows.
`paired_variants` compares each nowcaster's variants (`NAME+options`) with `NAME` seed by seed: the
seed-to-seed spread that widens every method's interval cancels in the difference, so a knob's
effect can be told from noise with fewer seeds.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import t as student_t

from nino.baselines import LinearExtrapolation
from nino.checkpoint import load_nowcaster
from nino.model import Nowcaster
from nino.optimizer import NiNo
from pipeline.data import load_dataset
from pipeline.record import evaluate, loss_and_correct, make_optimizer, torch_threads
from pipeline.tasks import TaskSpec, architecture, build_model

BASE = 'adam'
TAIL_EVALS = 5  # the "last evaluations" whose mean the speedup table also compares with the base
LINEAR = 'linear'
GUARD = '+guard'  # method suffix +guardN[dD]: guarded on N training batches (delay D); see MethodOptions


@dataclass
class Curve:
    """One training run's validation curve."""

    task: str
    seed: int
    method: str
    metric: str  # a key of HIGHER_IS_BETTER
    steps: list[int]
    values: list[float]
    nowcast_steps: list[int] = field(default_factory=list)
    rejected_steps: list[int] = field(default_factory=list)  # where a guard turned down or rolled back a nowcast
    grad_evals: list[int] = field(default_factory=list)  # gradient evaluations up to each of `steps`
    init_checksum: str = ''
    batch_checksum: str = ''
    wall_time: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MethodOptions:
    """What a method name says: `NAME[+guardN[dD]][+branch][+hH][+uS][+pP][+kK][+init][+orderO]`: nowcaster
    NAME, guarded on N training batches (judged D steps after the nowcast, against the base optimizer's own
    D steps with `+branch`; judged at once, also scoring the predictions at k/2, ..., k/2^(H-1) with
    `+hH`), predicted change scaled by S, horizon decaying with power P from K, states recorded from the
    initial one on (NiNo's `guard`, `guard_delay`, `guard_branch`, `guard_horizons`, `upd_scale`,
    `k_power`, `k_max`, `record_initial`), training batches in another order O (same initial weights:
    `adam+order1` is Adam's run-to-run noise, a control for the other methods)."""

    name: str
    guard: int = 0
    guard_delay: int = 0
    guard_branch: bool = False
    guard_horizons: int = 1
    upd_scale: float = 1.0
    k_power: float = 2.0
    k_max: int | None = None
    record_initial: bool = False
    order: int = 0

    @property
    def label(self) -> str:
        """The method name these options are read from (defaults left out)."""
        out = self.name
        if self.guard:
            out += f'{GUARD}{self.guard}' + (f'd{self.guard_delay}' if self.guard_delay else '')
        if self.guard_branch:
            out += '+branch'
        if self.guard_horizons != 1:
            out += f'+h{self.guard_horizons}'
        if self.upd_scale != 1.0:
            out += f'+u{self.upd_scale:g}'
        if self.k_power != 2.0:
            out += f'+p{self.k_power:g}'
        if self.k_max is not None:
            out += f'+k{self.k_max}'
        if self.record_initial:
            out += '+init'
        if self.order:
            out += f'+order{self.order}'
        return out

    @property
    def horizon_fractions(self) -> tuple[float, ...]:
        """NiNo's `guard_horizons` for `+hH`: 1, 1/2, ..., 1/2^(H-1)."""
        return tuple(0.5 ** i for i in range(self.guard_horizons))


METHOD_FORM = 'NAME[+guardN[dD]][+branch][+hH][+uS][+pP][+kK][+init][+orderO]'

#: Seed stride between batch orders: order O of seed S draws its batches from seed S + O * ORDER_STRIDE.
ORDER_STRIDE = 104729


def parse_method(method: str) -> MethodOptions:
    """Read a method name: 'nino_mlp+guard4d100+u1.5' -> guard 4, delay 100, upd_scale 1.5."""
    name, *parts = method.split('+')
    fields: dict = {}
    try:
        for part in parts:
            if part == 'init':
                fields['record_initial'] = True
            elif part == 'branch':
                fields['guard_branch'] = True
            elif part.startswith('order'):
                fields['order'] = int(part[5:])
                if fields['order'] < 1:
                    raise ValueError(part)
            elif part.startswith('guard'):
                count, _, delay = part[5:].partition('d')
                fields['guard'], fields['guard_delay'] = int(count), int(delay or 0)
            elif part[:1] == 'h':
                fields['guard_horizons'] = int(part[1:])
                if fields['guard_horizons'] < 1:
                    raise ValueError(part)
            elif part[:1] == 'u':
                fields['upd_scale'] = float(part[1:])
            elif part[:1] == 'p':
                fields['k_power'] = float(part[1:])
            elif part[:1] == 'k':
                fields['k_max'] = int(part[1:])
            else:
                raise ValueError(part)
    except ValueError:
        raise ValueError(f'method {method!r}: expected {METHOD_FORM} (N batches, delay D steps, H >= 1 '
                         f'horizons, scale S, power P, first horizon K, states from the initial one, batch '
                         f'order O >= 1)') from None
    if fields.get('guard_branch') and not (fields.get('guard') and fields.get('guard_delay')):
        raise ValueError(f'method {method!r}: +branch needs a delayed guard before it (+guardNdD)')
    if fields.get('guard_horizons', 1) > 1 and not (fields.get('guard') and not fields.get('guard_delay')):
        raise ValueError(f'method {method!r}: +h needs an immediate guard before it (+guardN, no delay)')
    return MethodOptions(name, **fields)


def method_nowcaster(method: str, ckpt: str | None, seq_len: int = 40) -> Nowcaster | None:
    """The nowcaster a method uses: None for the base optimizer, a baseline, or a checkpoint."""
    method = parse_method(method).name
    if method == BASE:
        return None
    if method == LINEAR:
        return LinearExtrapolation(seq_len=seq_len)
    if ckpt is None:
        raise ValueError(f'method {method!r} needs a checkpoint path')
    return load_nowcaster(ckpt)


#: Validation metrics an evaluation can target, and whether a larger value is better.
HIGHER_IS_BETTER = {'val_acc': True, 'val_loss': False, 'val_ppl': False}


def metric_of(spec: TaskSpec) -> str:
    """The task's target metric (`target.metric`); language models: val_ppl or val_loss, others: val_acc
    or val_loss (default: the first)."""
    allowed = architecture(spec.arch['type']).metrics
    metric = spec.target.get('metric', allowed[0])
    if metric not in allowed:
        raise ValueError(f"task '{spec.name}': target metric {metric!r} is not one of {list(allowed)} "
                         f"for a {spec.arch['type']} task")
    return metric


def run_curve(spec: TaskSpec, seed: int, method: str, nowcaster: Nowcaster | None, period: int,
              lr: float | None = None) -> Curve:
    """Train `spec` from `seed` for `spec.steps` steps with the method; evaluate every `eval_every`. The
    method name sets the nowcast options (`MethodOptions`); a guarded one (`NAME+guardN`, or
    `NAME+guardNdD` to judge D steps later) scores nowcasts on the first N batches of the dataset's
    guard split (`guard_size`, examples no method trains on), or without one on N training batches
    drawn once from their own generator (the same batches every time); `+orderO` draws the training
    batches in another order from the same initial weights."""
    start = time.time()
    data = load_dataset(spec.dataset, spec.arch.get('vocab_size'))
    metric = metric_of(spec)
    lr = spec.lr[0] if lr is None else lr
    with torch_threads(spec.threads):
        torch.manual_seed(seed)
        model = build_model(spec.arch).train()
        init = hashlib.sha256(torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().tobytes())
        base = make_optimizer(spec.optimizer, model.parameters(), lr, spec.weight_decay)
        options = parse_method(method)
        guard_set = []
        if options.guard:  # the guard split's first batches, or else fixed training batches
            guard_set = data.guard_batches(spec.batch_size)[:options.guard] or [
                data.train_batch(spec.batch_size, torch.Generator().manual_seed(seed + 7919 * (i + 1)))
                for i in range(options.guard)]

        def guard() -> float:
            return float(np.mean([loss_and_correct(model, x, y)[0].item() for x, y in guard_set]))

        opt = NiNo(base, model, ckpt=nowcaster, period=period, max_train_steps=spec.steps,
                   guard=guard if guard_set else None, guard_delay=options.guard_delay,
                   guard_branch=options.guard_branch, guard_horizons=options.horizon_fractions,
                   upd_scale=options.upd_scale, k_power=options.k_power, k_max=options.k_max,
                   record_initial=options.record_initial)
        gen = torch.Generator().manual_seed(seed + ORDER_STRIDE * options.order)
        batches = hashlib.sha256()
        curve = Curve(spec.name, seed, method, metric, [], [], init_checksum=init.hexdigest())

        grad_evals = 0

        def record(step: int) -> None:
            loss, acc = evaluate(model, data, spec.batch_size)
            curve.steps.append(step)
            curve.grad_evals.append(grad_evals)
            curve.values.append({'val_ppl': math.exp(min(loss, 50.0)), 'val_loss': loss, 'val_acc': acc}[metric])

        record(0)
        for step in range(1, spec.steps + 1):
            x, y = data.train_batch(spec.batch_size, gen)
            batches.update(y.numpy().tobytes())
            nowcasts, rejected = opt.num_nowcasts, opt.num_rejected

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                nonlocal grad_evals
                grad_evals += 1
                opt.zero_grad()
                loss, _ = loss_and_correct(model, x, y)
                loss.backward()
                return loss

            if options.guard_branch:  # the branch's gradients come from the closure too
                opt.step(closure)
            else:
                if opt.need_grads:
                    closure()
                opt.step()
            if opt.num_nowcasts > nowcasts:
                curve.nowcast_steps.append(step)
            if opt.num_rejected > rejected:
                curve.rejected_steps.append(step)
            if step % spec.eval_every == 0 or step == spec.steps:
                record(step)
    curve.batch_checksum = batches.hexdigest()
    curve.wall_time = time.time() - start
    return curve


def _not_worse(a: float, b: float, higher_is_better: bool) -> bool:
    return a >= b if higher_is_better else a <= b


def target_text(metric: str, value: float) -> str:
    """How a target reads in tables: 'val_acc >= 0.8', 'val_ppl <= 9'."""
    return f'{metric} {">=" if HIGHER_IS_BETTER[metric] else "<="} {value:g}'


def steps_to_target(steps: list[int], values: list[float], target: float, higher_is_better: bool) -> float:
    """First evaluated step whose value reaches the target; NaN if it never does."""
    for s, v in zip(steps, values):
        if _not_worse(v, target, higher_is_better):
            return float(s)
    return math.nan


def curve_steps_to_target(curve: Curve, target: float) -> float:
    """`steps_to_target` of a curve, in the direction its metric improves."""
    return steps_to_target(curve.steps, curve.values, target, HIGHER_IS_BETTER[curve.metric])


def grads_at(curve: Curve, step: float) -> float:
    """Gradient evaluations up to an evaluated step (e.g. its steps to target); NaN for a NaN step or
    a curve that does not count them (run before they were counted)."""
    if math.isnan(step) or len(curve.grad_evals) != len(curve.steps):
        return math.nan
    return float(curve.grad_evals[curve.steps.index(int(step))])


def speedup(base_steps: float, steps: float) -> float:
    """steps(base) / steps(method), a method that reaches the target at step 0 counted as at step 1."""
    return max(base_steps, 1.0) / max(steps, 1.0)


@dataclass
class SpeedupRow:
    task: str
    method: str
    seeds: int
    reached: int  # seeds where the method reached the target
    steps_mean: float  # over the seeds where it reached it
    speedup_mean: float  # over the seeds where both it and the base reached it
    speedup_std: float
    compared: int  # seeds in the speedup statistics
    speedup_ci: float = math.nan  # half-width of the 95% t-interval of speedup_mean
    final_mean: float = math.nan  # the metric at the end of the budget, mean over seeds
    final_not_worse: int = 0  # seeds where it ends at least as good as the base on the same seed
    tail_not_worse: int = 0  # the same for the mean of the last TAIL_EVALS evaluations (less noisy than one)
    final_diff: float = math.nan  # mean over seeds of (its metric at the end - the base's, same seed)
    final_diff_ci: float = math.nan  # half-width of the 95% t-interval of final_diff
    grads_mean: float = math.nan  # gradient evaluations to the target (where counted), mean over seeds
    grad_speedup_mean: float = math.nan  # the speedup counted in gradient evaluations instead of steps
    grad_speedup_ci: float = math.nan


def _t_halfwidth(values: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean of `values` (NaN for fewer than two)."""
    if len(values) < 2:
        return math.nan
    return float(student_t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))


def speedups(curves: list[Curve], targets: dict[str, float], base: str = BASE) -> list[SpeedupRow]:
    """Per (task, method): how often and how fast the target is reached, the speedup over `base` (in
    steps, and in gradient evaluations where the curves count them), and on how many seeds the method
    ends at least as good as `base` (last evaluation; mean of the last TAIL_EVALS evaluations, since
    one evaluation moves by a point or more from step to step)."""
    by_key = {(c.task, c.seed, c.method): c for c in curves}
    rows = []
    tasks = sorted({c.task for c in curves})
    methods = [base] + sorted({c.method for c in curves} - {base})
    for task in tasks:
        target = targets[task]
        seeds = sorted({c.seed for c in curves if c.task == task})
        for method in methods:
            reached, ratios, finals, diffs, not_worse, tail_not_worse = [], [], [], [], 0, 0
            grads, grad_ratios = [], []
            for seed in seeds:
                c = by_key.get((task, seed, method))
                if c is None:
                    continue
                higher = HIGHER_IS_BETTER[c.metric]
                s = curve_steps_to_target(c, target)
                if not math.isnan(s):
                    reached.append(s)
                finals.append(c.values[-1])
                b = by_key.get((task, seed, base))
                sb = curve_steps_to_target(b, target) if b else math.nan
                if not (math.isnan(s) or math.isnan(sb)):
                    ratios.append(speedup(sb, s))
                g = grads_at(c, s)
                if not math.isnan(g):
                    grads.append(g)
                gb = grads_at(b, sb) if b else math.nan
                if not (math.isnan(g) or math.isnan(gb)):
                    grad_ratios.append(speedup(gb, g))
                if b is not None:
                    diffs.append(c.values[-1] - b.values[-1])
                    not_worse += _not_worse(c.values[-1], b.values[-1], higher)
                    tail_not_worse += _not_worse(float(np.mean(c.values[-TAIL_EVALS:])),
                                                 float(np.mean(b.values[-TAIL_EVALS:])), higher)
            rows.append(SpeedupRow(task, method, len(finals), len(reached),
                                   float(np.mean(reached)) if reached else math.nan,
                                   float(np.mean(ratios)) if ratios else math.nan,
                                   float(np.std(ratios)) if ratios else math.nan, len(ratios), _t_halfwidth(ratios),
                                   float(np.mean(finals)) if finals else math.nan, not_worse, tail_not_worse,
                                   float(np.mean(diffs)) if diffs and method != base else math.nan,
                                   _t_halfwidth(diffs) if method != base else math.nan,
                                   float(np.mean(grads)) if grads else math.nan,
                                   float(np.mean(grad_ratios)) if grad_ratios else math.nan, _t_halfwidth(grad_ratios)))
    return rows


@dataclass
class PairedRow:
    task: str
    method: str  # a variant NAME+options...
    against: str  # ...and its plain nowcaster NAME, or the variant with one option fewer
    compared: int  # seeds where the base, the variant and `against` all reached the target
    diff_mean: float  # mean over those seeds of speedup(variant) - speedup(against)
    diff_ci: float  # half-width of its 95% t-interval
    faster: int  # seeds where the variant reached the target in fewer steps than `against`
    slower: int


def paired_variants(curves: list[Curve], targets: dict[str, float], base: str = BASE) -> list[PairedRow]:
    """Per task, each method `NAME+options` against `NAME` and against each method that has one option
    fewer (`NAME+guard4+h3` against `NAME+guard4`), where those were run, on the same seeds: the mean
    difference of their speedups over `base` with its 95% interval, and on how many seeds the variant
    reached the target sooner or later."""
    by_key = {(c.task, c.seed, c.method): c for c in curves}
    rows = []
    for task in sorted({c.task for c in curves}):
        methods = sorted({c.method for c in curves if c.task == task})
        seeds = sorted({c.seed for c in curves if c.task == task})
        for method in methods:
            plain, *parts = method.split('+')
            fewer = ['+'.join([plain, *parts[:i], *parts[i + 1:]]) for i in range(len(parts))]
            for against in dict.fromkeys([plain, *fewer]):
                if against == method or against not in methods:
                    continue
                diffs, faster, slower = [], 0, 0
                for seed in seeds:
                    trio = [by_key.get((task, seed, m)) for m in (base, method, against)]
                    if None in trio:
                        continue
                    b, v, p = (curve_steps_to_target(c, targets[task]) for c in trio)
                    if math.isnan(b) or math.isnan(v) or math.isnan(p):
                        continue
                    diffs.append(speedup(b, v) - speedup(b, p))
                    faster += v < p
                    slower += v > p
                rows.append(PairedRow(task, method, against, len(diffs), float(np.mean(diffs)) if diffs else math.nan,
                                      _t_halfwidth(diffs), faster, slower))
    return rows


def _signed(x: float, digits: int = 2) -> str:
    """'+0.13', '-0.04', and '+0.00' for what rounds to zero (never '-0.00')."""
    return f'{x:+.{digits}f}' if round(x, digits) != 0 else f'{0:+.{digits}f}'


def paired_table(rows: list[PairedRow]) -> str:
    """The variants' table: speedup difference against the plain nowcaster, paired by seed."""
    lines = ['| task | method | against | seeds | speedup difference | 95% interval | sooner | later | same |',
             '|---|---|---|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        diff = '-' if math.isnan(r.diff_mean) else f'{_signed(r.diff_mean)}x'
        low, high = r.diff_mean - r.diff_ci, r.diff_mean + r.diff_ci
        interval = '-' if math.isnan(r.diff_ci) else f'{_signed(low)} to {_signed(high)}x'
        lines.append(f'| {r.task} | {r.method} | {r.against} | {r.compared} | {diff} | {interval} | {r.faster} '
                     f'| {r.slower} | {r.compared - r.faster - r.slower} |')
    return '\n'.join(lines)


def markdown_table(rows: list[SpeedupRow], targets: dict[str, float], metric_names: dict[str, str]) -> str:
    """The speedup table a person reads: per method, how often and how fast it reaches the target, the
    speedup (mean ± std, and the 95% interval of the mean), and the metric at the end of the budget:
    its mean, its difference from Adam's on the same seeds (mean and 95% interval), and on how many
    seeds it is at least Adam's. When a method evaluates more gradients than it takes steps (a guard
    branch), a column gives the speedup counted in gradient evaluations too."""
    grads = any(r.grads_mean > r.steps_mean for r in rows)
    lines = ['| task | target | method | reached | steps to target | speedup vs Adam | 95% interval | fewer steps '
             + ('| speedup in gradients (95% interval) ' if grads else '')
             + f'| at the end | end - Adam (95% interval) | end >= Adam | last {TAIL_EVALS} evals >= Adam |',
             '|---|---|---|---:|---:|---:|---:|---:|' + ('---:|' if grads else '') + '---:|---:|---:|---:|']
    for r in rows:
        name = metric_names.get(r.task, 'val_acc')
        steps = '-' if math.isnan(r.steps_mean) else f'{r.steps_mean:.0f}'
        speed = interval = fewer = '-'
        if not math.isnan(r.speedup_mean):
            speed = f'{r.speedup_mean:.2f}x ± {r.speedup_std:.2f}'
            fewer = f'{100 * (1 - 1 / r.speedup_mean):.0f}%'
        if not math.isnan(r.speedup_ci):
            interval = f'{r.speedup_mean - r.speedup_ci:.2f}-{r.speedup_mean + r.speedup_ci:.2f}x'
        final = '-' if math.isnan(r.final_mean) else f'{r.final_mean:.3f}'
        diff = '-' if math.isnan(r.final_diff) else _signed(r.final_diff, 3)
        if not math.isnan(r.final_diff_ci):
            diff += f' ({_signed(r.final_diff - r.final_diff_ci, 3)} to {_signed(r.final_diff + r.final_diff_ci, 3)})'
        grad = ''
        if grads:
            mean, ci = r.grad_speedup_mean, r.grad_speedup_ci
            grad = '| - ' if math.isnan(mean) else f'| {mean:.2f}x '
            if not math.isnan(ci):
                grad += f'({mean - ci:.2f}-{mean + ci:.2f}x) '
        lines.append(f'| {r.task} | {target_text(name, targets[r.task])} | {r.method} | {r.reached}/{r.seeds} '
                     f'| {steps} | {speed} | {interval} | {fewer} {grad}| {final} | {diff} '
                     f'| {r.final_not_worse}/{r.seeds} | {r.tail_not_worse}/{r.seeds} |')
    return '\n'.join(lines)


def per_seed_table(curves: list[Curve], targets: dict[str, float], base: str = BASE) -> str:
    """Per task, one row per seed and one column per method: the step the target was reached at ('-':
    never) and the metric at the end of the budget, so what the means of `markdown_table` hide shows."""
    by_key = {(c.task, c.seed, c.method): c for c in curves}
    blocks = []
    for task in sorted({c.task for c in curves}):
        methods = [base] + sorted({c.method for c in curves if c.task == task} - {base})
        metric = next(c.metric for c in curves if c.task == task)
        lines = [f'{task}, per seed: steps to {target_text(metric, targets[task])}; {metric} at the end', '',
                 '| seed | ' + ' | '.join(methods) + ' |', '|---:|' + '---|' * len(methods)]
        for seed in sorted({c.seed for c in curves if c.task == task}):
            cells = []
            for method in methods:
                c = by_key.get((task, seed, method))
                if c is None:
                    cells.append('')
                    continue
                s = curve_steps_to_target(c, targets[task])
                cells.append(f'{"-" if math.isnan(s) else f"{s:.0f}"}; {c.values[-1]:.3f}')
            lines.append(f'| {seed} | ' + ' | '.join(cells) + ' |')
        blocks.append('\n'.join(lines))
    return '\n\n'.join(blocks)


def load_curve(path: Path) -> Curve:
    return Curve(**json.loads(path.read_text()))
