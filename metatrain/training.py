"""Meta-training of a nowcaster on windows streamed from a trajectory store.

Read `train()` top to bottom: set up (or resume) model, optimizer, cosine schedule and AMP; then
loop: next batch, forward under autocast, masked L1 against the future states, backward,
clip, step; log; validate; checkpoint. Everything a restart needs is in each checkpoint
(model, optimizer, scheduler, grad scaler, RNG state, data position, step, recovery state,
config), written atomically; `resume='auto'` continues from the newest readable one, so a run
killed at any point and restarted produces the same per-step losses as one never interrupted.

A non-finite loss or gradient never reaches the weights: the update is skipped, the model and
optimizer are rolled back to the last good state, the data stream moves on, the learning rate is
lowered after every `nan_patience` such events, and after `max_nan_in_row` in a row training stops
with an error saying where.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nino.checkpoint import load_nowcaster, save_nowcaster
from nino.config import parse_number
from nino.model import NiNoConfig, Nowcaster, build_nowcaster
from pipeline.loader import WindowBatch, WindowConfig, WindowStream, window_loader

CHECKPOINT_DIR = 'checkpoints'
EXPORT_NAME = 'nowcaster.safetensors'
CSV_FIELDS = ('step', 'batch', 'loss', 'lr', 'grad_norm', 'seconds', 'event')
SCALER_SKIP = 'fp16 overflow: update skipped'  # log.csv event of a step whose update the grad scaler skipped


class TrainingDiverged(RuntimeError):
    """Training hit too many non-finite losses or gradients in a row."""


#: Smallest value each numeric training field accepts (0 for val_every means "at the end only").
_LOWER_BOUNDS = dict(steps=1, holdout=0, lr=0.0, min_lr=0.0, weight_decay=0.0, grad_clip=0.0, num_workers=0,
                     ckpt_every=1, keep_last=1, log_every=1, val_every=0, val_batches=1, nan_patience=1,
                     max_nan_in_row=1, horizon_power=0.0)


@dataclass
class TrainConfig:
    """Everything that defines a meta-training run (saved in every checkpoint)."""

    store: str
    run_dir: str
    tasks: list[str] | None = None
    holdout: int = 0  # last trajectories of each task kept out of training, for validation
    steps: int = 1000
    lr: float = 3e-3
    min_lr: float = 1e-6
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    amp: str = 'none'  # none | bf16 | fp16 (fp16 with a grad scaler; meant for CUDA, runs on CPU too)
    device: str = 'cpu'
    seed: int = 0
    num_workers: int = 0
    ckpt_every: int = 100
    keep_last: int = 3
    log_every: int = 10
    val_every: int = 0  # 0: validate only at the end (when holdout > 0)
    val_batches: int = 4
    nan_patience: int = 3
    nan_lr_factor: float = 0.5
    max_nan_in_row: int = 10
    model: dict[str, Any] = field(default_factory=dict)  # NiNoConfig fields
    window: dict[str, Any] = field(default_factory=dict)  # WindowConfig fields
    # start from this nowcaster's weights (a .safetensors of this project or a published .pt) instead of a
    # random init, e.g. to fine-tune a published nowcaster on new trajectories; its config must be the run's
    init: str | None = None
    # training loss weight of horizon j (1..seq_len) is (j / seq_len) ** horizon_power: 0 weighs every target
    # alike; above 0 favours the far targets, which the first nowcasts of a run use (k decays from seq_len)
    horizon_power: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f'unknown training config field(s) {unknown}; known: {sorted(known)}')
        if d.get('amp', 'none') not in ('none', 'bf16', 'fp16'):
            raise ValueError(f"training config field 'amp' must be none, bf16 or fp16, got {d['amp']!r}")
        d = dict(d)
        for f in fields(cls):
            if f.name in d and f.type in ('float', 'int'):
                d[f.name] = parse_number(f.name, d[f.name], float if f.type == 'float' else int, 'training config')
        for name in ('model', 'window'):
            if not isinstance(d.get(name, {}), dict):
                raise ValueError(f'training config field {name!r} must be a mapping, got {d[name]!r}')
        cfg = cls(**d)
        for name, low in _LOWER_BOUNDS.items():
            value = getattr(cfg, name)
            if value < low:
                raise ValueError(f'training config field {name!r} must be >= {low}, got {value!r}')
        if not 0 < cfg.nan_lr_factor <= 1:
            raise ValueError(f"training config field 'nan_lr_factor' must be in (0, 1], got {cfg.nan_lr_factor!r}")
        try:
            cfg.window_config()
            cfg.nowcaster_config()
        except (TypeError, ValueError) as err:
            raise ValueError(f'training config: {err}') from None
        return cfg

    def nowcaster_config(self) -> NiNoConfig:
        window = self.window_config()
        base = dict(ctx=window.ctx, seq_len=window.seq_len, max_feat_size=window.max_feat_size, lpe=window.lpe)
        return NiNoConfig.from_dict({**base, **self.model})

    def window_config(self) -> WindowConfig:
        known = {f.name for f in fields(WindowConfig)}
        unknown = sorted(set(self.window) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} under 'window'; known: {sorted(known)}")
        return WindowConfig(**self.window)


@dataclass
class Recovery:
    """Non-finite event bookkeeping (saved with checkpoints)."""

    events: int = 0
    in_row: int = 0
    lr_scale: float = 1.0


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _unwrap(model: torch.nn.Module) -> Nowcaster:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _padding(batch: WindowBatch) -> list[tuple[int, int, int]]:
    """(first row, end row, first padded column) of every window with fewer targets than seq_len."""
    return [(q0, q1, n) for n, q0, q1 in zip(batch.y_len.tolist(), batch.y_ptr[:-1].tolist(),
                                             batch.y_ptr[1:].tolist()) if n < batch.seq_len]


def target_l1(rows: torch.Tensor, batch: WindowBatch, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of (Q, seq_len) values against `targets`, over every target of the batch (each
    parameter of each window at each horizon its window has; padding past a window's end counts for nothing).
    `targets` is overwritten at the padding."""
    count = rows.numel()
    for q0, q1, n in _padding(batch):  # padding: targets equal to the values, so zero error and gradient
        targets[q0:q1, n:] = rows[q0:q1, n:].detach()
        count -= (q1 - q0) * (rows.shape[1] - n)
    return F.l1_loss(rows.float(), targets, reduction='sum') / count


