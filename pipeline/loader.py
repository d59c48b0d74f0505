"""Streaming training windows from a trajectory store, as batched neural graphs.

A window is c input states and up to `seq_len` target states after them, `step` optimizer steps
apart, from one trajectory of one task group. Each batch samples `batch_size` (task, trajectory,
start) triples and reads `samples_per_traj` windows from each (shifted by one state), which is
what the paper's training does. Per window: inputs and targets are scaled with the inputs'
per-layer statistics, turned into edge features (inputs), edge targets and a mask (targets
past the trajectory's end, feature padding and auxiliary edges are masked), and the Laplacian
encoding's signs are flipped at random (once per trajectory read) as augmentation. For GPT-2
tasks, `wte_size` rows of the word embedding are sampled and each row's token index is kept as
the node's `pos_w`. Each window's `window` attribute is (task index, trajectory, start state, shift): its inputs
are states `start + (shift + i) * stride` for i < ctx.

Batch b is drawn from a generator seeded by (seed, b) alone, so the stream is the same for any
number of DataLoader workers and can resume at any position. Every worker process opens its
own store handle, and a read fetches only the chunks holding the window's states.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch_geometric.data import Batch, Data

from nino.graph import EdgeType, NeuralGraph, build_graph, laplacian_pe
from nino.scaling import apply_scale, scale_states

from .store import TaskGroup, TrajectoryStore


@dataclass(frozen=True)
class WindowConfig:
    """How windows are cut and featurised (defaults: the paper's training setup)."""

    ctx: int = 5
    step: int = 200  # optimizer steps between the states of a window
    seq_len: int = 40
    samples_per_traj: int = 4
    batch_size: int = 4  # trajectories per batch
    wte_size: int | None = 1000  # word-embedding rows sampled for GPT-2 tasks (None: all)
    lpe: int = 8
    max_feat_size: int = 9  # edge feature slots (pad to the nowcaster's)
    lm_global_scale: bool = True  # GPT-2 tasks: one scale for all parameters, as the paper trained


@dataclass
class _Task:
    group: TaskGroup
    trajectories: list[int]
    graph: NeuralGraph
    lpe: Tensor | None
    stride: int
    max_start: int
    wte_rows: int  # full vocabulary size (0 when not a language model)
    scale_layout: list[tuple[str, tuple[int, ...]]]


class WindowStream(IterableDataset):
    """An endless, deterministic stream of batched training windows (torch_geometric `Batch`)."""

    def __init__(self, store_url: str, config: WindowConfig = WindowConfig(), tasks: Sequence[str] | None = None,
                 trajectories: dict[str, list[int]] | None = None, seed: int = 0, start: int = 0,
                 shard: tuple[int, int] = (0, 1), storage_options: dict | None = None) -> None:
        """`trajectories` limits each task to some indices (e.g. to hold some out); `start` is the
        first position (batches already consumed); `shard=(rank, world)` gives each of `world`
        data-parallel processes its own batches: rank r reads batch `p * world + r` at position p."""
        super().__init__()
        self.shard = shard
        self.store_url = store_url
        self.storage_options = storage_options
        self.config = config
        self.seed = seed
        self.start = start
        store = TrajectoryStore(store_url, storage_options, mode='r')
        self.task_names = list(tasks) if tasks else store.task_names()
        self.trajectories = {t: list(range(store.group(t).spec.trajectories)) for t in self.task_names}
        for name, indices in (trajectories or {}).items():
            if name not in self.trajectories:
                raise ValueError(f'trajectories given for task {name!r}, which is not among {self.task_names}')
            self.trajectories[name] = list(indices)
        self._tasks: dict[str, _Task] | None = None
        for name in self.task_names:  # validate on the driver: fail before any worker starts
            self._check_task(store.group(name))

    def _check_task(self, group: TaskGroup) -> None:
        spec, c = group.spec, self.config
        if c.step % spec.record_every:
            raise ValueError(f"task '{spec.name}': window step {c.step} is not a multiple of its recording "
                             f'interval {spec.record_every}')
        stride = c.step // spec.record_every
        need = (c.ctx + min(c.seq_len, 2 * c.ctx) + c.samples_per_traj) * stride
        if spec.num_states <= need:
            raise ValueError(f"task '{spec.name}': {spec.num_states} states are too few for windows of "
                             f'{c.ctx} inputs, >= {min(c.seq_len, 2 * c.ctx)} targets and {c.samples_per_traj} '
                             f'shifts, {c.step} steps apart (needs more than {need})')
        if not self.trajectories[spec.name]:
            raise ValueError(f"task '{spec.name}': no trajectories to sample from")

    def _open(self) -> dict[str, _Task]:
        """Per-process state: store handle, neural graphs and their LPE."""
        if self._tasks is None:
            store = TrajectoryStore(self.store_url, self.storage_options, mode='r')
            tasks = {}
            for name in self.task_names:
                group = store.group(name)
                spec, c = group.spec, self.config
                layout = list(group.layout)
                is_lm = spec.arch['type'] == 'gpt2'
                wte_rows = 0
                if is_lm and layout[0][0].endswith('wte.weight') and c.wte_size and c.wte_size < layout[0][1][0]:
                    wte_rows = layout[0][1][0]
                    layout[0] = (layout[0][0], (c.wte_size, layout[0][1][1]))
                graph = build_graph(layout, num_heads=spec.arch.get('n_head'))
                if graph.max_feat_size > c.max_feat_size:
                    raise ValueError(f"task '{name}': edges hold {graph.max_feat_size} values, more than "
                                     f'max_feat_size={c.max_feat_size}')
                lpe = laplacian_pe(graph.edge_index, graph.num_nodes, c.lpe) if c.lpe else None
                stride = c.step // spec.record_every
                max_start = spec.num_states - (c.ctx + min(c.seq_len, 2 * c.ctx) + c.samples_per_traj) * stride
                n_params = sum(int(np.prod(s)) for _, s in layout)
                scale_layout = [('all', (n_params,))] if is_lm and c.lm_global_scale else layout
                tasks[name] = _Task(group, self.trajectories[name], graph, lpe, stride, max_start, wte_rows,
                                    scale_layout)
            self._tasks = tasks
        return self._tasks

    def batch(self, index: int) -> Batch:
        """Batch number `index` of the stream (the same on every call and in every process)."""
        tasks = self._open()
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0]))
        graphs = []
        for _ in range(self.config.batch_size):
            name = self.task_names[int(torch.randint(len(self.task_names), (), generator=gen))]
            graphs += self._windows(self.task_names.index(name), tasks[name], gen)
        return Batch.from_data_list(graphs)

    def _windows(self, task_index: int, task: _Task, gen: torch.Generator) -> list[Data]:
        c = self.config
        traj = task.trajectories[int(torch.randint(len(task.trajectories), (), generator=gen))]
        start = int(torch.randint(task.max_start, (), generator=gen))
        ind = np.arange(start, task.group.spec.num_states, task.stride)[:c.seq_len + c.ctx]
        pos_w = task.graph.pos_w
        if task.wte_rows:
            rows = torch.randperm(task.wte_rows, generator=gen)[:c.wte_size].sort().values
            dim = task.group.layout[0][1][1]
            cols = (rows.unsqueeze(1) * dim + torch.arange(dim)).flatten().numpy()
            full = sum(int(np.prod(s)) for _, s in task.group.layout)
            cols = np.concatenate([cols, np.arange(task.wte_rows * dim, full)])
            states = task.group.params.get_orthogonal_selection((traj, ind, cols))
            pos_w = pos_w.clone()
            pos_w[:c.wte_size] = rows + 1
        else:
            states = task.group.read_params(traj, ind)
        x_all = torch.from_numpy(np.ascontiguousarray(states.T)).float()  # (P, len(ind))
        lpe = None
        if task.lpe is not None:
            lpe = task.lpe * (torch.randint(0, 2, (1, task.lpe.shape[1]), generator=gen) * 2 - 1)
        aux = task.graph.edge_type >= EdgeType.RESIDUAL
        out = []
        for shift in range(c.samples_per_traj):
            x = x_all[:, shift:shift + c.ctx]
            y = x_all[:, shift + c.ctx:]
            x, stats = scale_states(x, task.scale_layout, float64=True)
            y = apply_scale(y, task.scale_layout, stats)
            mask = torch.zeros(len(y), c.seq_len)
            mask[:, :y.shape[1]] = 1
            y = torch.nn.functional.pad(y, (0, c.seq_len - y.shape[1]))
            y_mask = self._edges(task.graph, mask, c.seq_len) > 0
            y_mask[aux] = False
            out.append(Data(edge_index=task.graph.edge_index, edge_type=task.graph.edge_type,
                            edge_attr=self._edges(task.graph, x, c.ctx).flatten(1),
                            y=self._edges(task.graph, y, c.seq_len), y_mask=y_mask, pos=lpe, pos_w=pos_w,
                            num_nodes=task.graph.num_nodes,
                            window=torch.tensor([[task_index, traj, start, shift]])))
        return out

    def _edges(self, graph: NeuralGraph, values: Tensor, width: int) -> Tensor:
        """(P, width) -> (E, max_feat_size, width), zero-padded feature slots."""
        e = graph.edge_features(values).view(graph.num_edges, graph.max_feat_size, width)
        pad = self.config.max_feat_size - graph.max_feat_size
        return torch.nn.functional.pad(e, (0, 0, 0, pad)) if pad else e

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self.shard
        position = self.start + worker
        while True:
            yield self.batch(position * world + rank)
            position += workers


def window_loader(stream: WindowStream, num_workers: int = 0) -> DataLoader:
    """A DataLoader over a stream: batches arrive in index order whatever the worker count."""
    return DataLoader(stream, batch_size=None, num_workers=num_workers,
                      persistent_workers=num_workers > 0, prefetch_factor=2 if num_workers else None)
