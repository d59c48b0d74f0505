"""Evaluation arithmetic on constructed curves, same weights/batches across methods, the Ray job."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metatrain.evaluation import (
    Curve,
    MethodOptions,
    markdown_table,
    metric_of,
    paired_table,
    paired_variants,
    parse_method,
    per_seed_table,
    run_curve,
    speedups,
    steps_to_target,
)
from nino.baselines import LinearExtrapolation
from nino.checkpoint import save_nowcaster
from nino.model import NiNoConfig, build_nowcaster
from pipeline.tasks import load_tasks
from tests.conftest import FarOff

STEPS = [0, 100, 200, 300, 400, 500]


def _curve(task, seed, method, values, metric='val_acc'):
    return Curve(task, seed, method, metric, STEPS, values)


def test_steps_to_target_first_crossing_and_never():
    assert steps_to_target(STEPS, [0.1, 0.5, 0.8, 0.79, 0.9, 0.95], 0.8, True) == 200
    assert math.isnan(steps_to_target(STEPS, [0.1, 0.5, 0.6, 0.7, 0.7, 0.79], 0.8, True))
    assert steps_to_target(STEPS, [90, 40, 20, 12, 9, 8], 10, False) == 400  # perplexity: lower is better
    assert steps_to_target(STEPS, [0.9] * 6, 0.8, True) == 0


def test_speedups_use_only_seeds_where_both_reached():
    low, mid, high, never = ([0, 0, 0, 0, 0.9, 0.9], [0, 0, 0, 0.9, 0.9, 0.9],
                             [0, 0.9, 0.9, 0.9, 0.9, 0.9], [0] * 6)
    curves = [_curve('t', 0, 'adam', low), _curve('t', 0, 'nino', [0, 0, 0.9, 0.9, 0.9, 0.9]),
              _curve('t', 1, 'adam', mid), _curve('t', 1, 'nino', high),
              _curve('t', 2, 'adam', never), _curve('t', 2, 'nino', high),
              _curve('t', 0, 'bad', never), _curve('t', 1, 'bad', never), _curve('t', 2, 'bad', never)]
    rows = {r.method: r for r in speedups(curves, {'t': 0.8})}
    assert (rows['adam'].reached, rows['adam'].speedup_mean, rows['adam'].compared) == (2, 1.0, 2)
    nino = rows['nino']
    assert (nino.reached, nino.compared) == (3, 2)
    assert nino.speedup_mean == pytest.approx(2.5) and nino.speedup_std == pytest.approx(0.5)  # 400/200, 300/100
    assert nino.steps_mean == pytest.approx((200 + 100 + 100) / 3)
    assert rows['bad'].reached == 0 and math.isnan(rows['bad'].speedup_mean)
    assert nino.speedup_ci == pytest.approx(12.7062 * 0.5, rel=1e-4)  # t(0.975, 1) * sd / sqrt(2)
    assert (nino.final_mean, nino.final_not_worse) == (pytest.approx(0.9), 3)
    assert (rows['bad'].final_mean, rows['bad'].final_not_worse) == (0.0, 1)  # only seed 2 (Adam ends at 0 too)
    table = markdown_table(list(rows.values()), {'t': 0.8}, {'t': 'val_acc'})
    assert nino.final_diff == pytest.approx(0.3)  # its end minus Adam's: 0, 0, 0.9
    assert nino.final_diff_ci == pytest.approx(4.3027 * 0.27 ** 0.5 / 3 ** 0.5, rel=1e-4)  # t(0.975, 2) sd / sqrt(3)
    assert '| t | val_acc >= 0.8 | nino | 3/3 | 133 | 2.50x ± 0.50 | -3.85-8.85x | 60% | 0.900 | +0.300 (-0.991 to ' \
           '+1.591) | 3/3 | 3/3 |' in table
    assert '| t | val_acc >= 0.8 | bad | 0/3 | - | - | - | - | 0.000 | -0.600 (-1.891 to +0.691) | 1/3 | 1/3 |' in table
    assert '| t | val_acc >= 0.8 | adam | 2/3 | 350 | 1.00x ± 0.00 | 1.00-1.00x | 0% | 0.600 | - | 3/3 | 3/3 |' in table
    per_seed = per_seed_table(curves, {'t': 0.8}).splitlines()
    assert per_seed[0] == 't, per seed: steps to val_acc >= 0.8; val_acc at the end'
    assert per_seed[2] == '| seed | adam | bad | nino |'
    assert per_seed[4:] == ['| 0 | 400; 0.900 | -; 0.000 | 200; 0.900 |', '| 1 | 300; 0.900 | -; 0.000 | 100; 0.900 |',
                            '| 2 | -; 0.000 | -; 0.000 | 100; 0.900 |']


def _reach(step):
    """A curve that first reaches 0.9 at `step` (None: never)."""
    return [0.0 if step is None or s < step else 0.9 for s in STEPS]


def test_variants_are_compared_with_their_nowcaster_seed_by_seed():
    reach = {'adam': [400, 400, 400, 400], 'n': [200, 100, 400, 200], 'n+init': [100, 100, 200, None],
             'n+u2': [400, 200, 400, 400], 'n+k5': [200, 100, 400, 200], 'other+init': [100] * 4,
             'n+k5+init': [100, 100, 100, 100], 'other+k5+init': [100] * 4}
    curves = [_curve('t', seed, m, _reach(steps[seed])) for m, steps in reach.items() for seed in range(4)]
    paired = paired_variants(curves, {'t': 0.8})
    assert [(r.method, r.against) for r in paired] == [  # 'other' was not run, 'other+init' was
        ('n+init', 'n'), ('n+k5', 'n'), ('n+k5+init', 'n'), ('n+k5+init', 'n+init'), ('n+k5+init', 'n+k5'),
        ('n+u2', 'n'), ('other+k5+init', 'other+init')]
    rows = {r.method: r for r in paired if r.against == 'n'}
    one_fewer = next(r for r in paired if (r.method, r.against) == ('n+k5+init', 'n+init'))
    assert (one_fewer.compared, one_fewer.faster, one_fewer.slower) == (3, 1, 0)  # n+init never reached on seed 3
    init = rows['n+init']
    assert (init.against, init.compared, init.faster, init.slower) == ('n', 3, 2, 0)  # seed 3: n+init never reached
    assert init.diff_mean == pytest.approx(((4 - 2) + (4 - 4) + (2 - 1)) / 3)
    assert init.diff_ci == pytest.approx(4.3027 * np.std([2, 0, 1], ddof=1) / math.sqrt(3), rel=1e-4)
    u2 = rows['n+u2']
    assert (u2.compared, u2.faster, u2.slower) == (4, 0, 3) and u2.diff_mean == pytest.approx((-1 - 2 + 0 - 1) / 4)
    table = paired_table([rows['n+init'], rows['n+k5']]).splitlines()
    assert table[2] == '| t | n+init | n | 3 | +1.00x | -1.48 to +3.48x | 2 | 0 | 1 |'
    assert table[3] == '| t | n+k5 | n | 4 | +0.00x | +0.00 to +0.00x | 0 | 0 | 4 |'  # never '-0.00'


def test_a_nowcasters_variants_share_its_colour_and_differ_in_line_style():
    from jobs.report import _styles
    styles = _styles(['adam', 'a', 'a+guard4d20', 'a+init', 'b', 'b+init'])
    assert styles['a'][0] == styles['a+init'][0] == styles['a+guard4d20'][0] != styles['b'][0] != styles['adam'][0]
    assert styles['a'][1] == styles['b'][1] != styles['a+init'][1] == styles['b+init'][1] != styles['a+guard4d20'][1]
    five = _styles(['adam', 'adam+order1', 'a', 'a+guard4d20', 'a+guard4d20+init', 'a+init'])
    assert len({style for _, style in five.values()}) == 5  # five option sets, five line styles


def test_tail_comparison_averages_the_last_evaluations():
    """One evaluation decides 'end >= Adam'; the mean of the last five is compared too (TAIL_EVALS)."""
    adam = [0.5, 0.80, 0.82, 0.80, 0.82, 0.81]
    curves = [_curve('t', 0, 'adam', adam), _curve('t', 0, 'lucky', [0.5, 0.70, 0.72, 0.70, 0.72, 0.81]),
              _curve('t', 0, 'ahead', [0.5, 0.85, 0.85, 0.85, 0.85, 0.80])]
    rows = {r.method: r for r in speedups(curves, {'t': 0.8})}
    assert (rows['lucky'].final_not_worse, rows['lucky'].tail_not_worse) == (1, 0)
    assert (rows['ahead'].final_not_worse, rows['ahead'].tail_not_worse) == (0, 1)
    ppl = [_curve('p', 0, 'adam', [9, 8, 7, 6, 5, 4], 'val_ppl'), _curve('p', 0, 'x', [9, 6, 5, 4, 3, 4.1], 'val_ppl')]
    x = {r.method: r for r in speedups(ppl, {'p': 5})}['x']
    assert (x.final_not_worse, x.tail_not_worse) == (0, 1)  # lower is better


def test_speedup_of_a_method_reaching_at_step_zero_is_finite():
    curves = [_curve('t', 0, 'adam', [0, 0.9, 0.9, 0.9, 0.9, 0.9]), _curve('t', 0, 'x', [0.9] * 6)]
    assert {r.method: r.speedup_mean for r in speedups(curves, {'t': 0.8})}['x'] == 100.0


def test_a_method_that_evaluates_more_gradients_than_steps_gets_a_gradient_speedup_column():
    adam = [_curve('t', seed, 'adam', [0, 0, 0, 0, 0.9, 0.9]) for seed in (0, 1)]
    costly = [_curve('t', seed, 'b', v) for seed, v in ((0, [0, 0, 0.9, 0.9, 0.9, 0.9]), (1, [0, 0, 0, 0.9, 0.9, 0.9]))]
    for c in adam:
        c.grad_evals = list(STEPS)
    costly[0].grad_evals = [0, 150, 300, 450, 600, 750]
    costly[1].grad_evals = [0, 120, 240, 360, 480, 600]
    rows = {r.method: r for r in speedups(adam + costly, {'t': 0.8})}
    assert rows['b'].speedup_mean == pytest.approx((2 + 4 / 3) / 2)  # in steps: 400/200, 400/300
    assert rows['b'].grads_mean == 330 and rows['b'].grad_speedup_mean == pytest.approx((400 / 300 + 400 / 360) / 2)
    table = markdown_table(list(rows.values()), {'t': 0.8}, {'t': 'val_acc'})
    assert '| fewer steps | speedup in gradients (95% interval) | at the end |' in table
    assert '| 40% | 1.22x (-0.19-2.63x) | 0.900 |' in table and '| 0% | 1.00x (1.00-1.00x) | 0.900 |' in table
    for c in costly:
        c.grad_evals = list(STEPS)  # no more gradients than steps: no column
    assert 'gradients' not in markdown_table(speedups(adam + costly, {'t': 0.8}), {'t': 0.8}, {'t': 'val_acc'})
    for c in adam:
        c.grad_evals = []  # a curve from before gradients were counted
    assert math.isnan(speedups(adam + costly, {'t': 0.8})[1].grad_speedup_mean)


def test_linear_extrapolation_is_exact_on_lines():
    lin = LinearExtrapolation(ctx=5, seq_len=10, max_feat_size=1)
    t = torch.arange(5.0)
    x = torch.stack([2 * t + 1, -t, torch.full((5,), 3.0)])  # three parameters, one slot each
    assert torch.allclose(lin(x, k=3)[:, 0], torch.tensor([2 * 7 + 1, -7.0, 3.0]))
    assert torch.allclose(lin(x)[:, 0, 2], lin(x, k=3)[:, 0])


def test_methods_share_initial_weights_and_batches():
    spec, = load_tasks({'tasks': [{'preset': 'digits-mlp', 'steps': 120, 'eval_every': 20}]})
    adam = run_curve(spec, 1000, 'adam', None, period=50)
    lin = run_curve(spec, 1000, 'linear', LinearExtrapolation(seq_len=40), period=50)
    assert adam.init_checksum == lin.init_checksum and adam.batch_checksum == lin.batch_checksum
    assert lin.nowcast_steps == [50, 100] and adam.nowcast_steps == []
    first = adam.steps.index(40)
    assert adam.values[:first + 1] == lin.values[:first + 1]  # identical until the first nowcast
    assert adam.values != lin.values
    other = run_curve(spec, 1001, 'adam', None, period=50)
    assert other.init_checksum != adam.init_checksum and other.batch_checksum != adam.batch_checksum
    reordered = run_curve(spec, 1000, 'adam+order1', None, period=50)  # the control: same weights, other batches
    assert reordered.init_checksum == adam.init_checksum and reordered.batch_checksum != adam.batch_checksum
    assert reordered.values[0] == adam.values[0] and reordered.values[1:] != adam.values[1:]
    assert run_curve(spec, 1000, 'adam+order2', None, period=50).batch_checksum not in (
        adam.batch_checksum, reordered.batch_checksum, other.batch_checksum)


def test_a_guarded_bad_nowcaster_ends_exactly_where_adam_ends(monkeypatch):
    spec, = load_tasks({'tasks': [{'preset': 'digits-mlp', 'steps': 120, 'eval_every': 20}]})
    adam = run_curve(spec, 1000, 'adam', None, period=50)
    guarded = run_curve(spec, 1000, 'far+guard2', FarOff(seq_len=40), period=50)
    assert guarded.rejected_steps == [50, 100] and guarded.nowcast_steps == []
    assert guarded.values == adam.values  # the base optimizer took every step, from the same parameters
    unguarded = run_curve(spec, 1000, 'far', FarOff(seq_len=40), period=50)
    assert unguarded.nowcast_steps == [50, 100] and unguarded.values[-1] != adam.values[-1]
    held, = load_tasks({'tasks': [{'preset': 'digits-mlp', 'steps': 120, 'eval_every': 20,
                                   'dataset': {'name': 'digits', 'guard_size': 128}}]})
    adam_held = run_curve(held, 1000, 'adam', None, period=50)  # every method trains without the guard split
    assert adam_held.batch_checksum != adam.batch_checksum and adam_held.init_checksum == adam.init_checksum
    from pipeline.data import ClassificationData
    asked = []
    split = ClassificationData.guard_batches
    monkeypatch.setattr(ClassificationData, 'guard_batches', lambda self, n: asked.append(n) or split(self, n))
    far_held = run_curve(held, 1000, 'far+guard2', FarOff(seq_len=40), period=50)  # scored on the guard split
    assert asked == [held.batch_size]
    assert far_held.rejected_steps == [50, 100] and far_held.values == adam_held.values


def test_a_guard_branch_switches_to_adams_own_steps_and_counts_their_gradients():
    spec, = load_tasks({'tasks': [{'preset': 'digits-mlp', 'steps': 120, 'eval_every': 20}]})
    adam = run_curve(spec, 1000, 'adam', None, period=50)
    assert adam.grad_evals == adam.steps  # one gradient per step
    branch = run_curve(spec, 1000, 'far+guard2d10+branch', FarOff(seq_len=40), period=50)
    assert branch.nowcast_steps == [50, 110] and branch.rejected_steps == [60, 120]  # states start over at 60
    assert np.allclose(branch.values, adam.values, atol=1e-6)  # switched to Adam's own 60 and 120 steps: none lost
    assert branch.grad_evals[-1] == 120 + 2 * 10  # each branch: the nowcast step's gradient and 10 more
    plain = run_curve(spec, 1000, 'far+guard2d10', FarOff(seq_len=40), period=50)
    assert plain.grad_evals[-1] == 120 - 2 and plain.values[-1] != adam.values[-1]  # rolled back: 10 steps lost


def test_method_names_carry_the_nowcast_options_and_read_back():
    assert parse_method('adam') == MethodOptions('adam')
    assert parse_method('nino_mlp+guard4') == MethodOptions('nino_mlp', guard=4)
    options = parse_method('nino_mlp+guard4d100+u1.5+p3+k20+init+order2')
    assert options == MethodOptions('nino_mlp', 4, 100, upd_scale=1.5, k_power=3.0, k_max=20, record_initial=True,
                                    order=2)
    assert options.label == 'nino_mlp+guard4d100+u1.5+p3+k20+init+order2'
    assert MethodOptions('ours', upd_scale=1.0, k_power=2.0).label == 'ours'  # defaults: the plain name
    for bad in ('nino_mlp+guardx', 'nino_mlp+u', 'nino_mlp+k1.5', 'nino_mlp+z3', 'adam+order0', 'adam+order'):
        with pytest.raises(ValueError, match='NAME\\[\\+guardN'):
            parse_method(bad)
    assert parse_method('nino_mlp+guard4d20+branch').label == 'nino_mlp+guard4d20+branch'
    for bad in ('nino_mlp+branch', 'nino_mlp+guard4+branch'):
        with pytest.raises(ValueError, match='\\+branch needs a delayed guard'):
            parse_method(bad)
    options = parse_method('nino_mlp+h3+guard4')
    assert options.label == 'nino_mlp+guard4+h3' and options.horizon_fractions == (1.0, 0.5, 0.25)
    assert MethodOptions('nino_mlp', guard=4).horizon_fractions == (1.0,)
    for bad in ('nino_mlp+h2', 'nino_mlp+guard4d20+h2'):
        with pytest.raises(ValueError, match='\\+h needs an immediate guard'):
            parse_method(bad)
    with pytest.raises(ValueError, match='NAME\\[\\+guardN'):
        parse_method('nino_mlp+guard4+h0')


def test_the_method_name_sets_the_nowcasts_horizon_and_scale():
    spec, = load_tasks({'tasks': [{'preset': 'digits-mlp', 'steps': 100, 'eval_every': 20}]})
    lin = LinearExtrapolation(seq_len=40)
    plain = run_curve(spec, 1000, 'lin', lin, period=50)
    assert run_curve(spec, 1000, 'lin+p2+u1', lin, period=50).values == plain.values  # defaults spelled out
    short = run_curve(spec, 1000, 'lin+k1', lin, period=50)
    none = run_curve(spec, 1000, 'lin+u0', lin, period=50)  # the nowcast writes the parameters it read
    assert short.nowcast_steps == none.nowcast_steps == plain.nowcast_steps == [50, 100]
    assert run_curve(spec, 1000, 'lin+init', lin, period=50).nowcast_steps == [41, 91]  # states from step 0 on
    assert len({tuple(plain.values[3:]), tuple(short.values[3:]), tuple(none.values[3:])}) == 3
    assert plain.values[:3] == short.values[:3] == none.values[:3]  # same run up to the first nowcast


def test_evaluate_job_writes_outputs_and_resumes(tmp_path):
    from jobs.evaluate import evaluate
    ray = pytest.importorskip('ray')
    ckpt = tmp_path / 'tiny.safetensors'
    torch.manual_seed(0)
    save_nowcaster(build_nowcaster(NiNoConfig(gnn=False, hid=8, seq_len=10)), ckpt)
    config = tmp_path / 'eval.yaml'
    config.write_text(yaml.safe_dump({'seeds': 2, 'tasks': [
        {'preset': 'digits-mlp', 'steps': 100, 'eval_every': 20, 'period': 50, 'widths': [1, 1.5],
         'target': {'metric': 'val_acc', 'value': 0.5}}]}))
    out = tmp_path / 'out'
    ray.init(num_cpus=2, include_dashboard=False, logging_level='ERROR', log_to_driver=False)
    try:
        curves, table = evaluate(config, out, [str(ckpt)], progress=False)
        stamps = {p.name: p.stat().st_mtime_ns for p in (out / 'runs').iterdir()}
        again, table2 = evaluate(config, out, [str(ckpt)], progress=False)
        second_seed, _ = evaluate(config, out, [str(ckpt)], seeds=1, seed_offset=1, progress=False)
        assert {p.name: p.stat().st_mtime_ns for p in (out / 'runs').iterdir()} == stamps
        fresh_seed, _ = evaluate(config, out, [str(ckpt)], seeds=1, seed_offset=2, progress=False, baselines=False)
        stamps = {p.name: p.stat().st_mtime_ns for p in (out / 'runs').iterdir()}
        other_period, _ = evaluate(config, out, [str(ckpt)], progress=False, period=25, baselines=False)
        save_nowcaster(build_nowcaster(NiNoConfig(gnn=False, hid=8, seq_len=10)), ckpt)  # retrained
        retrained, _ = evaluate(config, out, [str(ckpt)], progress=False, period=25, baselines=False)
        scaled, _ = evaluate(config, out, [str(ckpt)], progress=False, period=25, baselines=False,
                             upd_scales=[1.0, 0.5], record_initial=True, reorder=1)
    finally:
        ray.shutdown()
    assert len(curves) == 2 * 2 * 3 and table2 == table
    assert [(c.seed, c.values) for c in second_seed] == [(c.seed, c.values) for c in curves if c.seed == 1001]
    assert {c.seed for c in fresh_seed} == {1002} and len(fresh_seed) == 2 * 2
    assert all(c.values != d.values for c in fresh_seed for d in curves if (c.task, c.method, d.seed) ==
               (d.task, d.method, 1001))  # a new seed, not a reread of seed 1001's runs
    assert {c.nowcast_steps[0] for c in curves if c.method == 'tiny'} == {50}
    assert {c.nowcast_steps[0] for c in other_period if c.method == 'tiny'} == {25}  # not the stale period-50 runs
    new = {p.name for p in (out / 'runs').iterdir()} - set(stamps)
    assert len(new) == 2 * 2 + 2 * 2 + 4 * 2 * 2  # period 25: tiny (adam's runs serve every period); retrained;
    assert {c.method for c in scaled} == {'adam', 'tiny', 'tiny+u0.5', 'tiny+init', 'tiny+u0.5+init',
                                          'adam+order1'}  # +u0.5, +init, the reordered Adam
    assert {c.nowcast_steps[0] for c in scaled if c.method.endswith('+init')} == {21}
    assert [c.values for c in retrained if c.method == 'adam'] == [c.values for c in other_period if c.method == 'adam']
    assert {c.method for c in curves} == {'adam', 'tiny', 'linear'}
    with open(out / 'curves.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 * 6  # the last evaluation's 24 curves (6 methods), 6 points
    adam_rows = [r for r in rows if r['method'] == 'adam']
    assert adam_rows and all(r['grad_evals'] == r['step'] for r in adam_rows)  # one gradient per step
    for name in ('summary.md', 'speedups.csv', 'curves.json', 'curves_digits-mlp.png',
                 'curves_digits-mlp-w1.5.png', 'speedup.png'):
        assert (out / name).stat().st_size > 0
    assert (out / 'curves_digits-mlp.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert '| digits-mlp-w1.5 | val_acc >= 0.5 | tiny |' in table
    summary = (out / 'summary.md').read_text()  # the last call's: adam, tiny, tiny+u0.5, ... every 25 steps
    assert summary.startswith('| task | target |') and 'digits-mlp-w1.5, per seed: steps to val_acc >= 0.5' in summary
    assert '| seed | adam | adam+order1 | tiny | tiny+init | tiny+u0.5 | tiny+u0.5+init |' in summary
    assert re.search(r'\n\| digits-mlp-w1\.5 \| tiny\+u0\.5\+init \| tiny \| \d \|', summary)  # the paired table
    assert re.search(r'\n\| digits-mlp \| adam\+order1 \| adam \| \d \|', summary)  # Adam against itself


def _eval_config(tmp_path, **task):
    config = tmp_path / 'eval.yaml'
    entry = {'preset': 'digits-mlp', 'steps': 100, 'eval_every': 20, 'period': 50,
             'target': {'metric': 'val_acc', 'value': 0.5}}
    entry.update(task)
    config.write_text(yaml.safe_dump({'seeds': 1, 'tasks': [entry]}))
    return config


@pytest.mark.parametrize('task, message', [
    ({'target': {'metric': 'val_accuracy', 'value': 0.5}},
     "target metric 'val_accuracy' is not one of ['val_acc', 'val_loss'] for a mlp task"),
    ({'preset': 'lm-3-24', 'steps': 400, 'eval_every': 200, 'target': {'metric': 'val_acc', 'value': 0.5}},
     "target metric 'val_acc' is not one of ['val_ppl', 'val_loss'] for a gpt2 task"),
    ({'period': 'abc'}, "field 'period' must be a positive integer, got 'abc'"),
    ({'period': -10}, "field 'period' must be a positive integer, got -10"),
    ({'period': 7}, "period 7 is not a multiple of the ctx (5) of nowcaster 'linear'"),
])
def test_evaluate_config_errors_name_the_field(tmp_path, task, message):
    from jobs.evaluate import evaluate
    from pipeline.tasks import ConfigError
    with pytest.raises(ConfigError, match=re.escape(message)):
        evaluate(_eval_config(tmp_path, **task), tmp_path / 'out', [], progress=False)
    assert not (tmp_path / 'out' / 'runs').exists() or not any((tmp_path / 'out' / 'runs').iterdir())


@pytest.mark.parametrize('flags, message', [
    (['--upd-scale', '1,x'], "--upd-scale: expected comma-separated numbers, got '1,x'"),
    (['--upd-scale', '0'], '--upd-scale values must be positive, got 0.0'),
    (['--k-max', '0'], '--k-max values must be positive horizons, got 0'),
    (['--seed-offset', '-1'], '--seed-offset must be 0 or more, got -1'),
    (['--reorder', '-2'], '--reorder must be 0 or more, got -2'),
    (['--guard', '4', '--guard-branch'], '--guard-branch needs --guard and --guard-delay (got 4 and 0)'),
    (['--guard', '4', '--guard-delay', '20', '--guard-horizons', '2'],
     '--guard-horizons must be 1 or more, and above 1 it needs --guard without --guard-delay'),
    (['--nino', 'ours+v2.safetensors'], "'+' separates method options, rename the file"),
])
def test_evaluate_option_errors_name_the_flag(tmp_path, capsys, flags, message):
    from jobs.evaluate import main
    (tmp_path / 'ours+v2.safetensors').write_bytes(b'')
    code = main(['--config', str(_eval_config(tmp_path)), '--out', str(tmp_path / 'out'),
                 *[f.replace('ours+', f'{tmp_path}/ours+') for f in flags]])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_a_guard_delay_as_long_as_the_period_is_refused_before_any_run(tmp_path, capsys):
    from jobs.evaluate import main
    ckpt = Path(__file__).parents[1] / 'checkpoints' / 'digits-mlp-h64.safetensors'
    code = main(['--config', str(_eval_config(tmp_path)), '--out', str(tmp_path / 'out'), '--nino', str(ckpt),
                 '--guard', '4', '--guard-delay', '50'])
    message = "task 'digits-mlp': period 50 is not longer than the guard delay (50)"
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_val_loss_target_is_a_loss_not_a_perplexity():
    from metatrain.evaluation import metric_of
    spec, = load_tasks({'tasks': [{'preset': 'digits-mlp', 'steps': 40, 'eval_every': 20,
                                   'target': {'metric': 'val_loss', 'value': 1.0}}]})
    assert metric_of(spec) == 'val_loss'
    curve = run_curve(spec, 1000, 'adam', None, period=50)
    assert curve.metric == 'val_loss' and curve.values[0] > curve.values[-1] > 0  # a loss falls
    target = (curve.values[0] + curve.values[-1]) / 2
    first = next(s for s, v in zip(curve.steps, curve.values) if v <= target)
    rows = speedups([curve, Curve(spec.name, 1000, 'x', 'val_loss', curve.steps, curve.values)], {spec.name: target})
    assert [r.steps_mean for r in rows] == [first, first] and first > 0  # lower is better
    assert 'val_loss <=' in markdown_table(rows, {spec.name: target}, {spec.name: 'val_loss'})


def test_nino_refuses_a_period_that_is_not_a_multiple_of_ctx():
    from nino import NiNo
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r'period \(7\) must be a positive multiple of ctx \(5\)'):
        NiNo(torch.optim.Adam(model.parameters()), model, ckpt=LinearExtrapolation(seq_len=10), period=7)


def test_a_failed_evaluation_run_reports_its_cause_in_one_line(tmp_path, monkeypatch, capsys):
    """A run that raises inside Ray (here: its corpus vanished after the driver checked it) ends the job
    with one line holding the root cause, not Ray's traceback."""
    import jobs.evaluate as job
    from tests.conftest import TEXT
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text(TEXT.read_text()[:20000])
    config = tmp_path / 'eval.yaml'
    config.write_text(yaml.safe_dump({'seeds': 1, 'tasks': [
        {'preset': 'lm-3-24', 'dataset': {'path': str(corpus), 'context': 32}, 'steps': 400, 'eval_every': 200,
         'batch_size': 8, 'period': 50, 'target': {'metric': 'val_loss', 'value': 1.0}}]}))
    checked = job.load_eval_config

    def then_remove(path):
        loaded = checked(path)
        corpus.unlink()
        return loaded

    monkeypatch.setattr(job, 'load_eval_config', then_remove)
    try:
        code = job.main(['--config', str(config), '--out', str(tmp_path / 'out'), '--no-baselines'])
    finally:
        job.ray.shutdown()  # the job started a local cluster in this process
    err = capsys.readouterr().err
    assert code == 1 and 'Traceback' not in err and '\x1b[' not in err, err
    last = err.strip().splitlines()[-1]  # above it: Ray's start-up warning and the progress bar
    assert last.startswith('error: evaluation run lm-3-24-s0-adam-') and \
        f'failed: FileNotFoundError: text corpus not found: {corpus}' in last


