"""`NiNo`: wraps any torch optimizer and replaces one step per period with a nowcast.

Every `period // ctx` steps the wrapper records the flat parameters (before that step's update);
at the ctx-th record it runs the nowcaster instead of the base optimizer's step and writes the
predicted parameters into the model. As the paper's code, the first record is the state after
`period // ctx - 1` updates, so the first nowcast replaces update `period`; with `record_initial`
the first record is the initial state, and every nowcast comes `period // ctx - 1` steps sooner
(records after 0, i, ..., (ctx - 1) i updates, as the windows of a recorded trajectory that start
at its first state). The neural graph holds every parameter of the model, but
only those the base optimizer optimises (its param groups) are written: frozen parameters keep
their values (the paper's code overwrites them too). The horizon k decays over training from `k_max`
(default: the nowcaster's `seq_len`, 40) to 1:
k_i = round(linspace(k_max ** (1 / p), 1, max_train_steps // period) ** p)[i] for the i-th period (p = 2
by default, as the paper), and `upd_scale` scales the predicted change (the paper's knob).

A guard (`guard=`, no published nowcaster has one) decides with a user-given loss whether a
nowcast is kept. Immediately (`guard_delay=0`): it scores the current parameters and candidates
along the predicted change (`guard_scales`, e.g. the whole change, half, a quarter), also of the
predictions at shorter horizons (`guard_horizons`, fractions of k; one more nowcaster pass each),
writes the best candidate only if it beats the current parameters by `guard_margin`, and otherwise
lets the base optimizer take the step (1 + len(guard_scales) x len(guard_horizons) loss calls per
nowcast). After a recovery (`guard_delay=N`): it takes the prediction, keeps a copy of the
parameters and of the base optimizer's state, and N steps later rolls both back if the loss is not
below the loss before the nowcast by `guard_margin` (2 loss calls per nowcast; the N steps are then
lost); no nowcast is made within N steps of `max_train_steps`. With `guard_branch` the base
optimizer also trains the pre-nowcast parameters during those N steps (a branch: its own copy of
the base optimizer's state, gradients from `step(closure)` on the same batches), the nowcast is kept
only if it beats that branch, and a rollback switches to the branch, so no step is lost (N + 1
gradient evaluations and 3 loss calls per nowcast). Nowcasts usually raise the loss at first and pay
off after ~100 steps (docs/results.md), which only the delayed forms see. Each decision is kept in
`guard_history` (and in the state dict).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import load_nowcaster
from .graph import UnsupportedLayerError
from .model import Nowcaster
from .nowcast import ModelGraphs, check_edge_sample_ratio

log = logging.getLogger(__name__)


def k_schedule(seq_len: int, max_train_steps: int, period: int, power: float = 2.0) -> np.ndarray:
    """Horizon of each nowcast: decays from seq_len (the first, largest horizon) to 1 (as the `power` of
    the step index; the higher, the faster)."""
    n = max(1, max_train_steps // period)
    return (np.linspace(seq_len ** (1 / power), 1, num=n) ** power).round().astype(np.int64)


def first_horizon(seq_len: int, k_max: int | None) -> int:
    """The horizon the decay starts from: `k_max` (checked to be 1..seq_len), or seq_len when None."""
    if k_max is not None and not 1 <= k_max <= seq_len:
        raise ValueError(f"k_max must be a horizon from 1 to the nowcaster's seq_len ({seq_len}), got {k_max}")
    return k_max or seq_len


def horizon(schedule: np.ndarray, step_idx: int, period: int) -> int:
    """The horizon k of a nowcast made at (0-based) optimizer step `step_idx`."""
    return int(schedule[min(len(schedule) - 1, step_idx // period)])


class NiNo(torch.optim.Optimizer):
    """A torch optimizer wrapper that nowcasts parameters once every `period` steps.

    It is a `torch.optim.Optimizer` whose `param_groups`, `state` and `defaults` are the base
    optimizer's, so learning-rate schedulers (StepLR, transformers' warmup schedules) drive it.

    Args:
        base_opt: any `torch.optim.Optimizer` over `model`'s parameters (e.g. AdamW).
        model: the network being trained; its `named_parameters()` define the neural graph.
        ckpt: a nowcaster checkpoint path (this project's or a published `.pt`), a loaded
            `Nowcaster`, or None for the base optimizer alone.
        period: steps between nowcasts (c states are recorded `period // c` steps apart).
        max_train_steps: planned length of training; sets the decay of k.
        device: where the nowcaster runs (default: the model's device).
        edge_device: where the recorded states, the graphs and every per-edge tensor are kept (default:
            `device`). The CPU here with a GPU `device` is the reference's `message_passing_device='cpu'`:
            edges move to `device` one chunk (`chunk_size`) at a time, so the GPU holds the nowcaster,
            node features and one chunk, and the host's memory the rest.
        num_heads: attention heads of a transformer whose config does not say (e.g. modded-nanogpt).
        num_key_value_heads: key/value heads (grouped-query attention) when the config does not say.
        lpe: a precomputed Laplacian positional encoding (num_nodes, k) to use instead of computing one
            (with `subgraph`: a list, one per block; None entries are computed).
        subgraph: one neural graph per transformer block, nowcast one after another (the reference's
            large-model mode): memory is bounded by the largest block's graph, not the model's.
        edge_sample_ratio: in (0, 1): messages pass over that random fraction of edges at each nowcast
            (the reference's large-model knob); every parameter is still predicted. 0: all edges.
        amp: run the nowcaster under bfloat16 autocast (less memory and time; predictions less exact).
        chunk_size: edges per chunk when nowcasting (sets the nowcaster's `config.chunk_size`; memory of
            the step's per-edge work is about chunk_size x 1.5 KB). None: the nowcaster's (100,000).
        upd_scale: factor on the predicted change (1: the prediction as it is).
        k_power: power of the decay of the horizon k over training (2, as the paper).
        k_max: horizon of the first nowcast, at most the nowcaster's `seq_len` (None: `seq_len`, as the
            paper).
        record_initial: record the parameters from the first step on (the initial state is the first
            nowcast's first input), not from step `period // ctx` on (False, as the paper).
        guard: a callable returning a loss of the model as it is when called (e.g. on a few held-out
            or fresh training batches; it runs under `torch.no_grad()`); None: every nowcast is taken.
        guard_scales: candidates the guard scores: the current parameters plus each scale times the
            predicted change.
        guard_horizons: fractions of the nowcast's horizon k whose predictions the immediate guard scores
            (each at every scale; (1.0,): the prediction at k alone; e.g. (1, 0.5, 0.25) adds k/2, k/4).
        guard_margin: how much lower than the current parameters' loss a candidate's must be.
        guard_delay: 0 to judge candidates at once; N to judge the prediction N steps after it was
            written and roll it back (parameters and base optimizer state) if it did not pay off.
        guard_branch: with `guard_delay`, judge the nowcast against the base optimizer's own N steps
            from the pre-nowcast parameters, and switch to those on a rollback; `step()` then needs
            a closure (zero the gradients, compute the loss, backward, return it) at nowcasts and
            the N steps after (so not through `torch.amp.GradScaler`, whose `step` takes no closure).
    """

    def __init__(self, base_opt: torch.optim.Optimizer, model: nn.Module,
                 ckpt: str | Path | Nowcaster | None = None, period: int = 1000,
                 max_train_steps: int = 10000, device: str | torch.device | None = None,
                 edge_device: str | torch.device | None = None,
                 num_heads: int | None = None, num_key_value_heads: int | None = None,
                 lpe: Tensor | Sequence[Tensor | None] | None = None, subgraph: bool = False,
                 edge_sample_ratio: float = 0.0, amp: bool = False, chunk_size: int | None = None,
                 upd_scale: float = 1.0,
                 k_power: float = 2.0, k_max: int | None = None, record_initial: bool = False,
                 guard: Callable[[], float | Tensor] | None = None,
                 guard_scales: Sequence[float] = (1.0, 0.5, 0.25), guard_horizons: Sequence[float] = (1.0,),
                 guard_margin: float = 0.0, guard_delay: int = 0, guard_branch: bool = False) -> None:
        # Optimizer.__init__ is not called: the wrapper has no param groups of its own (see the properties)
        self.base_opt = base_opt
        self.period = period
        self.max_train_steps = max_train_steps
        self.step_idx = 0
        self.num_nowcasts = 0
        self.num_rejected = 0  # nowcasts not taken: not finite, or turned down by the guard
        self.upd_scale = upd_scale
        self.record_initial = record_initial
        self.guard = guard
        self.guard_scales = tuple(guard_scales)
        self.guard_horizons = tuple(guard_horizons)
        self.guard_margin = guard_margin
        self.guard_delay = guard_delay
        self.guard_branch = guard_branch
        self.guard_history: list[dict] = []  # one entry per guarded nowcast
        self.edge_sample_ratio = check_edge_sample_ratio(edge_sample_ratio)
        self.amp = amp
        self._pending: dict | None = None  # a nowcast awaiting its delayed judgement, with the copy to roll back to
        if guard is not None and (not self.guard_scales or min(self.guard_scales) <= 0):
            raise ValueError(f'guard_scales must be positive scales of the predicted change, got {guard_scales}')
        if not self.guard_horizons or not all(0 < f <= 1 for f in self.guard_horizons):
            raise ValueError(f'guard_horizons must be fractions in (0, 1] of the horizon k, got {guard_horizons}')
        if self.guard_horizons != (1.0,) and (guard is None or guard_delay):
            raise ValueError(f'guard_horizons {guard_horizons} are candidates of the immediate guard: they need a '
                             f'guard and guard_delay=0 (got guard={"None" if guard is None else "given"}, '
                             f'guard_delay={guard_delay})')
        if guard is not None and guard_delay >= period:
            raise ValueError(f'guard_delay ({guard_delay}) must be shorter than the period ({period}): each nowcast '
                             f'is judged before the next')
        if guard_branch and (guard is None or guard_delay < 1):
            raise ValueError(f'guard_branch needs a guard and a guard_delay of 1 or more (got guard='
                             f'{"None" if guard is None else "given"}, guard_delay={guard_delay})')
        self._params = [p for _, p in model.named_parameters()]
        held = {id(p) for group in base_opt.param_groups for p in group['params']}
        self._optimised = [id(p) in held for p in self._params]
        self._states: list[Tensor] = []
        self.nowcaster: Nowcaster | None = None
        if ckpt is None:
            return

        self.device = torch.device(device) if device is not None else self._params[0].device
        self.edge_device = torch.device(edge_device) if edge_device is not None else self.device
        nowcaster = ckpt if isinstance(ckpt, nn.Module) else load_nowcaster(ckpt)
        self.nowcaster = nowcaster.to(self.device).eval()
        if chunk_size is not None:
            if chunk_size < 1:
                raise ValueError(f'chunk_size must be a positive number of edges, got {chunk_size}')
            self.nowcaster.config.chunk_size = chunk_size
        cfg = self.nowcaster.config
        if period < cfg.ctx or period % cfg.ctx:
            raise ValueError(f'period ({period}) must be a positive multiple of ctx ({cfg.ctx}): the {cfg.ctx} '
                             f'input states are recorded period // ctx steps apart')
        self.ctx = cfg.ctx
        self.interval = period // cfg.ctx
        self._phase = 0 if record_initial else self.interval - 1  # records at step_idx % interval == phase
        self.graphs = ModelGraphs.for_module(model, num_heads, num_key_value_heads, subgraph)
        for name, shape in self.graphs.params:  # the per-parameter MLP (gnn False) treats kernel positions apart
            if cfg.gnn and len(shape) == 4 and shape[2] * shape[3] > cfg.max_feat_size:
                raise UnsupportedLayerError(f"parameter '{name}' has a {shape[2]}x{shape[3]} kernel but the "
                                            f"nowcaster supports at most {cfg.max_feat_size} positions (a "
                                            f"per-parameter MLP nowcaster such as nino_mlp.pt takes any size)")
        if cfg.gnn and cfg.lpe:
            self.graphs.set_lpe(lpe, cfg.lpe)
        self.graphs.to(self.edge_device)
        self.k_schedule = k_schedule(first_horizon(cfg.seq_len, k_max), max_train_steps, period, k_power)

    @property
    def param_groups(self) -> list[dict]:
        return self.base_opt.param_groups

    @property
    def state(self) -> dict:
        return self.base_opt.state

    @property
    def defaults(self) -> dict:
        return self.base_opt.defaults

    @property
    def next_step_nowcasts(self) -> bool:
        """Whether the next `step()` call runs the nowcaster instead of the base optimizer."""
        return (self.nowcaster is not None and len(self._states) == self.ctx - 1 and self._records
                and not (self.guard is not None and self.guard_delay
                         and self.step_idx + 1 + self.guard_delay > self.max_train_steps))

    @property
    def need_grads(self) -> bool:
        """False when the next step is a nowcast that is surely taken, so `loss.backward()` can be
        skipped; with an immediate guard the base optimizer may take that step after all (with a guard
        branch the closure computes the gradients)."""
        return not self.next_step_nowcasts or (self.guard is not None and not self.guard_delay)

    @property
    def _records(self) -> bool:
        """Whether this step records the parameters (before its update)."""
        return self.step_idx % self.interval == self._phase

    def current_k(self) -> int:
        """Horizon the nowcast in the current period uses."""
        return horizon(self.k_schedule, self.step_idx, self.period)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One optimizer step: the base optimizer's, or a nowcast at the end of a period."""
        nowcast = self.next_step_nowcasts
        if self.guard_branch and closure is None and (nowcast or self._pending is not None):
            raise ValueError(f'NiNo with guard_branch: step {self.step_idx + 1} needs step(closure) (the base '
                             f'optimizer also trains the pre-nowcast parameters on this batch)')
        if self.nowcaster is not None and self._records:
            self._states.append(self._flat_params())
        if nowcast and self._nowcast():
            loss = None
            if self._pending is not None and self.guard_branch:
                loss = self._step_branch(closure)  # the branch takes the step the nowcast replaced
            elif closure is not None:
                with torch.enable_grad():
                    loss = closure()
        else:
            if self._pending is not None and self.guard_branch:
                self._step_branch(closure)
            loss = self.base_opt.step(closure)
            if self.nowcaster is not None and len(self._states) >= self.ctx:
                self._states = []  # a period whose nowcast was not made (too close to the end): start over
        self.step_idx += 1
        if self._pending is not None and self.step_idx == self._pending['step'] + self.guard_delay:
            self._judge()
        return loss

    @torch.no_grad()
    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1).to(self.edge_device, torch.float32) for p in self._params])

    @torch.no_grad()
    def _nowcast(self) -> bool:
        """Predict and write the parameters; False (and nothing written) if the prediction is not finite."""
        states = self._states[0].new_empty(len(self._states[0]), len(self._states))
        for i in range(len(self._states)):  # column by column, each state freed once copied
            states[:, i] = self._states[i]
            self._states[i] = states[:0, i]
        self._states = []
        k = self.current_k()
        current = states[:, -1]

        def at(horizon: int) -> Tensor:
            x = self.graphs.predict(self.nowcaster, states, horizon, self.edge_sample_ratio,
                                    torch.bfloat16 if self.amp else None)
            return torch.lerp(current, x, self.upd_scale) if self.upd_scale != 1.0 else x

        x = at(k)
        if not bool(torch.isfinite(x).all()):
            self.num_rejected += 1
            warnings.warn(f'NiNo: the nowcast at step {self.step_idx + 1} (k={k}) has NaN/Inf values; '
                          f'it is discarded and the base optimizer takes this step', RuntimeWarning, stacklevel=3)
            return False
        if self.guard is not None and self.guard_delay:
            self._pending = {'step': self.step_idx + 1, 'k': k, 'loss_before': self._score(),
                             'params': current.clone(), 'state': _clone_state(self.base_opt.state)}
        elif self.guard is not None and not self._guard(current, x, k, at):  # leaves its chosen candidate
            self.num_rejected += 1
            return False
        if self.guard is None or self.guard_delay:
            self._write(x)
        self.num_nowcasts += 1
        log.info('NiNo nowcast at step %d with k=%d', self.step_idx + 1, k)
        return True

    def _score(self) -> float:
        """The guard's loss of the model as it is (non-finite counts as infinitely bad)."""
        with torch.no_grad():
            loss = float(self.guard())
        return loss if math.isfinite(loss) else math.inf

    @contextmanager
    def _on_branch(self, pending: dict) -> Iterator[None]:
        """Inside the block the model and the base optimizer hold `pending`'s copy (the parameters and
        base optimizer state a rollback goes to); what the block does to them is kept in `pending`, and
        the model's own parameters and state come back after it."""
        with torch.no_grad():
            here = self._flat_params()
            self._write(pending['params'])
        self.base_opt.state, pending['state'] = pending['state'], self.base_opt.state
        try:
            yield
        finally:
            self.base_opt.state, pending['state'] = pending['state'], self.base_opt.state
            with torch.no_grad():
                pending['params'] = self._flat_params()
                self._write(here)

    def _step_branch(self, closure: Callable[[], Tensor]) -> Tensor | None:
        """One base optimizer step of the pending nowcast's branch, on the batch the closure computes
        (the model's gradients are the branch's until the closure runs again)."""
        with self._on_branch(self._pending):
            return self.base_opt.step(closure)

    def _judge(self) -> None:
        """`guard_delay` steps after a nowcast: keep it, or roll parameters and base optimizer state back
        (to the pre-nowcast copy, or with `guard_branch` to the branch that went on without it)."""
        pending, self._pending = self._pending, None
        after = self._score()
        against = pending['loss_before']
        if self.guard_branch:
            with self._on_branch(pending):
                against = self._score()
        kept = after < against - self.guard_margin
        if not kept:
            with torch.no_grad():
                self._write(pending['params'])
            self.base_opt.state = pending['state']
            self._states = []  # recorded on the discarded branch
            self.num_nowcasts -= 1
            self.num_rejected += 1
        record = {'step': pending['step'], 'k': pending['k'], 'loss_before': pending['loss_before'],
                  'loss_after': after, 'scale': self.upd_scale, 'accepted': kept}
        if self.guard_branch:
            record['loss_branch'] = against
        self.guard_history.append(record)
        log.info('NiNo guard, %d steps after the nowcast at step %d: loss %.4g -> %.4g (%s %.4g): %s',
                 self.guard_delay, pending['step'], pending['loss_before'], after,
                 'branch' if self.guard_branch else 'before', against, 'kept' if kept else 'rolled back')

    def _guard(self, current: Tensor, x: Tensor, k: int, at: Callable[[int], Tensor]) -> bool:
        """Score the current parameters and each candidate along the change to `x` (the prediction at k)
        and to `at(h)`'s predictions at the shorter horizons h; leave the best in the model and say whether
        it is a candidate (the current parameters are written back otherwise)."""
        before = best = self._score()
        best_x, best_scale, best_horizon = current, 0.0, 0
        for horizon in dict.fromkeys(max(1, round(k * f)) for f in self.guard_horizons):
            y = x if horizon == k else at(horizon)
            if not bool(torch.isfinite(y).all()):
                continue
            for scale in self.guard_scales:
                candidate = torch.lerp(current, y, scale)
                self._write(candidate)
                loss = self._score()
                if loss < best:
                    best, best_x, best_scale, best_horizon = loss, candidate, scale, horizon
        accepted = best_scale > 0 and best < before - self.guard_margin
        if not accepted:
            best, best_x, best_scale, best_horizon = before, current, 0.0, 0
        self._write(best_x)
        self.guard_history.append({'step': self.step_idx + 1, 'k': k, 'loss_before': before, 'loss_after': best,
                                   'scale': best_scale, 'horizon': best_horizon, 'accepted': accepted})
        log.info('NiNo guard at step %d (k=%d): loss %.4g -> %.4g, scale %g at horizon %d: %s', self.step_idx + 1,
                 k, before, best, best_scale, best_horizon, 'nowcast taken' if accepted else 'base optimizer steps')
        return accepted

    def _write(self, x: Tensor) -> None:
        """Write a flat vector into the optimised parameters."""
        offset = 0
        for p, optimised in zip(self._params, self._optimised):
            n = p.numel()
            if optimised:
                p.copy_(x[offset:offset + n].view_as(p))
            offset += n

    def state_dict(self) -> dict:
        """Base optimizer state, the wrapper's position, the states collected so far and the LPE."""
        return {'base': self.base_opt.state_dict(),
                'nino': {'step_idx': self.step_idx, 'period': self.period,
                         'max_train_steps': self.max_train_steps, 'record_initial': self.record_initial,
                         'num_nowcasts': self.num_nowcasts,
                         'num_rejected': self.num_rejected, 'guard_history': list(self.guard_history),
                         'pending': None if self._pending is None else self._pending_state_dict(),
                         'states': [s.detach().cpu().clone() for s in self._states],
                         'lpe': None if self.nowcaster is None or self.graphs.parts[0].lpe is None
                         else [pe.cpu().clone() for pe in self.graphs.lpe]}}

    def _pending_state_dict(self) -> dict:
        """The pending nowcast's copy with its base optimizer state as a state_dict ('base')."""
        pending = {key: value for key, value in self._pending.items() if key != 'state'}
        self.base_opt.state, main = self._pending['state'], self.base_opt.state
        try:
            pending['base'] = copy.deepcopy(self.base_opt.state_dict())
        finally:
            self.base_opt.state = main
        return {**pending, 'params': pending['params'].cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; period, max_train_steps and record_initial must match this wrapper's."""
        for key in ('base', 'nino'):
            if key not in state:
                raise KeyError(f"NiNo state_dict has no '{key}' entry")
        nino = state['nino']
        for key, default in (('period', None), ('max_train_steps', None), ('record_initial', False)):
            if nino.get(key, default) != getattr(self, key):
                raise ValueError(f'NiNo state_dict was saved with {key}={nino.get(key, default)}, this wrapper '
                                 f'has {key}={getattr(self, key)}')
        n = sum(p.numel() for p in self._params)
        if any(s.numel() != n for s in nino['states']):
            raise ValueError(f'NiNo state_dict holds states of another model (expected {n} values each)')
        pending = nino.get('pending')
        if pending is not None:  # its base optimizer state first: loading the main one replaces `state`
            self.base_opt.load_state_dict(pending['base'])
            pending = {key: value for key, value in pending.items() if key != 'base'}
            pending.update(params=pending['params'].to(self.edge_device), state=self.base_opt.state)
        self.base_opt.load_state_dict(state['base'])
        self._pending = pending
        self.step_idx = nino['step_idx']
        self.num_nowcasts = nino['num_nowcasts']
        self.num_rejected = nino['num_rejected']
        self.guard_history = list(nino.get('guard_history', []))
        device = self.edge_device if self.nowcaster is not None else 'cpu'
        self._states = [s.to(device) for s in nino['states']]
        lpe = nino.get('lpe')
        if lpe is not None and self.nowcaster is not None and self.graphs.parts[0].lpe is not None:
            lpe = [lpe] if isinstance(lpe, Tensor) else lpe  # saved before subgraphs: one tensor
            ours = [tuple(pe.shape) for pe in self.graphs.lpe]
            if [tuple(pe.shape) for pe in lpe] != ours:
                raise ValueError(f'NiNo state_dict holds positional encodings of shapes '
                                 f'{[tuple(pe.shape) for pe in lpe]}, this model needs {ours}')
            for part, pe in zip(self.graphs.parts, lpe):
                part.lpe = pe.float().to(self.edge_device)


def _clone_state(state: dict) -> defaultdict:
    """A copy of an optimizer's per-parameter `state` (same parameter keys, tensors cloned)."""
    return defaultdict(dict, {p: {key: value.clone() if isinstance(value, Tensor) else copy.deepcopy(value)
                                  for key, value in entry.items()} for p, entry in state.items()})
