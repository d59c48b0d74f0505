"""Recording one trajectory: train a task's network and keep its parameters every few steps.

States are the flat parameters in `named_parameters()` order as float16, taken at step 0 and
after every `record_every` optimizer steps. Metrics per state: mean train loss/accuracy over the
steps since the previous state, validation loss/accuracy every `eval_every` steps (NaN between).
Everything random is seeded from the trajectory's seed and torch runs with `spec.threads`
threads, so the same (spec, index) gives the same bytes in any process. A spec with `nowcast`
trains with `nino.NiNo` around the optimizer, so its trajectories hold the nowcasts and Adam's
recovery after each: the states a nowcaster meets when it is used, not only plain Adam's.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nino import NiNo
from nino.checkpoint import file_sha256

from .data import load_dataset
from .tasks import TaskSpec, build_model

METRICS = ('train_loss', 'train_acc', 'val_loss', 'val_acc')

ChunkSink = Callable[[int, np.ndarray], None]


@dataclass
class Trajectory:
    """What recording a trajectory produced (params is None when streamed to a sink)."""

    params: np.ndarray | None  # (n_states, n_params) float16
    metrics: np.ndarray  # (n_states, len(METRICS)) float32
    steps: np.ndarray  # (n_states,) int64
    seed: int
    lr: float
    wall_time: float
    checksum: str


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's ops on `n` threads inside the block (the setting is restored after it)."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == 'adamw':
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == 'adam':
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == 'sgd':
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f'unknown optimizer {name!r}')


def with_nowcaster(spec: TaskSpec, model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """`opt` wrapped in `nino.NiNo` as the spec's `nowcast` asks (unchanged without one). Raises OSError
    for a missing checkpoint and ValueError for a bad one, one whose bytes differ from the spec's
    `sha256` (replaced since the collection began, or another file on this worker) or a period its
    nowcaster cannot use."""
    if not spec.nowcast:
        return opt
    expected = spec.nowcast.get('sha256')
    if expected and (actual := file_sha256(spec.nowcast['ckpt'])) != expected:
        raise ValueError(f"{spec.nowcast['ckpt']}: sha256 {actual[:12]}... differs from the task's "
                         f"nowcast.sha256 {expected[:12]}... (the checkpoint changed since the collection began)")
    return NiNo(opt, model, ckpt=spec.nowcast['ckpt'], period=spec.nowcast['period'], max_train_steps=spec.steps)


def loss_and_correct(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, float]:
    """Mean cross-entropy and the fraction of correct predictions (tokens for language models)."""
    out = model(x)
    logits = out.logits if hasattr(out, 'logits') else out
    logits = logits.reshape(-1, logits.shape[-1])
    y = y.reshape(-1)
    return F.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int) -> tuple[float, float]:
    model.eval()
    total_loss = total_correct = count = 0.0
    for x, y in data.val_batches(batch_size):
        loss, acc = loss_and_correct(model, x, y)
        n = y.numel()
        total_loss += loss.item() * n
        total_correct += acc * n
        count += n
    model.train()
    return total_loss / count, total_correct / count


def flat_params(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(torch.float16).numpy()


def record_trajectory(spec: TaskSpec, index: int, sink: ChunkSink | None = None,
                      chunk_states: int = 64) -> Trajectory:
    """Train trajectory `index` of a task group and record it.

    With `sink`, states are handed over in blocks of `chunk_states` (sink(first_state, block))
    and not kept; otherwise they are returned in `Trajectory.params`.
    """
    start = time.time()
    seed, lr = spec.trajectory_seed(index), spec.trajectory_lr(index)
    data = load_dataset(spec.dataset, spec.arch.get('vocab_size'))
    n_states = spec.num_states
    metrics = np.full((n_states, len(METRICS)), np.nan, dtype=np.float32)
    steps = np.arange(n_states, dtype=np.int64) * spec.record_every
    digest = hashlib.sha256()
    kept: list[np.ndarray] = []
    block: list[np.ndarray] = []
    block_start = 0

    def keep(state: np.ndarray, last: bool) -> None:
        nonlocal block_start
        digest.update(state.tobytes())
        block.append(state)
        if len(block) == chunk_states or last:
            stacked = np.stack(block)
            if sink is not None:
                sink(block_start, stacked)
            else:
                kept.append(stacked)
            block_start += len(block)
            block.clear()

    with torch_threads(spec.threads):
        torch.manual_seed(seed)
        model = build_model(spec.arch)
        model.train()
        opt = with_nowcaster(spec, model, make_optimizer(spec.optimizer, model.parameters(), lr, spec.weight_decay))
        gen = torch.Generator().manual_seed(seed)
        batch = spec.batch_size
        metrics[0, 2:] = evaluate(model, data, batch)
        keep(flat_params(model), last=n_states == 1)
        run_loss = run_acc = 0.0
        for step in range(1, spec.steps + 1):
            x, y = data.train_batch(batch, gen)
            loss, acc = loss_and_correct(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += loss.item()
            run_acc += acc
            if step % spec.record_every == 0:
                s = step // spec.record_every
                metrics[s, 0] = run_loss / spec.record_every
                metrics[s, 1] = run_acc / spec.record_every
                run_loss = run_acc = 0.0
                if step % spec.eval_every == 0 or s == n_states - 1:
                    metrics[s, 2:] = evaluate(model, data, batch)
                keep(flat_params(model), last=s == n_states - 1)
                if not math.isfinite(metrics[s, 0]):
                    raise FloatingPointError(f'{spec.name}[{index}]: training loss is not finite at step {step}')
    digest.update(metrics.tobytes())
    params = np.concatenate(kept) if sink is None else None
    return Trajectory(params, metrics, steps, seed, lr, time.time() - start, digest.hexdigest())