class _GatheredL1(torch.autograd.Function):
    """`target_l1(values[index], ...)` in fewer passes over the (Q, seq_len) targets: the rows are
    gathered and compared in one go, the gradient's sign kept from the forward pass, and the
    backward writes each row's gradient once (`index` holds no row twice) instead of adding it.
    With `weights` (seq_len,), the weighted mean over horizons instead."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, index: torch.Tensor, targets: torch.Tensor,
                padding: list[tuple[int, int, int]], weights: torch.Tensor | None) -> torch.Tensor:
        diff = torch.sub(values.index_select(0, index), targets)  # float32 (targets are)
        # weight of the horizons n.. of a row, for every n (one read of the weights, not one per padded window)
        tail = list(range(diff.shape[1], -1, -1)) if weights is None else \
            weights.flip(0).cumsum(0).flip(0).tolist() + [0.0]
        count = diff.shape[0] * tail[0]
        for q0, q1, n in padding:
            diff[q0:q1, n:] = 0
            count -= (q1 - q0) * tail[n]
        sign = diff.sign()
        if weights is not None:  # the gradient of |w * diff| is w * sign(diff)
            diff.mul_(weights)
            sign.mul_(weights)
        ctx.save_for_backward(index, sign.to(values.dtype))
        ctx.shape, ctx.count = values.shape, count
        return diff.abs_().sum() / count

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        index, sign = ctx.saved_tensors
        rows = sign * (grad / ctx.count).to(sign.dtype)
        return sign.new_zeros(ctx.shape).index_copy_(0, index, rows), None, None, None, None


def horizon_weights(seq_len: int, power: float, device: str | torch.device = 'cpu') -> torch.Tensor | None:
    """Training loss weights of the horizons 1..seq_len, (j / seq_len) ** power; None for power 0 (all equal)."""
    if power == 0:
        return None
    return (torch.arange(1, seq_len + 1, dtype=torch.float32, device=device) / seq_len) ** power


def change_targets(batch: WindowBatch, ctx: int) -> torch.Tensor:
    """(Q, seq_len) targets minus the last input state: the change a nowcaster predicts."""
    return batch.targets(minus=batch.last_input(ctx))


def forward(model: torch.nn.Module, batch: WindowBatch) -> torch.Tensor:
    """All-horizon predicted changes from the last input state (E, feat, seq_len) of a nowcaster for a batch."""
    return model(batch.edge_attr, batch.edge_type, batch.edge_index, batch.pos, batch.pos_w, add_last=False)


def window_l1(delta: torch.Tensor, batch: WindowBatch, ctx: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss: L1 of the predicted states at every target (prediction = last state + change;
    the last state cancels, so it is taken from the targets instead of added to every prediction);
    with `weights` (seq_len,), each horizon's errors weighted so (see `horizon_weights`)."""
    values = delta.reshape(-1, delta.shape[-1])
    return _GatheredL1.apply(values, batch.y_slot, change_targets(batch, ctx), _padding(batch), weights)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, newest first (temporary files of interrupted writes excluded)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    return sorted(folder.glob('step-*.pt'), reverse=True) if folder.is_dir() else []


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint (`checkpoints/step-*.pt`); anything else is a ValueError naming the file."""
    if not path.is_file():
        raise ValueError(f'--resume {path}: no such file')
    if path.suffix == '.safetensors':
        raise ValueError(f'--resume {path}: an exported nowcaster, not a training checkpoint; resume from '
                         f"run_dir/{CHECKPOINT_DIR}/step-*.pt or with --resume auto")
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # torn, foreign or not a torch file at all
        raise ValueError(f'--resume {path}: not a readable training checkpoint ({type(err).__name__})') from None
    missing = {'model', 'optimizer', 'scheduler', 'step', 'position', 'config'} - set(state) \
        if isinstance(state, dict) else {'everything'}
    if missing:
        raise ValueError(f'--resume {path}: not a training checkpoint (no {sorted(missing)})')
    return state


def load_latest_checkpoint(run_dir: str | Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest checkpoint that reads back completely, and what was skipped on the way."""
    skipped = []
    for path in list_checkpoints(run_dir):
        try:
            return read_checkpoint(path), skipped
        except ValueError as err:  # a torn or foreign file: skip it, try the previous one
            skipped.append(f'{path.name} ({str(err).rsplit("(", 1)[-1].rstrip(")")})')
    return None, skipped