def test_a_llama_task_is_evaluated_with_the_published_nowcaster(official_dir):
    from nino import load_nowcaster
    from tests.conftest import TEXT

    spec, = load_tasks({'tasks': [{'preset': 'llama-2-32', 'dataset': {'path': str(TEXT), 'context': 32},
                                   'steps': 40, 'record_every': 20, 'eval_every': 20, 'batch_size': 8}]})
    adam = run_curve(spec, 1000, 'adam', None, period=20)
    nino = run_curve(spec, 1000, 'nino', load_nowcaster(official_dir / 'nino_no_posw.pt'), period=20)
    assert metric_of(spec) == 'val_loss' and nino.nowcast_steps == [20, 40]
    assert adam.init_checksum == nino.init_checksum and np.isfinite(nino.values).all()
    assert nino.values != adam.values


def _write_runs(folder: Path, curves: list[tuple[str, Curve]]) -> Path:
    runs = folder / 'runs'
    runs.mkdir(parents=True, exist_ok=True)
    for name, curve in curves:
        (runs / name).write_text(json.dumps(curve.to_dict()))
    return runs


def test_a_folder_report_refuses_runs_it_cannot_pair_and_names_the_files(tmp_path):
    from jobs.report import folder_curves
    from pipeline.tasks import ConfigError

    def run(method, init='w0', task='t'):
        return Curve(task, 0, method, 'val_acc', STEPS, [0.1, 0.5, 0.9, 0.9, 0.9, 0.9], init_checksum=init)

    runs = _write_runs(tmp_path / 'a', [('t-s0-adam-1.json', run('adam')), ('t-s0-n-1.json', run('n')),
                                        ('t-s0-n+k5-1.json', run('n+k5')), ('u-s0-adam-1.json', run('adam', task='u'))])
    assert sorted(c.method for c in folder_curves(runs, ['t'])) == ['adam', 'n', 'n+k5']
    assert sorted(c.method for c in folder_curves(runs, ['t'], ['adam', 'n+*'])) == ['adam', 'n+k5']
    runs = _write_runs(tmp_path / 'a', [('t-s0-n-2.json', run('n'))])  # the same method at another period
    with pytest.raises(ConfigError, match=r't-s0-n-1\.json and t-s0-n-2\.json are both n on t, seed 0'):
        folder_curves(runs, ['t'])
    runs = _write_runs(tmp_path / 'b', [('t-s0-adam-1.json', run('adam')), ('t-s0-n-1.json', run('n', init='w1'))])
    with pytest.raises(ConfigError, match=r't-s0-adam-1\.json and t-s0-n-1\.json did not start from the same'):
        folder_curves(runs, ['t'])
    runs = _write_runs(tmp_path / 'c', [('t-s0-n-1.json', run('n'))])
    with pytest.raises(ConfigError, match="no 'adam' run of task 't'"):
        folder_curves(runs, ['t'])
    (runs / 'broken.json').write_text('{"task": "t"')
    with pytest.raises(ConfigError, match='broken.json: not an evaluation run'):
        folder_curves(runs, ['t'])


