"""Meta-training: exact resume after SIGKILL and torn checkpoints, NaN recovery, learning, DDP, AMP."""

from __future__ import annotations

import csv
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metatrain.training import TrainConfig, TrainingDiverged, list_checkpoints, train
from nino import NiNo, load_nowcaster
from pipeline.store import TrajectoryStore
from pipeline.tasks import ConvNet

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model=dict(hid=32, layers=2), window=dict(step=8, seq_len=10, samples_per_traj=2, batch_size=2))


def _cfg(store, run_dir, **over) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, 'store': str(store), 'run_dir': str(run_dir), 'tasks': ['fm-16'],
                                  'ckpt_every': 10, 'log_every': 5, **over})


def _losses(run_dir: Path) -> list[tuple[str, str, str]]:
    with open(run_dir / 'log.csv') as f:
        return [(r['step'], r['batch'], r['loss']) for r in csv.DictReader(f)]


def _cmd(config: Path, store: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'jobs.train', '--config', str(config), '--store', str(store), '--tasks', 'fm-16',
            '--run-dir', str(run_dir), '--no-progress', *extra]


def test_sigkill_and_torn_checkpoint_resume_bit_for_bit(small_store, tmp_path):
    config = tmp_path / 'train.yaml'
    config.write_text(yaml.safe_dump({**TINY, 'steps': 120, 'ckpt_every': 10, 'keep_last': 3}))
    full, broken = tmp_path / 'full', tmp_path / 'broken'
    subprocess.run(_cmd(config, small_store, full), cwd=ROOT, check=True, capture_output=True)

    proc = subprocess.Popen(_cmd(config, small_store, broken), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (broken / 'log.csv').exists() and len(_losses(broken)) >= 45:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(_losses(broken))
    assert 45 <= done_at_kill < 120
    # what a kill during a checkpoint write can leave: a partial temp file, or (on a filesystem
    # without atomic rename) a truncated newest checkpoint
    newest = list_checkpoints(broken)[0]
    (newest.parent / f'.step-{int(newest.stem[5:]) + 10:08d}.pt.tmp').write_bytes(newest.read_bytes()[:999])
    newest.write_bytes(newest.read_bytes()[:len(newest.read_bytes()) // 2])

    out = subprocess.run(_cmd(config, small_store, broken, '--resume', 'auto'), cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert f'skipped unreadable checkpoint {newest.name}' in out
    assert _losses(broken) == _losses(full)
    assert len(_losses(full)) == 120
    a = load_nowcaster(full / 'nowcaster.safetensors').state_dict()
    b = load_nowcaster(broken / 'nowcaster.safetensors').state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _poisoned_copy(small_store: Path, tmp_path: Path, trajectories: list[int]) -> Path:
    store = tmp_path / 'poisoned'
    shutil.copytree(small_store, store)
    group = TrajectoryStore(store).group('fm-16')
    for i in trajectories:
        block = group.read_params(i, slice(20, 21))
        block[0, :100] = np.nan
        group.write_states(i, 20, block)
    return store


def test_nan_batches_are_skipped_and_training_finishes(small_store, tmp_path):
    store = _poisoned_copy(small_store, tmp_path, [0])
    summary = train(_cfg(store, tmp_path / 'run', steps=40, nan_patience=2), progress=False)
    assert summary['step'] == 40 and summary['nonfinite_events'] >= 2
    assert summary['lr_scale'] == 0.5 ** (summary['nonfinite_events'] // 2)
    assert np.isfinite(summary['losses']).all()
    model = load_nowcaster(tmp_path / 'run' / 'nowcaster.safetensors')
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with open(tmp_path / 'run' / 'log.csv') as f:
        events = [r for r in csv.DictReader(f) if r['event'] == 'nonfinite']
    assert len(events) == summary['nonfinite_events']


def test_only_nan_batches_stop_with_a_clear_error(small_store, tmp_path):
    store = _poisoned_copy(small_store, tmp_path, [0, 1, 2, 3])
    cfg = _cfg(store, tmp_path / 'run', steps=40, max_nan_in_row=3,
               window=dict(TINY['window'], step=4, seq_len=40, samples_per_traj=1))
    with pytest.raises(TrainingDiverged, match='3 non-finite losses/gradients in a row at step 0'):
        train(cfg, progress=False)


def test_learns_better_than_no_change_and_loads_into_nino(small_store, tmp_path, fashion_mnist):
    run = tmp_path / 'run'
    summary = train(_cfg(small_store, run, steps=150, holdout=1, lr=3e-3, val_batches=8), progress=False)
    assert summary['val_l1'] < summary['val_l1_no_change']

    torch.manual_seed(0)
    net = ConvNet()
    opt = NiNo(torch.optim.AdamW(net.parameters(), lr=6e-3), net, ckpt=run / 'nowcaster.safetensors',
               period=10, max_train_steps=20)
    x, y = fashion_mnist
    for step in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[step * 32:(step + 1) * 32]), y[step * 32:(step + 1) * 32])
        if opt.need_grads:
            loss.backward()
        opt.step()
    assert opt.num_nowcasts == 2 and opt.k_schedule.tolist() == [10, 1]


def test_resume_with_another_config_names_the_fields(small_store, tmp_path):
    train(_cfg(small_store, tmp_path / 'run', steps=10), progress=False)
    with pytest.raises(ValueError, match=r"differs in \['lr'\]"):
        train(_cfg(small_store, tmp_path / 'run', steps=20, lr=1e-2), resume='auto', progress=False)


def test_resume_with_more_steps_stretches_the_cosine(small_store, tmp_path):
    """Raising `steps` on resume continues on the cosine of the new length, not the old one past its end."""
    train(_cfg(small_store, tmp_path / 'run', steps=10), progress=False)
    train(_cfg(small_store, tmp_path / 'run', steps=30), resume='auto', progress=False)
    with open(tmp_path / 'run' / 'log.csv') as f:
        lrs = {int(r['step']): float(r['lr']) for r in csv.DictReader(f) if r['lr']}
    cfg = _cfg(small_store, tmp_path / 'run', steps=30)
    for step in (11, 20, 30):
        planned = cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + np.cos(np.pi * step / 30)) / 2
        assert lrs[step] == pytest.approx(planned, rel=1e-9)
    assert lrs[10] == pytest.approx(cfg.min_lr)  # the first run ended its own cosine


def test_init_starts_from_a_nowcasters_weights_and_names_a_mismatch(small_store, tmp_path):
    """`init` fine-tunes an exported nowcaster: one Adam step at lr 1e-4 moves no weight by more than
    ~1e-4 from it (a random init is far away); another architecture or a missing file is named."""
    train(_cfg(small_store, tmp_path / 'a', steps=10), progress=False)
    start = load_nowcaster(tmp_path / 'a' / 'nowcaster.safetensors').state_dict()
    init = str(tmp_path / 'a' / 'nowcaster.safetensors')
    for name, over in (('tuned', {'init': init}), ('fresh', {})):
        train(_cfg(small_store, tmp_path / name, steps=1, lr=1e-4, seed=1, **over), progress=False)
    moved = {name: max(float((w - start[k]).abs().max()) for k, w in
                       load_nowcaster(tmp_path / name / 'nowcaster.safetensors').state_dict().items())
             for name in ('tuned', 'fresh')}
    assert 0 < moved['tuned'] < 1.1e-4 and moved['fresh'] > 0.05
    with pytest.raises(ValueError, match=r"field 'init': .* is another nowcaster \(hid: run 16 vs checkpoint 32"):
        train(_cfg(small_store, tmp_path / 'c', steps=1, init=init, model=dict(hid=16, layers=2)), progress=False)
    with pytest.raises(ValueError, match="field 'init': no nowcaster checkpoint at .*missing.safetensors"):
        train(_cfg(small_store, tmp_path / 'd', steps=1, init=str(tmp_path / 'missing.safetensors')), progress=False)


def test_horizon_power_weighs_the_runs_loss_and_a_resume_must_keep_it(small_store, tmp_path):
    """Same seed and batches: a run with horizon_power has other losses than one without (the far horizons
    weigh more); resuming it with another horizon_power is refused, naming the field."""
    plain = train(_cfg(small_store, tmp_path / 'plain', steps=2), progress=False)
    weighted = train(_cfg(small_store, tmp_path / 'far', steps=2, horizon_power=2), progress=False)
    assert np.isfinite(weighted['losses']).all() and weighted['losses'][0] != plain['losses'][0]
    with pytest.raises(ValueError, match=re.escape("config differs in ['horizon_power']")):
        train(_cfg(small_store, tmp_path / 'far', steps=3, horizon_power=4), resume='auto', progress=False)


def test_bf16_autocast_on_cpu(small_store, tmp_path):
    summary = train(_cfg(small_store, tmp_path / 'run', steps=5, amp='bf16'), progress=False)
    fp32 = train(_cfg(small_store, tmp_path / 'run32', steps=5), progress=False)
    assert np.isfinite(summary['losses']).all()
    assert summary['losses'] != fp32['losses']
    assert np.allclose(summary['losses'], fp32['losses'], rtol=0.1)


@pytest.mark.filterwarnings("ignore:amp='fp16' on the CPU:RuntimeWarning")
def test_fp16_with_the_grad_scaler_resumes_exactly(small_store, tmp_path):
    """fp16 autocast with the grad scaler (the CUDA path; the CPU has a scaler too): losses near fp32's,
    the scaler's state in every checkpoint, and a resume from the middle repeats the run's losses."""
    with pytest.warns(RuntimeWarning, match="amp='fp16' on the CPU runs without fast kernels"):
        full = train(_cfg(small_store, tmp_path / 'full', steps=20, amp='fp16'), progress=False)
    fp32 = train(_cfg(small_store, tmp_path / 'fp32', steps=20), progress=False)
    assert np.isfinite(full['losses']).all() and full['losses'] != fp32['losses']
    assert np.allclose(full['losses'], fp32['losses'], rtol=0.1)
    newest, middle = list_checkpoints(tmp_path / 'full')[:2]
    assert torch.load(middle, weights_only=True)['scaler']['_growth_tracker'] == 10  # steps since a backoff
    shutil.copytree(tmp_path / 'full', tmp_path / 'resumed')
    (tmp_path / 'resumed' / newest.relative_to(tmp_path / 'full')).unlink()
    train(_cfg(small_store, tmp_path / 'resumed', steps=20, amp='fp16'), resume='auto', progress=False)
    assert _losses(tmp_path / 'resumed') == _losses(tmp_path / 'full')
    assert torch.load(list_checkpoints(tmp_path / 'resumed')[0], weights_only=True)['scaler']['_growth_tracker'] == 20


@pytest.mark.filterwarnings("ignore:amp='fp16' on the CPU:RuntimeWarning")
def test_fp16_overflow_is_the_grad_scalers_to_skip(small_store, tmp_path, monkeypatch):
    """Gradients that overflow fp16 at a too large loss scale: the scaler skips those updates and backs off
    (logged as such in log.csv), which is not a non-finite event of the run's own recovery."""
    monkeypatch.setattr(torch.amp, 'GradScaler', functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 24))
    summary = train(_cfg(small_store, tmp_path / 'run', steps=10, amp='fp16'), progress=False)
    scale = torch.load(list_checkpoints(tmp_path / 'run')[0], weights_only=True)['scaler']['scale']
    assert scale < 2.0 ** 24 and np.isfinite(summary['losses']).all() and summary['nonfinite_events'] == 0
    with open(tmp_path / 'run' / 'log.csv') as f:
        events = [(r['step'], r['event']) for r in csv.DictReader(f)]
    assert [step for step, _ in events] == [str(s) for s in range(1, 11)]  # no 'nonfinite' rows
    skipped = [event for _, event in events if event]
    assert 0 < len(skipped) < 10  # some updates skipped, the others taken
    assert all(event.startswith('fp16 overflow: update skipped, loss scale ') for event in skipped)
    nowcaster = load_nowcaster(tmp_path / 'run' / 'nowcaster.safetensors')
    assert all(torch.isfinite(p).all() for p in nowcaster.parameters())


def test_ddp_two_processes_with_gloo(small_store, tmp_path):
    config = tmp_path / 'train.yaml'
    config.write_text(yaml.safe_dump({**TINY, 'steps': 4}))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          '-m', 'jobs.train', '--config', str(config), '--store', str(small_store), '--tasks',
                          'fm-16', '--run-dir', str(tmp_path / 'ddp'), '--no-progress'],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count('done: step 4') == 2
    assert [r[0] for r in _losses(tmp_path / 'ddp')] == ['1', '2', '3', '4']
    single = train(_cfg(small_store, tmp_path / 'one', steps=4), progress=False)
    assert [float(r[2]) for r in _losses(tmp_path / 'ddp')] != single['losses']  # rank 0 saw other batches
    load_nowcaster(tmp_path / 'ddp' / 'nowcaster.safetensors')