def _write_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    with open(tmp, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _autocast(cfg: TrainConfig):
    if cfg.amp == 'none':
        return torch.autocast(device_type=torch.device(cfg.device).type, enabled=False)
    dtype = torch.bfloat16 if cfg.amp == 'bf16' else torch.float16
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=dtype)


def _validation_batches(cfg: TrainConfig, stream: WindowStream) -> list:
    held = {name: stream.trajectories[name][-cfg.holdout:] for name in stream.task_names} if cfg.holdout else {}
    if not held:
        return []
    val = WindowStream(cfg.store, cfg.window_config(), tasks=stream.task_names, trajectories=held,
                       seed=cfg.seed + 1_000_003)
    return [val.batch(i) for i in range(cfg.val_batches)]


@torch.no_grad()
def validate(model: torch.nn.Module, batches: list, cfg: TrainConfig) -> tuple[float, float]:
    """(masked L1 of the model, masked L1 of "no change": the last input state repeated)."""
    model.eval()
    ctx = cfg.window_config().ctx
    ours = base = 0.0
    for batch in batches:
        batch = batch.to(cfg.device)
        with _autocast(cfg):
            delta = forward(model, batch)
        targets = change_targets(batch, ctx)
        ours += target_l1(batch.at_targets(delta), batch, targets.clone()).item()  # its padding is overwritten
        base += target_l1(torch.zeros_like(targets), batch, targets).item()
    model.train()
    return ours / len(batches), base / len(batches)


def _stretch_cosine(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, steps: int) -> None:
    """A run resumed with another number of steps: the learning rate continues on the cosine planned for
    `steps` from the start (the saved schedule would otherwise climb back up past its old end)."""
    scheduler.T_max = steps
    t, low = scheduler.last_epoch, scheduler.eta_min
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group['lr'] = low + (base - low) * (1 + math.cos(math.pi * t / steps)) / 2
    scheduler._last_lr = [group['lr'] for group in scheduler.optimizer.param_groups]


def load_init(model: Nowcaster, cfg: TrainConfig) -> None:
    """Copy `cfg.init`'s weights into the run's freshly built nowcaster; a checkpoint whose config
    differs from the run's (a hidden size, the number of targets) is named field by field."""
    try:
        source = load_nowcaster(cfg.init)
    except (OSError, ValueError) as err:
        raise ValueError(f"training config field 'init': {err}") from None
    own, theirs = cfg.nowcaster_config().to_dict(), source.config.to_dict()
    diff = [f'{k}: run {own[k]!r} vs checkpoint {theirs.get(k)!r}' for k in own if own[k] != theirs.get(k)]
    if diff:
        raise ValueError(f"training config field 'init': {cfg.init} is another nowcaster ({'; '.join(diff)}); "
                         f"set the run's model and window fields to match it")
    model.load_state_dict(source.state_dict())


