"""`NiNo`: wraps any torch optimizer and replaces one step per period with a nowcast.

Every `period // ctx` steps the wrapper records the flat parameters (before that step's update);
at the ctx-th record it runs the nowcaster instead of the base optimizer's step and writes the
predicted parameters into the model. The neural graph holds every parameter of the model, but
only those the base optimizer optimises (its param groups) are written: frozen parameters keep
their values (the paper's code overwrites them too). The horizon k decays over training from `seq_len` (40) to 1:
k_i = round(linspace(sqrt(40), 1, max_train_steps // period) ** 2)[i] for the i-th period.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import load_nowcaster
from .graph import UnsupportedLayerError, graph_for_module, laplacian_pe
from .model import Nowcaster
from .scaling import scale_states, unscale_states

log = logging.getLogger(__name__)


def k_schedule(seq_len: int, max_train_steps: int, period: int) -> np.ndarray:
    """Horizon of each nowcast: decays from seq_len to 1 (quadratically in the step index)."""
    n = max(1, max_train_steps // period)
    return (np.linspace(seq_len ** 0.5, 1, num=n) ** 2).round().astype(np.int64)


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
        device: where the nowcaster runs and states are kept (default: the model's device).
        num_heads: attention heads of a GPT-2 that has no `config.n_head`.
        lpe: a precomputed Laplacian positional encoding (num_nodes, k) to use instead of computing one.
    """

    def __init__(self, base_opt: torch.optim.Optimizer, model: nn.Module,
                 ckpt: str | Path | Nowcaster | None = None, period: int = 1000,
                 max_train_steps: int = 10000, device: str | torch.device | None = None,
                 num_heads: int | None = None, lpe: Tensor | None = None) -> None:
        # Optimizer.__init__ is not called: the wrapper has no param groups of its own (see the properties)
        self.base_opt = base_opt
        self.period = period
        self.max_train_steps = max_train_steps
        self.step_idx = 0
        self.num_nowcasts = 0
        self.num_rejected = 0
        self._params = [p for _, p in model.named_parameters()]
        held = {id(p) for group in base_opt.param_groups for p in group['params']}
        self._optimised = [id(p) in held for p in self._params]
        self._states: list[Tensor] = []
        self.nowcaster: Nowcaster | None = None
        if ckpt is None:
            return

        self.device = torch.device(device) if device is not None else self._params[0].device
        nowcaster = ckpt if isinstance(ckpt, nn.Module) else load_nowcaster(ckpt)
        self.nowcaster = nowcaster.to(self.device).eval()
        cfg = self.nowcaster.config
        if period < cfg.ctx or period % cfg.ctx:
            raise ValueError(f'period ({period}) must be a positive multiple of ctx ({cfg.ctx}): the {cfg.ctx} '
                             f'input states are recorded period // ctx steps apart')
        self.ctx = cfg.ctx
        self.interval = period // cfg.ctx
        self.graph = graph_for_module(model, num_heads=num_heads)
        for name, shape in self.graph.params:
            if len(shape) == 4 and shape[2] * shape[3] > cfg.max_feat_size:
                raise UnsupportedLayerError(f"parameter '{name}' has a {shape[2]}x{shape[3]} kernel but the "
                                            f"nowcaster supports at most {cfg.max_feat_size} positions")
        if lpe is not None and cfg.gnn and tuple(lpe.shape) != (self.graph.num_nodes, cfg.lpe):
            raise ValueError(f'lpe must have shape ({self.graph.num_nodes}, {cfg.lpe}), got {tuple(lpe.shape)}')
        if lpe is None and cfg.gnn and cfg.lpe:
            lpe = laplacian_pe(self.graph.edge_index, self.graph.num_nodes, cfg.lpe)
        self._graph_inputs = dict(edge_type=self.graph.edge_type.to(self.device),
                                  edge_index=self.graph.edge_index.to(self.device),
                                  lpe=None if lpe is None or not cfg.gnn else lpe.float().to(self.device),
                                  pos_w=self.graph.pos_w.to(self.device))
        self.k_schedule = k_schedule(cfg.seq_len, max_train_steps, period)

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
        return (self.nowcaster is not None and len(self._states) == self.ctx - 1
                and (self.step_idx + 1) % self.interval == 0)

    @property
    def need_grads(self) -> bool:
        """False when the next step is a nowcast, so `loss.backward()` can be skipped."""
        return not self.next_step_nowcasts

    def current_k(self) -> int:
        """Horizon the nowcast in the current period uses."""
        return int(self.k_schedule[min(len(self.k_schedule) - 1, self.step_idx // self.period)])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One optimizer step: the base optimizer's, or a nowcast at the end of a period."""
        nowcast = self.next_step_nowcasts
        if self.nowcaster is not None and (self.step_idx + 1) % self.interval == 0:
            self._states.append(self._flat_params())
        if nowcast and self._nowcast():
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
        else:
            loss = self.base_opt.step(closure)
        self.step_idx += 1
        return loss

    @torch.no_grad()
    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1).to(self.device, torch.float32) for p in self._params])

    @torch.no_grad()
    def _nowcast(self) -> bool:
        """Predict and write the parameters; False (and nothing written) if the prediction is not finite."""
        states = torch.stack(self._states, dim=1)
        self._states = []
        k = self.current_k()
        scaled, stats = scale_states(states, self.graph.params)
        pred = self.nowcaster(self.graph.edge_features(scaled), k=k, **self._graph_inputs)
        x = unscale_states(self.graph.to_vector(pred), self.graph.params, stats)
        if not bool(torch.isfinite(x).all()):
            self.num_rejected += 1
            warnings.warn(f'NiNo: the nowcast at step {self.step_idx + 1} (k={k}) has NaN/Inf values; '
                          f'it is discarded and the base optimizer takes this step', RuntimeWarning, stacklevel=3)
            return False
        offset = 0
        for p, optimised in zip(self._params, self._optimised):
            n = p.numel()
            if optimised:
                p.copy_(x[offset:offset + n].view_as(p))
            offset += n
        self.num_nowcasts += 1
        log.info('NiNo nowcast at step %d with k=%d', self.step_idx + 1, k)
        return True

    def state_dict(self) -> dict:
        """Base optimizer state, the wrapper's position, the states collected so far and the LPE."""
        return {'base': self.base_opt.state_dict(),
                'nino': {'step_idx': self.step_idx, 'period': self.period,
                         'max_train_steps': self.max_train_steps, 'num_nowcasts': self.num_nowcasts,
                         'num_rejected': self.num_rejected,
                         'states': [s.detach().cpu().clone() for s in self._states],
                         'lpe': None if self.nowcaster is None or self._graph_inputs['lpe'] is None
                         else self._graph_inputs['lpe'].cpu().clone()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; period and max_train_steps must match this wrapper's."""
        for key in ('base', 'nino'):
            if key not in state:
                raise KeyError(f"NiNo state_dict has no '{key}' entry")
        nino = state['nino']
        for key in ('period', 'max_train_steps'):
            if nino[key] != getattr(self, key):
                raise ValueError(f'NiNo state_dict was saved with {key}={nino[key]}, this wrapper has '
                                 f'{key}={getattr(self, key)}')
        n = sum(p.numel() for p in self._params)
        if any(s.numel() != n for s in nino['states']):
            raise ValueError(f'NiNo state_dict holds states of another model (expected {n} values each)')
        self.base_opt.load_state_dict(state['base'])
        self.step_idx = nino['step_idx']
        self.num_nowcasts = nino['num_nowcasts']
        self.num_rejected = nino['num_rejected']
        device = self.device if self.nowcaster is not None else 'cpu'
        self._states = [s.to(device) for s in nino['states']]
        lpe = nino.get('lpe')
        if lpe is not None and self.nowcaster is not None and self._graph_inputs['lpe'] is not None:
            if lpe.shape != self._graph_inputs['lpe'].shape:
                raise ValueError(f'NiNo state_dict holds a positional encoding of shape {tuple(lpe.shape)}, '
                                 f'this graph needs {tuple(self._graph_inputs["lpe"].shape)}')
            self._graph_inputs['lpe'] = lpe.to(self.device)
