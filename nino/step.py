"""The NiNo step on saved checkpoints, in its own process: `python -m nino.step LAST --out OUT ...`.

For training loops that cannot host the `NiNo` wrapper (another framework, a cluster job per
period), as in the paper's README loop: train `period` steps saving a checkpoint every
`period // ctx` steps as `step_N` (a `save_pretrained` folder, or one holding safetensors weights
with `config.json` one level up as accelerate writes them) or `step_N.pt` (`torch.save` of a state
dict, or of a dict with a `model` entry); then run this on the last one; then resume training
from the checkpoint written to `--out` (in place when `--out` is the last checkpoint).

The c checkpoints `period // c` steps apart are read, the neural graph(s) built (one per
transformer block with `--subgraph`) and their positional encodings cached in `nino_graph.pt` in
the checkpoints' folder (reused when the model is the same), the parameters nowcast k steps
ahead (k from `--max-train-steps` as in `nino.NiNo`), and the new weights written in the input's
format, atomically: other entries (buffers, optimizer files, tokenizer) are kept as they are.

Parameters are told from buffers by the model: for transformers folders a model built from the
config on the meta device (no memory, no download) gives `named_parameters()`; for `.pt` files
every floating-point tensor is a parameter except batch-norm running statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import load_nowcaster
from .graph import family_of, head_counts, param_shapes
from .nowcast import ModelGraphs
from .optimizer import first_horizon, horizon, k_schedule

GRAPH_CACHE = 'nino_graph.pt'
_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')
_STEP = re.compile(r'^(?P<prefix>.*step_)(?P<step>\d+)(?P<suffix>(\.pt)?)$')


@dataclass
class Checkpoint:
    """One saved checkpoint: where it is, its tensors by file, and which entries are parameters."""

    path: Path
    files: dict[Path, dict[str, Tensor]]  # weight file -> its tensors (one file for .pt)
    wrapper: dict | None  # the rest of a .pt file's dict when weights sit under 'model'

    def tensor(self, name: str) -> Tensor:
        for tensors in self.files.values():
            if name in tensors:
                return tensors[name]
        raise KeyError(name)


def checkpoint_paths(last: Path, period: int, ctx: int) -> list[tuple[int, Path]]:
    """The (step, path) of the ctx checkpoints ending at `last` (`.../step_N` or `.../step_N.pt`)."""
    match = _STEP.match(str(last).rstrip('/'))
    if not match:
        raise ValueError(f'{last}: checkpoint names must end in step_<N> or step_<N>.pt')
    if period < ctx or period % ctx:
        raise ValueError(f'period ({period}) must be a positive multiple of ctx ({ctx})')
    step, every = int(match['step']), period // ctx
    steps = [step - every * (ctx - 1 - i) for i in range(ctx)]
    if steps[0] < 0:
        raise ValueError(f'{last}: step {step} is before the end of the first period ({period // ctx * (ctx - 1)} '
                         f'steps of history needed)')
    return [(s, Path(f"{match['prefix']}{s}{match['suffix']}")) for s in steps]


def read_checkpoint(path: Path) -> Checkpoint:
    """Load the tensors of a `step_N` folder (safetensors files) or a `step_N.pt` file."""
    if not path.exists():
        raise FileNotFoundError(f'missing checkpoint {path}')
    if path.is_dir():
        from safetensors.torch import load_file

        files = sorted(path.glob('*.safetensors'))
        if not files:
            raise FileNotFoundError(f'{path}: no .safetensors weights in the folder')
        return Checkpoint(path, {f: load_file(f) for f in files}, None)
    saved = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(saved, dict):
        raise ValueError(f'{path}: expected a state dict or a dict with a "model" entry')
    if isinstance(saved.get('model'), dict):
        return Checkpoint(path, {path: saved['model']}, saved)
    return Checkpoint(path, {path: saved}, None)


def model_params(ckpt: Checkpoint) -> tuple[list[tuple[str, tuple[int, ...]]], str | None, int | None, int | None]:
    """(name, shape) of the parameters in `named_parameters()` order, the transformers `model_type`, and the
    attention and key/value head counts (None when a `.pt` file does not say)."""
    if ckpt.path.is_dir():
        config_path = next((p for p in (ckpt.path / 'config.json', ckpt.path.parent / 'config.json') if p.exists()),
                           None)
        if config_path is None:
            raise FileNotFoundError(f'{ckpt.path}: no config.json in the folder or beside it')
        import transformers

        config = transformers.AutoConfig.from_pretrained(config_path)
        arch = (getattr(config, 'architectures', None) or ['AutoModelForCausalLM'])[0]
        cls = getattr(transformers, arch, transformers.AutoModelForCausalLM)
        with torch.device('meta'):
            model = cls.from_config(config) if arch.startswith('Auto') else cls(config)
        return (param_shapes(model), config.model_type, *head_counts(model))
    (tensors,) = ckpt.files.values()
    params = [(n, tuple(t.shape)) for n, t in tensors.items()
              if t.is_floating_point() and not n.endswith(_BUFFERS)]
    return params, None, None, None


def flat_states(ckpts: list[Checkpoint], params: list[tuple[str, tuple[int, ...]]]) -> Tensor:
    """(P, c) float32 states; every checkpoint must hold every parameter with its shape."""
    columns = []
    for ckpt in ckpts:
        parts = []
        for name, shape in params:
            try:
                t = ckpt.tensor(name)
            except KeyError:
                raise ValueError(f'{ckpt.path}: parameter {name!r} is missing') from None
            if tuple(t.shape) != shape:
                raise ValueError(f'{ckpt.path}: parameter {name!r} has shape {tuple(t.shape)}, '
                                 f'expected {shape} (from {ckpts[-1].path})')
            parts.append(t.detach().float().reshape(-1))
        columns.append(torch.cat(parts))
    return torch.stack(columns, dim=1)


def write_checkpoint(last: Checkpoint, params: list[tuple[str, tuple[int, ...]]], x: Tensor, out: Path) -> None:
    """Write `last` with its parameters replaced by the flat vector x, atomically, in its own format."""
    offset = 0
    new = {}
    for name, shape in params:
        n = int(torch.Size(shape).numel())
        new[name] = x[offset:offset + n].view(shape)
        offset += n
    if last.path.is_dir():
        from safetensors.torch import save_file

        stage = Path(tempfile.mkdtemp(prefix='.nino-step-', dir=out.parent))
        try:
            if out.resolve() != last.path.resolve():
                shutil.copytree(last.path, stage, dirs_exist_ok=True)
            for f, tensors in last.files.items():
                updated = {k: (new[k].to(v.dtype) if k in new else v).contiguous() for k, v in tensors.items()}
                save_file(updated, stage / f.name, metadata={'format': 'pt'})
            out.mkdir(parents=True, exist_ok=True)
            for f in stage.iterdir():
                if f.is_file():
                    os.replace(f, out / f.name)
                else:
                    shutil.copytree(f, out / f.name, dirs_exist_ok=True)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return
    (tensors,) = last.files.values()
    state = {k: (new[k].to(v.dtype) if k in new else v) for k, v in tensors.items()}
    saved = {**last.wrapper, 'model': state} if last.wrapper is not None else state
    tmp = out.with_name(out.name + '.tmp')
    torch.save(saved, tmp)
    os.replace(tmp, out)


def cached_graphs(cache: Path, params: list, graph_kwargs: dict, subgraph: bool, lpe_dim: int) -> ModelGraphs:
    """Build the graph(s); reuse positional encodings from `cache` when it describes this model."""
    graphs = ModelGraphs.build(params, subgraph=subgraph, **graph_kwargs)
    if not lpe_dim:
        return graphs
    key = {'params': [[n, list(s)] for n, s in params], 'subgraph': subgraph, 'lpe_dim': lpe_dim, **graph_kwargs}
    if cache.exists():
        saved = torch.load(cache, map_location='cpu', weights_only=True)
        if saved.get('key') == json.dumps(key):
            graphs.set_lpe(saved['lpe'], lpe_dim)
            return graphs
    graphs.set_lpe(None, lpe_dim)
    tmp = cache.with_name(cache.name + '.tmp')
    torch.save({'key': json.dumps(key), 'lpe': graphs.lpe}, tmp)
    os.replace(tmp, cache)
    return graphs


def run_step(last: Path, out: Path, nowcaster_ckpt: str | Path, period: int = 1000, max_train_steps: int = 10000,
             k_power: float = 2.0, upd_scale: float = 1.0, subgraph: bool = False, edge_sample_ratio: float = 0.0,
             amp: bool = False, num_heads: int | None = None, num_key_value_heads: int | None = None,
             device: str = 'cpu', chunk_size: int | None = None, edge_device: str | None = None,
             k_max: int | None = None) -> dict:
    """Nowcast from the c checkpoints ending at `last` and write the result to `out`; returns a summary.
    The nowcaster runs on `device`; states, graphs and edges are kept on `edge_device` (default: `device`)."""
    nowcaster = load_nowcaster(nowcaster_ckpt).to(device).eval()
    if chunk_size:
        nowcaster.config.chunk_size = chunk_size
    ctx = nowcaster.config.ctx
    paths = checkpoint_paths(Path(last), period, ctx)
    missing = [str(p) for _, p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f'missing checkpoints for the NiNo step: {", ".join(missing)} '
                                f'(expected every {period // ctx} steps up to {last})')
    ckpts = [read_checkpoint(p) for _, p in paths]
    params, model_type, heads, kv_heads = model_params(ckpts[-1])
    heads, kv_heads = num_heads or heads, num_key_value_heads or kv_heads
    family = family_of(params, model_type)
    graph_kwargs = {} if family is None else {'num_heads': heads, 'num_key_value_heads': kv_heads, 'family': family}
    edge_device = edge_device or device
    states = flat_states(ckpts, params).to(edge_device)
    cache_kwargs = {k: v for k, v in graph_kwargs.items() if k != 'family'}
    graphs = cached_graphs(Path(last).parent / GRAPH_CACHE, params, cache_kwargs, subgraph,
                           nowcaster.config.lpe if nowcaster.config.gnn else 0).to(edge_device)
    step = paths[-1][0]
    schedule = k_schedule(first_horizon(nowcaster.config.seq_len, k_max), max_train_steps, period, k_power)
    k = horizon(schedule, max(step - 1, 0), period)
    x = graphs.predict(nowcaster, states, k, edge_sample_ratio, torch.bfloat16 if amp else None)
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f'the nowcast from {last} has NaN/Inf values; nothing was written')
    if upd_scale != 1.0:
        x = torch.lerp(states[:, -1], x, upd_scale)
    write_checkpoint(ckpts[-1], params, x.cpu(), Path(out))
    return {'step': step, 'k': k, 'params': len(x), 'graphs': len(graphs.parts),
            'max_change': float((x - states[:, -1]).abs().max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m nino.step', description=__doc__.split('\n\n')[0])
    parser.add_argument('last', type=Path, help='the last checkpoint before the step: .../step_N or .../step_N.pt')
    parser.add_argument('--out', type=Path, required=True, help='where to write the nowcast (may be LAST itself)')
    parser.add_argument('--ckpt', required=True, help='nowcaster checkpoint (.safetensors of this project or a '
                                                      'published .pt)')
    parser.add_argument('--period', type=int, default=1000)
    parser.add_argument('--max-train-steps', type=int, default=10000)
    parser.add_argument('--k-power', type=float, default=2.0, help='decay power of the horizon k')
    parser.add_argument('--k-max', type=int, default=None, help="horizon of the first nowcast (default: the "
                                                                "nowcaster's seq_len)")
    parser.add_argument('--upd-scale', type=float, default=1.0, help='scale of the predicted change')
    parser.add_argument('--subgraph', action='store_true', help='one neural graph per transformer block')
    parser.add_argument('--edge-sample-ratio', type=float, default=0.0,
                        help='fraction of edges messages pass over (0: all)')
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast for the nowcaster')
    parser.add_argument('--num-heads', type=int, default=None, help='attention heads, if no config says')
    parser.add_argument('--num-key-value-heads', type=int, default=None)
    parser.add_argument('--device', default='cpu', help='where the nowcaster runs')
    parser.add_argument('--edge-device', default=None,
                        help='where states, graphs and edges are kept (default: --device); e.g. cpu with a cuda '
                             '--device: edges move to the GPU a chunk at a time (the reference\'s --nino_mp_device)')
    parser.add_argument('--chunk-size', type=int, default=None, help='edges per chunk (default: the nowcaster\'s)')
    args = parser.parse_args(argv)
    try:
        summary = run_step(args.last, args.out, args.ckpt, args.period, args.max_train_steps, args.k_power,
                           args.upd_scale, args.subgraph, args.edge_sample_ratio, args.amp, args.num_heads,
                           args.num_key_value_heads, args.device, args.chunk_size, args.edge_device,
                           args.k_max)
    except (FileNotFoundError, ValueError, FloatingPointError) as err:
        print(f'nino.step: {err}', file=sys.stderr)
        return 2
    print(f"NiNo step at step {summary['step']} (k={summary['k']}): {summary['params']:,} parameters over "
          f"{summary['graphs']} graph(s), largest change {summary['max_change']:.4g}; written to {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
