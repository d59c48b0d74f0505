"""Streaming training windows from a trajectory store, as batched neural graphs.

A window is c input states and up to `seq_len` target states after them, `step` optimizer steps
apart, from one trajectory of one task group. Each batch samples `batch_size` (task, trajectory,
start) triples and reads `samples_per_traj` windows from each (shifted by one state), which is
what the paper's training does (`max_start_step` keeps the starts to the early part of each
trajectory). Per window, inputs and targets are scaled with the inputs'
per-layer statistics; the inputs become edge features, and the Laplacian encoding's signs are
flipped at random (once per trajectory read) as augmentation. For language tasks, `wte_size` rows
of the word embedding are sampled and each row's token index is kept as the node's `pos_w`: by
default from random blocks of `wte_block` consecutive rows, the chunks a version-2 store keeps a
large embedding in, so a read decodes only the rows it uses (a 1,000-row sample of the 50,257-row
GPT-2 embedding touches 16 of 786 chunks, where 1,000 independent rows touch 566); with
`wte_block=None` rows are drawn independently, as the paper's loader does.

Targets stay in parameter space and unscaled until used: a batch carries each read's raw float16
states once (not one scaled float32 copy per window), time-major as they are read (a transpose
costs the loader more than anything else it does; on the training device it is one cheap op),
with each window's per-parameter scaling, and `WindowBatch.targets()` builds the (Q, seq_len)
scaled targets of its Q parameters where the loss runs (on the training device). `y_slot` names
the edge feature slot whose prediction each target row is compared with. That is exactly what the
paper's edge-space targets and mask select (every parameter sits in one slot; padding slots and
auxiliary edges hold none), in a batch about a third the size.

Featurisation works per trajectory read, on all its windows at once: per-layer sums over the
input states only (float64, in numpy, so the statistics do not depend on torch's thread count),
then one scaled slice per window scattered into the edge features. The static parts of each
task's graph (edge index, types, slot maps, LPE) are built once per process. Edges carry as many
feature slots as the batch's widest graph has values per edge (9 for 3x3 convolutions, 1 for MLPs
and transformers), not always `max_feat_size`: the nowcaster's input layer reads the slots given,
which is the same map as zeros in the others, so a language-model batch is 9x smaller.

The store is a trajectory store or the published files read in place (`pipeline.published_stream`).
Batch b is drawn from a generator seeded by (seed, b) alone, so the stream is the same for any
number of DataLoader workers and can resume at any position. Iterated in this process (no
DataLoader workers), the stream loads the next batch's reads on a background thread while the
caller uses the current batch and while it is assembled (on one torch thread: its ops are small,
and the two cores are then busy with one job each). Only trajectories the manifest
marks `done` are read (unless `only_done=False`); a read that meets a damaged chunk is skipped,
named in `WindowBatch.skipped`, and replaced by the generator's next draw.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nino.graph import NeuralGraph, build_graph, laplacian_pe
from nino.scaling import EPS

from .arenas import ArenaPool, LocalPool
from .published_stream import open_store
from .record import torch_threads
from .store import WTE_CHUNK_ROWS, DamagedChunkError, TaskGroup, is_local_url
from .tasks import architecture

#: Consecutive damaged reads after which a batch gives up (the store is then mostly unreadable).
MAX_SKIPPED_READS = 64


@dataclass(frozen=True)
class WindowConfig:
    """How windows are cut and featurised (defaults: the paper's training setup)."""

    ctx: int = 5
    step: int = 200  # optimizer steps between the states of a window
    seq_len: int = 40
    samples_per_traj: int = 4
    batch_size: int = 4  # trajectories per batch
    wte_size: int | None = 1000  # word-embedding rows sampled for language tasks (None: all)
    wte_block: int | None = WTE_CHUNK_ROWS  # rows come in random blocks of this many (None: independently)
    lpe: int = 8
    max_feat_size: int = 9  # edge feature slots the nowcaster reads at most (a conv's 3x3 kernel)
    lm_global_scale: bool = True  # GPT-2 tasks: one scale for all parameters, as the paper trained
    max_start_step: int | None = None  # windows start at or before this optimizer step (None: wherever they fit)

    def __post_init__(self) -> None:
        if self.max_start_step is not None and (not isinstance(self.max_start_step, int) or self.max_start_step < 0):
            raise ValueError(f"window field 'max_start_step' must be a step >= 0 or None, got {self.max_start_step!r}")


@dataclass
class WindowBatch:
    """Windows as one disconnected graph; targets in parameter space.

    Windows are laid out one after another: window w owns nodes `node_ptr[w]:node_ptr[w+1]`, edges
    `edge_ptr[w]:edge_ptr[w+1]` and target rows `y_ptr[w]:y_ptr[w+1]`. Its targets are parameter
    columns `y_src[w, 0]` on of `states`, state rows `y_src[w, 1]` on, scaled with `y_mean` and `y_std`.
    """

    edge_attr: Tensor  # (E, feat * ctx) scaled input states, feature-slot major; feat: most values an edge holds
    edge_type: Tensor  # (E,)
    edge_index: Tensor  # (2, E)
    pos: Tensor | None  # (N, lpe) Laplacian encoding, signs flipped per read
    pos_w: Tensor  # (N,) word-embedding row + 1 of each node (0: none)
    states: Tensor  # (states, parameters) float16 raw states of every read: a column per parameter
    y_src: Tensor  # (W, 2) first parameter column and first state row of each window's targets in `states`
    y_mean: Tensor  # (Q,) mean its window's inputs give each target parameter's layer
    y_std: Tensor  # (Q,) std + eps of the same
    y_slot: Tensor  # (Q,) index of each target row's slot in the flat (E * feat) predictions
    y_len: Tensor  # (W,) target states each window has (the rest of its seq_len columns are padding)
    window: Tensor  # (W, 4) task index, trajectory, start state, shift
    node_ptr: Tensor  # (W + 1,)
    edge_ptr: Tensor  # (W + 1,)
    y_ptr: Tensor  # (W + 1,)
    seq_len: int = 40
    skipped: list[str] = field(default_factory=list)  # damaged reads left out of this batch

    @property
    def num_windows(self) -> int:
        return len(self.window)

    def to(self, device: str | torch.device) -> WindowBatch:
        return WindowBatch(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    def pin_memory(self) -> WindowBatch:
        return WindowBatch(**{f.name: v.pin_memory() if isinstance(v, Tensor) else v
                              for f in fields(self) for v in [getattr(self, f.name)]})

    def targets(self, minus: Tensor | None = None) -> Tensor:
        """(Q, seq_len) float32 scaled target states, zero past each window's end; `minus` (Q,) is
        subtracted from every row on the way (e.g. the last input state, for targets of change)."""
        full = bool((self.y_len == self.seq_len).all())
        y = (torch.empty if full else torch.zeros)(len(self.y_slot), self.seq_len, device=self.states.device)
        offset = self.y_mean if minus is None else torch.addcmul(self.y_mean, minus, self.y_std)
        states = self.states.T.contiguous()  # (parameters, states): each window's targets are a block
        for (col, row), n, q0, q1 in zip(self.y_src.tolist(), self.y_len.tolist(), self.y_ptr[:-1].tolist(),
                                         self.y_ptr[1:].tolist()):
            raw = states[col:col + q1 - q0, row:row + n]
            torch.sub(raw, offset[q0:q1, None], out=y[q0:q1, :n]).div_(self.y_std[q0:q1, None])
        return y

    def target_mask(self) -> Tensor | None:
        """(Q, seq_len) True where a target exists; None when every window has all seq_len targets."""
        if bool((self.y_len == self.seq_len).all()):
            return None
        per_row = torch.repeat_interleave(self.y_len, self.y_ptr.diff())
        return torch.arange(self.seq_len, device=self.y_len.device) < per_row.unsqueeze(1)

    def at_targets(self, edge_values: Tensor) -> Tensor:
        """Per-slot values (E, feat, ...) -> the rows of the target parameters (Q, ...)."""
        return edge_values.reshape(-1, *edge_values.shape[2:]).index_select(0, self.y_slot)

    def last_input(self, ctx: int) -> Tensor:
        """(Q,) the last of the `ctx` scaled input states of every target parameter: "no change"."""
        return self.at_targets(self.edge_attr.view(len(self.edge_attr), -1, ctx)[:, :, -1])


def _move(value, device):
    return value.to(device) if isinstance(value, Tensor) else value


@dataclass
class _Task:
    """Per-process state of one task: its store group, graph and the static tensors of one read.

    A read is `samples_per_traj` windows of the same graph, so the static parts of a read (edge
    index with each window's node offset, edge types, target slots with each window's edge offset,
    feature values of slots that hold no parameter) are built once here.
    """

    group: TaskGroup
    trajectories: list[int]
    graph: NeuralGraph
    lpe: Tensor | None
    stride: int
    max_start: int
    wte_rows: int  # full vocabulary size (0 when not a language model)
    layer_starts: np.ndarray  # first parameter of each scaling layer
    layer_of: Tensor  # (P,) scaling layer of each parameter
    layer_sizes: np.ndarray
    src_of_slot: Tensor  # (S * E * F,) row of `scratch` each edge feature slot of a read copies (F: graph's slots)
    scratch: Tensor  # (S * P + E * F, ctx): the read's scaled inputs, then every slot's fixed value
    read_edge_index: Tensor  # (2, S * E) the read's windows' edges, node indices offset per window
    read_edge_type: Tensor  # (S * E,)
    read_y_slot: Tensor  # (S, P) flat slot of each parameter, edge slots offset per window


class WindowStream(IterableDataset):
    """An endless, deterministic stream of `WindowBatch`es."""

    def __init__(self, store_url: str, config: WindowConfig = WindowConfig(), tasks: Sequence[str] | None = None,
                 trajectories: dict[str, list[int]] | None = None, seed: int = 0, start: int = 0,
                 shard: tuple[int, int] = (0, 1), storage_options: dict | None = None,
                 only_done: bool = True, read_threads: int | None = None, prefetch: bool = True) -> None:
        """`trajectories` limits each task to some indices (e.g. to hold some out); `start` is the
        first position (batches already consumed); `shard=(rank, world)` gives each of `world`
        data-parallel processes its own batches: rank r reads batch `p * world + r` at position p.
        With `only_done`, trajectories the manifest does not mark `done` are never read.
        `read_threads` threads load a batch's trajectory reads at once when batches are built in this
        process (DataLoader workers read one at a time: they run side by side already); default 1 for
        a store on local disk (reads are bound by decoding and run beside the assembling: two jobs
        for two cores) and 4 for remote stores (reads wait on the network). With `prefetch`,
        iterating in this process loads batch b + 1's reads while batch b is assembled and used."""
        super().__init__()
        self.shard = shard
        self.store_url = store_url
        self.storage_options = storage_options
        self.config = config
        self.seed = seed
        self.start = start
        self.read_threads = read_threads or (1 if is_local_url(store_url) else 4)
        self.prefetch = prefetch
        store = open_store(store_url, storage_options)
        self.task_names = list(tasks) if tasks else store.task_names()
        done = store.manifest().done() if only_done else None
        groups = {name: store.group(name) for name in self.task_names}
        self.trajectories = {name: [i for i in range(g.spec.trajectories) if done is None or (name, i) in done]
                             for name, g in groups.items()}
        for name, indices in (trajectories or {}).items():
            if name not in self.trajectories:
                raise ValueError(f'trajectories given for task {name!r}, which is not among {self.task_names}')
            allowed = set(self.trajectories[name])
            self.trajectories[name] = [i for i in indices if i in allowed]
        self._tasks: dict[str, _Task] | None = None
        self._pid = 0  # the process `_tasks` belong to (a forked DataLoader worker opens its own)
        self._pool: ThreadPoolExecutor | None = None
        self._arenas: ArenaPool | LocalPool | None = None  # batch memory of this process, set by `_open`
        for group in groups.values():  # validate on the driver: fail before any worker starts
            self._check_task(group, only_done)

    def __getstate__(self) -> dict:
        """Pickled without per-process state (open stores, thread pool, arenas): the receiving process
        (a DataLoader worker started with spawn) opens its own."""
        return {**self.__dict__, '_tasks': None, '_pool': None, '_arenas': None, '_pid': 0}

    def _check_task(self, group: TaskGroup, only_done: bool) -> None:
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
            why = ' marked done in the manifest' if only_done else ''
            raise ValueError(f"task '{spec.name}': no trajectories{why} to sample from")

    def _open(self) -> dict[str, _Task]:
        """Per-process state: store handle, neural graphs, their LPE and slot maps."""
        if self._tasks is None or self._pid != os.getpid():
            store = open_store(self.store_url, self.storage_options)
            self._tasks = {name: self._task(store.group(name)) for name in self.task_names}
            self._pid = os.getpid()
            self._pool = ThreadPoolExecutor(self.read_threads) if self.read_threads > 1 else None
            in_worker = get_worker_info() is not None  # batches go to another process: shared memory
            self._arenas = ArenaPool() if in_worker and ArenaPool.supported() else LocalPool()
        return self._tasks

    def _task(self, group: TaskGroup) -> _Task:
        spec, c, name = group.spec, self.config, group.name
        layout = list(group.layout)
        family = architecture(spec.arch['type'])
        is_lm = family.language_model
        wte_rows = 0
        if (family.word_embedding and layout[0][0].endswith(family.word_embedding) and c.wte_size
                and c.wte_size < layout[0][1][0]):
            wte_rows = layout[0][1][0]
            layout[0] = (layout[0][0], (c.wte_size, layout[0][1][1]))
        graph = build_graph(layout, **family.graph_kwargs(spec.arch))
        if graph.max_feat_size > c.max_feat_size:
            raise ValueError(f"task '{name}': edges hold {graph.max_feat_size} values, more than "
                             f'max_feat_size={c.max_feat_size}')
        lpe = laplacian_pe(graph.edge_index, graph.num_nodes, c.lpe) if c.lpe else None
        stride = c.step // spec.record_every
        max_start = spec.num_states - (c.ctx + min(c.seq_len, 2 * c.ctx) + c.samples_per_traj) * stride
        if c.max_start_step is not None:
            max_start = min(max_start, c.max_start_step // spec.record_every + 1)
        sizes = [int(np.prod(s)) for _, s in layout]
        if is_lm and c.lm_global_scale:
            sizes = [sum(sizes)]
        flat = graph.param_index.reshape(-1)  # slots of the graph's (E, F) feature grid
        slots = torch.nonzero(flat >= 0).flatten()
        slot_of_param = torch.empty(graph.num_params, dtype=torch.long)
        slot_of_param[flat[slots]] = slots
        aux_feats = graph.edge_features(torch.zeros(graph.num_params, 1)).reshape(-1, 1)
        shifts, slots_per_window = c.samples_per_traj, graph.num_edges * graph.max_feat_size
        scaled_rows = shifts * graph.num_params
        scratch = torch.empty(scaled_rows + slots_per_window, c.ctx)
        scratch[scaled_rows:] = aux_feats
        read_y_slot = slot_of_param + torch.arange(shifts).unsqueeze(1) * slots_per_window  # (S, P)
        src_of_slot = (torch.arange(slots_per_window) + scaled_rows).repeat(shifts)  # no parameter: fixed value
        src_of_slot[read_y_slot.flatten()] = torch.arange(scaled_rows)  # a parameter: its scaled input row
        node_offsets = torch.arange(shifts).repeat_interleave(graph.num_edges) * graph.num_nodes
        return _Task(group, self.trajectories[name], graph, lpe, stride, max_start, wte_rows,
                     np.cumsum([0] + sizes[:-1]), torch.repeat_interleave(torch.arange(len(sizes)),
                                                                          torch.tensor(sizes)),
                     np.array(sizes), src_of_slot, scratch, graph.edge_index.repeat(1, shifts) + node_offsets,
                     graph.edge_type.repeat(shifts), read_y_slot)

    def batch(self, index: int) -> WindowBatch:
        """Batch number `index` of the stream (the same on every call and in every process).

        The batch's reads are drawn first, then loaded (on `read_threads` threads in this process); a
        read that meets a damaged chunk is replaced by a new draw once the others are in."""
        gen, draws = self._draws(index)
        return self._complete(index, gen, draws, self._load_all(draws))

    def _draws(self, index: int) -> tuple[torch.Generator, list[dict]]:
        """The generator of batch `index` and its first `batch_size` draws."""
        tasks = self._open()
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0]))
        return gen, [self._draw(tasks, gen) for _ in range(self.config.batch_size)]

    def _complete(self, index: int, gen: torch.Generator, draws: list[dict],
                  loaded: list[np.ndarray | DamagedChunkError]) -> WindowBatch:
        """The batch from its draws and their loaded states, damaged reads replaced by new draws."""
        tasks = self._open()
        reads, skipped = [], []
        while draws:
            for draw, states in zip(draws, loaded):
                if isinstance(states, DamagedChunkError):
                    skipped.append(str(states))
                    if len(skipped) >= MAX_SKIPPED_READS:
                        raise DamagedChunkError(f'{len(skipped)} damaged reads while drawing batch {index}; '
                                                f'last: {states}') from None
                else:
                    reads.append({**draw, 'states': states})
            draws = [self._draw(tasks, gen) for _ in range(self.config.batch_size - len(reads))]
            loaded = self._load_all(draws) if draws else []
        with torch_threads(1):
            return self._assemble(reads, tasks, skipped)

    def _draw(self, tasks: dict[str, _Task], gen: torch.Generator) -> dict:
        """The random choices of one trajectory read: task, trajectory, start, word-embedding rows, LPE signs."""
        task_index = int(torch.randint(len(self.task_names), (), generator=gen))
        task = tasks[self.task_names[task_index]]
        traj = task.trajectories[int(torch.randint(len(task.trajectories), (), generator=gen))]
        start = int(torch.randint(task.max_start, (), generator=gen))
        rows = self._wte_rows(task.wte_rows, gen) if task.wte_rows else None
        signs = None
        if task.lpe is not None:
            signs = torch.randint(0, 2, (1, task.lpe.shape[1]), generator=gen) * 2 - 1
        return dict(task_index=task_index, task=task, traj=traj, start=start, rows=rows, signs=signs)

    def _load_all(self, draws: list[dict]) -> list[np.ndarray | DamagedChunkError]:
        """The states of each draw (or the error of a damaged read), in order: loaded on threads in
        this process, one by one in DataLoader workers."""
        if self._pool is not None and len(draws) > 1 and get_worker_info() is None:
            return list(self._pool.map(self._load, draws))
        return [self._load(d) for d in draws]

    def _load(self, draw: dict) -> np.ndarray | DamagedChunkError:
        """(states, parameters) float16 of one read: the window states, only the sampled embedding rows."""
        c, task = self.config, draw['task']
        ind = np.arange(draw['start'], task.group.spec.num_states, task.stride)[:c.seq_len + c.ctx]
        spans = None
        if draw['rows'] is not None:
            dim = task.group.layout[0][1][1]
            r = draw['rows'].numpy()
            breaks = np.flatnonzero(np.diff(r) != 1) + 1  # runs of consecutive rows: one span each
            spans = [(int(a) * dim, (int(b) + 1) * dim) for a, b in zip(r[np.r_[0, breaks]], r[np.r_[breaks - 1, -1]])]
            spans.append((task.wte_rows * dim, task.group.num_params))
        try:
            return task.group.read_states(draw['traj'], ind, spans)
        except DamagedChunkError as err:
            return err

    def _wte_rows(self, vocab: int, gen: torch.Generator) -> Tensor:
        """`wte_size` sorted word-embedding rows of `vocab`: whole blocks of `wte_block` consecutive rows
        in random order, the last one cut to fit (or, with `wte_block=None`, independent rows)."""
        size, block = self.config.wte_size, self.config.wte_block
        if block is None:
            return torch.randperm(vocab, generator=gen)[:size].sort().values
        taken, runs = 0, []
        for b in torch.randperm(-(-vocab // block), generator=gen).tolist():
            n = min(block, vocab - b * block, size - taken)
            runs.append(torch.arange(b * block, b * block + n))
            taken += n
            if taken == size:
                break
        return torch.cat(runs).sort().values

    def _assemble(self, reads: list[dict], tasks: dict[str, _Task], skipped: list[str]) -> WindowBatch:
        c = self.config
        shifts, n_in = c.samples_per_traj, c.ctx + c.samples_per_traj - 1
        graphs = [r['task'].graph for r in reads]
        feat = max(g.max_feat_size for g in graphs)  # slots per edge: narrower graphs are padded with zeros
        sizes = np.array([(g.num_nodes, g.num_edges, g.num_params) for g in graphs])  # (reads, 3)
        per_read = np.concatenate([np.zeros((1, 3), np.int64), np.cumsum(sizes * shifts, 0)])  # read offsets
        nodes, edges, params = (int(n) for n in per_read[-1])
        read_rows = np.cumsum([0] + [g.num_params for g in graphs])
        windows = len(reads) * shifts
        long, f32 = torch.long, torch.float32
        specs = {'states': ((c.ctx + c.seq_len + shifts - 1, int(read_rows[-1])), torch.float16),
                 'edge_attr': ((edges, feat * c.ctx), f32), 'edge_type': ((edges,), graphs[0].edge_type.dtype),
                 'edge_index': ((2, edges), long), 'pos': ((nodes, c.lpe) if c.lpe else (0,), f32),
                 'pos_w': ((nodes,), long), 'y_mean': ((params,), f32), 'y_std': ((params,), f32),
                 'y_slot': ((params,), long), 'y_src': ((windows, 2), long), 'y_len': ((windows,), long),
                 'window': ((windows, 4), long), 'node_ptr': ((windows + 1,), long),
                 'edge_ptr': ((windows + 1,), long), 'y_ptr': ((windows + 1,), long)}
        out = self._arenas.carve(specs)
        for k, name in enumerate(('node_ptr', 'edge_ptr', 'y_ptr')):
            out[name][0] = 0
            torch.cumsum(torch.from_numpy(np.repeat(sizes[:, k], shifts)), 0, out=out[name][1:])
        edge_attr = out['edge_attr'].view(-1, c.ctx)
        y_len, y_src, window = [], [], []
        for i, r in enumerate(reads):
            states = r['states']
            task: _Task = r['task']
            graph = task.graph
            n_states = states.shape[0]
            raw = torch.from_numpy(states)  # (T, P) float16
            block = out['states'][:, read_rows[i]:read_rows[i + 1]]
            block[:n_states] = raw
            block[n_states:] = 0  # past the trajectory's end: padding
            mean, std = _window_stats(states[:n_in], task, c.ctx, shifts)  # (S, L) each
            q = slice(int(per_read[i, 2]), int(per_read[i + 1, 2]))
            m = torch.index_select(torch.from_numpy(mean).float(), 1, task.layer_of,
                                   out=out['y_mean'][q].view(shifts, graph.num_params))
            d = torch.index_select(torch.from_numpy(std).float() + EPS, 1, task.layer_of,
                                   out=out['y_std'][q].view(shifts, graph.num_params))
            inputs = raw[:n_in].float().unfold(0, c.ctx, 1)  # (S, P, ctx): window s is inputs s..s+ctx-1
            scaled = task.scratch[:shifts * graph.num_params].view(shifts, graph.num_params, c.ctx)
            torch.sub(inputs, m.unsqueeze(2), out=scaled).div_(d.unsqueeze(2))
            e0, e1 = int(per_read[i, 1]), int(per_read[i + 1, 1])
            y_slot = out['y_slot'][q].view(shifts, graph.num_params)
            if graph.max_feat_size == feat:
                torch.index_select(task.scratch, 0, task.src_of_slot, out=edge_attr[e0 * feat:e1 * feat])
                torch.add(task.read_y_slot, e0 * feat, out=y_slot)
            else:  # a narrower graph in a wider batch: its slots first, then zeros
                grid = edge_attr[e0 * feat:e1 * feat].view(e1 - e0, feat, c.ctx)
                grid[:, graph.max_feat_size:] = 0
                grid[:, :graph.max_feat_size] = task.scratch[task.src_of_slot].view(e1 - e0, -1, c.ctx)
                own = task.read_y_slot
                torch.add(own // graph.max_feat_size * feat + own % graph.max_feat_size, e0 * feat, out=y_slot)
            torch.add(task.read_edge_index, int(per_read[i, 0]), out=out['edge_index'][:, e0:e1])
            out['edge_type'][e0:e1] = task.read_edge_type
            n0, n1 = int(per_read[i, 0]), int(per_read[i + 1, 0])
            if task.lpe is not None:
                out['pos'][n0:n1].view(shifts, -1, c.lpe)[:] = task.lpe * r['signs']
            pos_w = out['pos_w'][n0:n1].view(shifts, -1)
            pos_w[:] = graph.pos_w
            if r['rows'] is not None:
                pos_w[:, :len(r['rows'])] = r['rows'] + 1
            for shift in range(shifts):
                y_len.append(min(c.seq_len, n_states - c.ctx - shift))
                y_src.append((int(read_rows[i]), shift + c.ctx))
                window.append((r['task_index'], r['traj'], r['start'], shift))
        out['y_len'][:], out['y_src'][:], out['window'][:] = torch.tensor(y_len), torch.tensor(y_src), \
            torch.tensor(window)
        pos = out.pop('pos')
        return WindowBatch(**out, pos=pos if c.lpe else None, seq_len=c.seq_len, skipped=skipped)

    def __iter__(self) -> Iterator[WindowBatch]:
        """Batches from `start` on, each built in reused memory (`pipeline.arenas`): in a DataLoader worker
        (on Linux) a shared-memory arena, so that handing it to the main process copies nothing."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self.shard
        indices = (position * world + rank for position in itertools.count(self.start + worker, workers))
        if info is None and self.prefetch:
            yield from self._prefetched(indices)
            return
        for index in indices:
            batch = self.batch(index)
            yield self._arenas.ship(batch)

    def _prefetched(self, indices: Iterator[int]) -> Iterator[WindowBatch]:
        """The batches of `indices`, each one's reads loaded on a background thread while the one
        before is assembled and used."""
        background = ThreadPoolExecutor(1, thread_name_prefix='window-prefetch')
        try:
            index = next(indices)
            gen, draws = self._draws(index)
            pending = background.submit(self._load_all, draws)
            for following in indices:
                loaded = pending.result()
                after = self._draws(following)
                pending = background.submit(self._load_all, after[1])
                yield self._complete(index, gen, draws, loaded)
                index, (gen, draws) = following, after
        finally:
            background.shutdown(wait=True, cancel_futures=True)


def _window_stats(states: np.ndarray, task: _Task, ctx: int, shifts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer mean and unbiased std of the inputs of each shift: (shifts, L) each, float64.

    `states` are the read's input states (ctx + shifts - 1 of them). Sums per state and layer are
    taken once (float64, numpy: independent of thread counts), then each shift adds its ctx states'.
    """
    x = torch.from_numpy(np.ascontiguousarray(states)).double().numpy()  # torch converts float16 fast
    s1 = np.add.reduceat(x, task.layer_starts, axis=1)  # (T, L)
    s2 = np.add.reduceat(x * x, task.layer_starts, axis=1)
    n = task.layer_sizes * ctx
    mean = np.empty((shifts, len(n)))
    std = np.empty((shifts, len(n)))
    for shift in range(shifts):
        total, squares = s1[shift:shift + ctx].sum(0), s2[shift:shift + ctx].sum(0)
        mean[shift] = total / n
        std[shift] = np.sqrt(np.maximum(squares - total * mean[shift], 0.0) / (n - 1))
    return mean, std


def window_loader(stream: WindowStream, num_workers: int = 0) -> DataLoader:
    """A DataLoader over a stream: batches arrive in index order whatever the worker count."""
    return DataLoader(stream, batch_size=None, num_workers=num_workers,
                      persistent_workers=num_workers > 0, prefetch_factor=2 if num_workers else None)