def test_sigkill_during_a_checkpoint_write_resumes_bit_for_bit(small_store, tmp_path):
    """Kill the run the moment a checkpoint's temporary file appears (a write in progress)."""
    config = tmp_path / 'train.yaml'
    big = dict(TINY, model=dict(hid=128, layers=3))  # a ~3.5 MB checkpoint: a write takes a while
    config.write_text(yaml.safe_dump({**big, 'steps': 16, 'ckpt_every': 1, 'keep_last': 2}))
    full, broken = tmp_path / 'full', tmp_path / 'broken'
    subprocess.run(_cmd(config, small_store, full), cwd=ROOT, check=True, capture_output=True)
    caught = None
    for _ in range(5):  # the write window is short: try until a kill lands inside one
        shutil.rmtree(broken, ignore_errors=True)
        proc = subprocess.Popen(_cmd(config, small_store, broken), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        ckpts = broken / 'checkpoints'
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            tmp = [n for n in (os.listdir(ckpts) if ckpts.is_dir() else []) if n.endswith('.tmp')]
            if tmp and len(_losses(broken)) > 3:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                if (ckpts / tmp[0]).exists():
                    caught = ckpts / tmp[0]
                break
            time.sleep(0.0005)
        proc.kill()
        proc.wait()
        if caught:
            break
    assert caught is not None, 'no kill landed during a checkpoint write in 5 attempts'
    subprocess.run(_cmd(config, small_store, broken, '--resume', 'auto'), cwd=ROOT, check=True,
                   capture_output=True)
    assert _losses(broken) == _losses(full)


def test_set_overrides_nested_config_fields_and_names_bad_ones():
    from jobs.train import build_config, make_parser
    config = str(ROOT / 'jobs' / 'configs' / 'quickstart-train.yaml')
    args = make_parser().parse_args(['--config', config, '--set', 'window.step=8', '--set', 'model.hid=16',
                                     '--set', 'lr=1e-3', '--steps', '7'])
    cfg = build_config(args)
    assert (cfg.window['step'], cfg.window['seq_len'], cfg.lr, cfg.steps) == (8, 20, 1e-3, 7)
    assert cfg.model == {'hid': 16, 'layers': 3}
    for bad, message in [('window.step', "expected KEY=VALUE"), ('lr.x=1', "'lr' is not a mapping"),
                         ('bogus=1', "unknown training config field(s) ['bogus']"),
                         ('steps=2.5', "field 'steps' must be int, got 2.5")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            build_config(make_parser().parse_args(['--config', config, '--set', bad]))


def test_holdout_that_leaves_no_training_data_is_refused(small_store, tmp_path):
    for holdout in (4, 7):
        with pytest.raises(ValueError, match=f"holdout={holdout} leaves no training trajectories for task 'fm-16'"):
            train(_cfg(small_store, tmp_path / 'run', steps=5, holdout=holdout), progress=False)
    assert not list((tmp_path / 'run').glob('*.safetensors'))


@pytest.mark.parametrize('field, value, message', [
    ('steps', -5, "'steps' must be >= 1, got -5"), ('steps', 0, "'steps' must be >= 1, got 0"),
    ('ckpt_every', 0, "'ckpt_every' must be >= 1"), ('log_every', 0, "'log_every' must be >= 1"),
    ('val_every', -1, "'val_every' must be >= 0"), ('val_batches', 0, "'val_batches' must be >= 1"),
    ('keep_last', 0, "'keep_last' must be >= 1"), ('holdout', -1, "'holdout' must be >= 0"),
    ('lr', -1e-3, "'lr' must be >= 0.0"), ('nan_lr_factor', 0, "'nan_lr_factor' must be in (0, 1]"),
    ('horizon_power', -1, "'horizon_power' must be >= 0.0"),
    ('window', {'stepp': 8}, "unknown field(s) ['stepp'] under 'window'"),
    ('model', {'hidden': 8}, "unknown nowcaster config fields: ['hidden']"),
    ('window', 'big', "'window' must be a mapping"),
])
def test_config_values_out_of_range_are_named(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig.from_dict({'store': 's', 'run_dir': 'r', field: value})


def test_jobs_train_refuses_bad_steps_with_one_line(small_store, tmp_path):
    config = tmp_path / 'train.yaml'
    config.write_text(yaml.safe_dump({**TINY, 'steps': -5}))
    done = subprocess.run(_cmd(config, small_store, tmp_path / 'run'), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: training config field 'steps' must be >= 1, got -5"


def test_logs_are_closed_when_training_diverges(small_store, tmp_path, monkeypatch):
    closed = []
    from torch.utils.tensorboard import SummaryWriter
    original = SummaryWriter.close
    monkeypatch.setattr(SummaryWriter, 'close', lambda self: closed.append(self) or original(self))
    store = _poisoned_copy(small_store, tmp_path, [0, 1, 2, 3])
    cfg = _cfg(store, tmp_path / 'run', steps=40, max_nan_in_row=3,
               window=dict(TINY['window'], step=4, seq_len=40, samples_per_traj=1))
    with pytest.raises(TrainingDiverged):
        train(cfg, progress=False)
    assert len(closed) == 1
    rows = _losses(tmp_path / 'run')
    assert len(rows) == 3  # every non-finite event reached the CSV before the error


def test_a_damaged_chunk_is_skipped_named_and_counted(small_store, tmp_path):
    from tests.test_loader import damage
    store = tmp_path / 'damaged'
    shutil.copytree(small_store, store)
    key = damage(store, 'fm-16', 1, 10)
    summary = train(_cfg(store, tmp_path / 'run', steps=12), progress=False)
    assert summary['step'] == 12 and np.isfinite(summary['losses']).all() and summary['damaged_reads'] > 0
    with open(tmp_path / 'run' / 'log.csv') as f:
        events = [r['event'] for r in csv.DictReader(f) if r['event'].startswith('damaged')]
    assert len(events) == summary['damaged_reads']
    assert all(f"task 'fm-16', trajectory 1: chunk {key}" in e for e in events)
    done = subprocess.run([sys.executable, '-m', 'pipeline', 'stream', str(store), '--step', '8', '--batches', '6'],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"skipped a damaged read: task 'fm-16', trajectory 1: chunk {key}" in done.stdout


def test_loss_equals_the_papers_masked_edge_space_l1(small_store):
    """Same weights, same windows: the parameter-space loss equals the reference formulation (targets
    and mask in edge space, prediction = last state + change) to float tolerance, padding included;
    the fused loss has exactly the value and gradients of autograd through the plain one, and so has its
    horizon-weighted form to float tolerance."""
    from metatrain.training import change_targets, forward, horizon_weights, target_l1, window_l1
    from nino.graph import EdgeType, build_graph
    from nino.model import NiNoConfig, build_nowcaster
    from pipeline.loader import WindowConfig, WindowStream
    cfg = WindowConfig(step=8, seq_len=12, samples_per_traj=3, batch_size=2)
    stream = WindowStream(str(small_store), cfg, tasks=['fm-16'], seed=3)
    graph = build_graph(TrajectoryStore(small_store, mode='r').group('fm-16').layout)
    torch.manual_seed(0)
    model = build_nowcaster(NiNoConfig(hid=32, layers=2, seq_len=12))
    short = 0
    for b in range(4):
        batch = stream.batch(b)
        short += int((batch.y_len < cfg.seq_len).sum())
        ours = window_l1(forward(model, batch), batch, cfg.ctx)
        pred = model(batch.edge_attr, batch.edge_type, batch.edge_index, batch.pos, batch.pos_w)  # (E, 9, 12)
        targets, preds, masks = [], [], []
        y = batch.targets()
        for w in range(batch.num_windows):
            e0, e1 = batch.edge_ptr[w:w + 2].tolist()
            q0, q1 = batch.y_ptr[w:w + 2].tolist()
            n = int(batch.y_len[w])
            edge_y = graph.edge_features(y[q0:q1]).view(-1, 9, cfg.seq_len)
            mask = graph.edge_features(torch.ones(q1 - q0, cfg.seq_len)).view(-1, 9, cfg.seq_len) > 0
            mask[:, :, n:] = False
            mask[graph.edge_type >= EdgeType.RESIDUAL] = False
            targets.append(edge_y)
            masks.append(mask)
            preds.append(pred[e0:e1])
        mask = torch.cat(masks)
        paper = torch.nn.functional.l1_loss(torch.cat(preds)[mask], torch.cat(targets)[mask])
        assert torch.allclose(ours, paper, rtol=1e-5), (b, float(ours), float(paper))
        delta = forward(model, batch)  # the fused loss and plain autograd of the same L1: same value and gradient
        plain = target_l1(batch.at_targets(delta), batch, change_targets(batch, cfg.ctx))
        grads = [torch.autograd.grad(loss, list(model.parameters())) for loss in (ours, plain)]
        assert torch.equal(ours, plain) and all(torch.equal(a, b) for a, b in zip(*grads)), b
        # weighted by horizon: the weighted mean over the targets each window has, with autograd's gradient
        weights = horizon_weights(cfg.seq_len, 2.0)
        delta = forward(model, batch)
        fused = window_l1(delta, batch, cfg.ctx, weights)
        errors = (batch.at_targets(delta) - change_targets(batch, cfg.ctx)).abs()
        valid = torch.zeros_like(errors, dtype=torch.bool)
        for q0, q1, n in zip(batch.y_ptr[:-1].tolist(), batch.y_ptr[1:].tolist(), batch.y_len.tolist()):
            valid[q0:q1, :n] = True
        w = weights.expand_as(errors)
        reference = (errors * w)[valid].sum() / w[valid].sum()
        grads = [torch.autograd.grad(loss, list(model.parameters()), retain_graph=True) for loss in (fused, reference)]
        assert torch.allclose(fused, reference, rtol=1e-5), (b, float(fused), float(reference))
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-9) for a, b in zip(*grads)), b
    assert short > 0  # the padding case was exercised


def test_bad_resume_paths_are_one_line_each(small_store, tmp_path, capsys):
    from jobs.train import main
    config = tmp_path / 'train.yaml'
    config.write_text(yaml.safe_dump({**TINY, 'steps': 2}))
    garbage = tmp_path / 'random.pt'
    garbage.write_bytes(os.urandom(4096))
    text = tmp_path / 'notes.txt'
    text.write_text('not a checkpoint\n')
    export = tmp_path / 'nowcaster.safetensors'
    from nino.checkpoint import save_nowcaster
    from nino.model import NiNoConfig, build_nowcaster
    save_nowcaster(build_nowcaster(NiNoConfig(hid=8, layers=2)), export)
    other = tmp_path / 'other.pt'
    torch.save({'weights': torch.zeros(2)}, other)
    cases = [(tmp_path / 'missing.pt', 'no such file'), (garbage, 'not a readable training checkpoint'),
             (text, 'not a readable training checkpoint'), (export, 'an exported nowcaster'),
             (other, 'not a training checkpoint')]
    for path, message in cases:
        code = main(_cmd(config, small_store, tmp_path / 'run', '--resume', str(path))[3:])
        err = capsys.readouterr().err
        assert code == 2, (path, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f'error: --resume {path}: {message}'), err