def test_a_folder_report_pairs_variants_from_separate_evaluations(tmp_path, capsys):
    """The plain nowcaster and its +k5 variant, run by two evaluate calls into one folder: the folder's
    report has both rows and their paired comparison; a third call at another period makes it refuse."""
    from jobs.evaluate import evaluate
    from jobs.report import main
    ray = pytest.importorskip('ray')
    ckpt = tmp_path / 'tiny.safetensors'
    torch.manual_seed(0)
    save_nowcaster(build_nowcaster(NiNoConfig(gnn=False, hid=8, seq_len=10)), ckpt)
    config = _eval_config(tmp_path)
    out = tmp_path / 'out'
    ray.init(num_cpus=2, include_dashboard=False, logging_level='ERROR', log_to_driver=False)
    try:
        first, _ = evaluate(config, out, [str(ckpt)], seeds=2, progress=False, baselines=False)
        second, _ = evaluate(config, out, [str(ckpt)], seeds=2, progress=False, baselines=False, k_maxes=[5])
        assert main(['--config', str(config), '--runs', str(out)]) == 0
        summary = (out / 'report' / 'summary.md').read_text()
        evaluate(config, out, [str(ckpt)], seeds=2, progress=False, baselines=False, period=25)
    finally:
        ray.shutdown()
    assert all(f'| digits-mlp | val_acc >= 0.5 | {method} |' in summary for method in ('tiny', 'tiny+k5'))
    assert re.search(r'\n\| digits-mlp \| tiny\+k5 \| tiny \| \d \|', summary)  # paired across the two calls
    reported = json.loads((out / 'report' / 'curves.json').read_text())
    assert sorted((c['method'], c['seed'], tuple(c['values'])) for c in reported) == \
        sorted({(c.method, c.seed, tuple(c.values)) for c in first + second})  # adam's runs once
    capsys.readouterr()
    assert main(['--config', str(config), '--runs', str(out)]) == 2
    err = capsys.readouterr().err
    assert re.match(r"error: digits-mlp-s\d-tiny-\w+\.json and digits-mlp-s\d-tiny-\w+\.json are both tiny on "
                    r"digits-mlp, seed 100\d \(another period", err), err
    assert main(['--config', str(config), '--runs', str(out), '--methods', 'adam,tiny+k5']) == 0