def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) meta-training; returns a summary (final step, losses, validation)."""
    rank, world = _rank_world()
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    # ---- resume: the newest complete checkpoint, if asked and present
    state, skipped = (None, [])
    if resume == 'auto':
        state, skipped = load_latest_checkpoint(run_dir)
    elif resume:
        state = read_checkpoint(Path(resume))
    if state is not None:
        saved = TrainConfig.from_dict(state['config'])
        diff = sorted(f.name for f in fields(TrainConfig)
                      if f.name not in ('steps', 'num_workers', 'device', 'run_dir')
                      and getattr(saved, f.name) != getattr(cfg, f.name))
        if diff:
            raise ValueError(f'{run_dir}: resuming a run whose config differs in {diff}; '
                             f'use another --run-dir or the same config')

    # ---- model, optimizer, schedule, AMP
    torch.manual_seed(cfg.seed)
    model: torch.nn.Module = build_nowcaster(cfg.nowcaster_config()).to(cfg.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps, eta_min=cfg.min_lr)
    scaler = torch.amp.GradScaler(torch.device(cfg.device).type) if cfg.amp == 'fp16' else None
    if cfg.amp == 'fp16' and torch.device(cfg.device).type == 'cpu':
        warnings.warn("amp='fp16' on the CPU runs without fast kernels (9x slower than fp32 on the development "
                      "machine, docs/cuda-check.md); amp='bf16' is the CPU's", RuntimeWarning, stacklevel=2)
    step, position, recovery = 0, 0, Recovery()
    if state is None and cfg.init:
        load_init(model, cfg)
    if state is not None:
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        if scheduler.T_max != cfg.steps:
            _stretch_cosine(scheduler, cfg.steps)
        if scaler is not None and state.get('scaler'):
            scaler.load_state_dict(state['scaler'])
        torch.set_rng_state(state['rng'])
        step, position, recovery = state['step'], state['position'], Recovery(**state['recovery'])
    if world > 1:
        model = DistributedDataParallel(model)

    # ---- data: the stream resumes at the saved batch position
    probe = WindowStream(cfg.store, cfg.window_config(), tasks=cfg.tasks, seed=cfg.seed)
    for name, idx in probe.trajectories.items():
        if cfg.holdout and cfg.holdout >= len(idx):
            raise ValueError(f"holdout={cfg.holdout} leaves no training trajectories for task '{name}' "
                             f'({len(idx)} in the store); validation must not overlap training')
    train_trajs = {name: idx[:len(idx) - cfg.holdout] for name, idx in probe.trajectories.items()}
    stream = WindowStream(cfg.store, cfg.window_config(), tasks=cfg.tasks, trajectories=train_trajs,
                          seed=cfg.seed, start=position, shard=(rank, world))
    val_batches = _validation_batches(cfg, probe)
    batches = iter(window_loader(stream, cfg.num_workers))

    # ---- logs: CSV rows past the resumed step belong to lost progress and are dropped
    log_path = run_dir / 'log.csv'
    writer = tb = None
    if rank == 0:
        rows = []
        if state is not None and log_path.exists():
            with open(log_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r['batch']) < position]
        with open(log_path, 'w', newline='') as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        writer = open(log_path, 'a', newline='')
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(str(run_dir / 'tensorboard'), purge_step=step if state is not None else None)
        for s in skipped:
            print(f'resume: skipped unreadable checkpoint {s}')
        if state is not None:
            print(f'resume: continuing from step {step} (batch {position})')
    csv_out = csv.DictWriter(writer, CSV_FIELDS) if writer else None

    def log(row: dict[str, Any]) -> None:
        if csv_out is not None:
            csv_out.writerow(row)
            writer.flush()

    def checkpoint() -> None:
        if rank != 0:
            return
        core = _unwrap(model)
        _write_atomic({'model': core.state_dict(), 'optimizer': optimizer.state_dict(),
                       'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict() if scaler else {},
                       'rng': torch.get_rng_state(), 'step': step, 'position': position,
                       'recovery': asdict(recovery), 'config': asdict(cfg)}, ckpt_dir / f'step-{step:08d}.pt')
        for old in list_checkpoints(run_dir)[cfg.keep_last:]:
            old.unlink()
        save_nowcaster(core, run_dir / EXPORT_NAME, metadata={'train_step': str(step)})

    def snapshot() -> dict[str, Any]:
        return {'model': copy.deepcopy(_unwrap(model).state_dict()),
                'optimizer': copy.deepcopy(optimizer.state_dict())}

    last_good = snapshot()
    window = cfg.window_config()
    ctx = window.ctx
    weights = horizon_weights(window.seq_len, cfg.horizon_power, cfg.device)
    losses: list[float] = []
    damaged = 0
    val = (math.nan, math.nan)
    start_time = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc='meta-train', disable=not progress or rank != 0)
    try:
        while step < cfg.steps:
            batch = next(batches).to(cfg.device)
            position += 1
            for problem in batch.skipped:  # damaged chunks: the loader drew another trajectory instead
                damaged += 1
                log(dict(step=step, batch=position - 1, loss='', lr='', grad_norm='',
                         seconds=round(time.time() - start_time, 3), event=f'damaged: {problem}'))
                print(f'skipped a damaged read: {problem}')

            with _autocast(cfg):
                loss = window_l1(forward(model, batch), batch, ctx, weights)
            optimizer.zero_grad(set_to_none=True)
            finite = torch.isfinite(loss)
            if bool(finite):
                (scaler.scale(loss) if scaler else loss).backward()
                if scaler:
                    scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float('inf'))
                finite = finite & (torch.isfinite(grad_norm) | torch.tensor(scaler is not None))
            else:
                grad_norm = torch.tensor(float('nan'))
            if world > 1:  # every rank skips together
                flag = finite.float().to(cfg.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                finite = flag.bool()

            if not bool(finite):
                recovery.events += 1
                recovery.in_row += 1
                _unwrap(model).load_state_dict(last_good['model'])
                optimizer.load_state_dict(last_good['optimizer'])
                if recovery.events % cfg.nan_patience == 0:
                    recovery.lr_scale *= cfg.nan_lr_factor
                    scheduler.base_lrs = [lr * cfg.nan_lr_factor for lr in scheduler.base_lrs]
                    for group in optimizer.param_groups:
                        group['lr'] *= cfg.nan_lr_factor
                log(dict(step=step, batch=position - 1, loss=repr(loss.item()), lr=optimizer.param_groups[0]['lr'],
                         grad_norm=repr(float(grad_norm)), seconds=round(time.time() - start_time, 3),
                         event='nonfinite'))
                if recovery.in_row >= cfg.max_nan_in_row:
                    raise TrainingDiverged(
                        f'{recovery.in_row} non-finite losses/gradients in a row at step {step} '
                        f'(batch {position - 1}); the last good checkpoint is in {ckpt_dir}')
                continue

            event = ''
            if scaler:
                scale = scaler.get_scale()
                scaler.step(optimizer)
                scaler.update()
                if scaler.get_scale() < scale:  # fp16 gradients overflowed: the scaler skipped the update
                    event = f'{SCALER_SKIP}, loss scale {scale:g} -> {scaler.get_scale():g}'
            else:
                optimizer.step()
            with warnings.catch_warnings():  # a step the scaler skipped still counts on the schedule
                warnings.filterwarnings('ignore', re.escape('Detected call of `lr_scheduler.step()` before'))
                scheduler.step()
            step += 1
            recovery.in_row = 0
            if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                last_good = snapshot()
            losses.append(loss.item())
            bar.update(1)
            lr = optimizer.param_groups[0]['lr']
            log(dict(step=step, batch=position - 1, loss=repr(loss.item()), lr=lr, grad_norm=repr(float(grad_norm)),
                     seconds=round(time.time() - start_time, 3), event=event))
            if tb is not None:
                tb.add_scalar('train/loss', loss.item(), step)
                tb.add_scalar('train/lr', lr, step)
            if step % cfg.log_every == 0:
                recent = losses[-cfg.log_every:]
                bar.set_postfix(loss=f'{sum(recent) / len(recent):.4f}', lr=f'{lr:.2e}')
            if val_batches and ((cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps):
                val = validate(model, val_batches, cfg)
                if tb is not None:
                    tb.add_scalar('val/l1', val[0], step)
                    tb.add_scalar('val/l1_no_change', val[1], step)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                checkpoint()
    finally:  # also when training stops with an error: logs are flushed and closed
        bar.close()
        if writer:
            writer.close()
        if tb is not None:
            tb.close()
    summary = dict(step=step, position=position, losses=losses, val_l1=val[0], val_l1_no_change=val[1],
                   nonfinite_events=recovery.events, lr_scale=recovery.lr_scale, damaged_reads=damaged)
    if rank == 0 and val_batches:
        print(f'validation L1 {val[0]:.5f} vs no-change {val[1]:.5f} ({val[0] / val[1]:.3f}x)')
    return summary
