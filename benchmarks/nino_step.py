"""Time and peak memory of one NiNo step for networks from 10K to 1.25M parameters (and 111M).

    python benchmarks/nino_step.py [--ckpt PATH] [--threads N] [--large llama3-tiny-111M]

Each network runs in its own process so peak RSS is its own. Reported per network: parameters,
graph nodes and edges, time to build the neural graph and its Laplacian encoding (once per run),
time of one nowcast step (scaling, edge features, the GNN, writing the parameters back), and the
process's peak RSS before and after the step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = ROOT.parent / 'shared' / 'checkpoints' / 'official' / 'nino_no_posw.pt'


def _mlp(*widths: int) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _gpt2(n_embd: int, n_layer: int, n_head: int, vocab: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, vocab_size=vocab,
                                      n_positions=1024))


def _llama3_tiny() -> nn.Module:
    """The paper's README Llama: Llama-3 vocabulary (128,256), 6 layers, 384 dims, 6 heads, 2 key/value
    heads, MLP 4x, untied head: ~111M parameters."""
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                        num_attention_heads=6, num_key_value_heads=2, vocab_size=128256,
                                        tie_word_embeddings=False))


def _convnet(*channels: int) -> nn.Module:
    sys.path.insert(0, str(ROOT))
    from pipeline.tasks import ConvNet
    return ConvNet(1, channels)


MODELS = {
    'mlp-784-12-10': lambda: _mlp(784, 12, 10),
    'convnet-fm16': lambda: _convnet(16, 32, 32),
    'convnet-fm32': lambda: _convnet(32, 64, 64),
    'mlp-784-256-256-10': lambda: _mlp(784, 256, 256, 10),
    'gpt2-3-24-50257': lambda: _gpt2(24, 3, 3, 50257),
}
#: Large models, run only when named with --large; the NiNo wrapper's large-model settings.
LARGE = {'llama3-tiny-111M': (_llama3_tiny, dict(subgraph=True, edge_sample_ratio=0.05))}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(name: str, ckpt: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from nino import NiNo, load_nowcaster
    torch.manual_seed(0)
    build, settings = LARGE[name] if name in LARGE else (MODELS[name], {})
    model = build()
    nowcaster = load_nowcaster(ckpt)
    base = torch.optim.AdamW(model.parameters())  # outside the timing: its first use imports torch._dynamo (~1 s)
    t0 = time.perf_counter()
    opt = NiNo(base, model, ckpt=nowcaster, period=5, max_train_steps=5, **settings)
    graph_s = time.perf_counter() - t0
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=1e-3)
        opt.step()
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    opt.step()
    step_s = time.perf_counter() - t0
    assert opt.num_nowcasts == 1
    parts = opt.graphs.parts
    return dict(model=name, params=opt.graphs.num_params, nodes=sum(p.num_nodes for p in parts),
                edges=sum(p.num_edges for p in parts), graphs=len(parts), settings=settings, graph_s=graph_s,
                step_s=step_s, rss_before_mb=rss_before, rss_peak_mb=_peak_rss_mb())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--ckpt', type=Path, default=DEFAULT_CKPT)
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    parser.add_argument('--large', nargs='*', default=[], choices=sorted(LARGE),
                        help='also run these large models (subgraphs and edge sampling; minutes each)')
    parser.add_argument('--one', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, args.ckpt)))
        return
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, nowcaster {args.ckpt.name}')
    print('| network | params | nodes | edges | graph + LPE (s) | NiNo step (s) | peak RSS before step (MB) '
          '| peak RSS after step (MB) |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|')
    for name in [*MODELS, *args.large]:
        cmd = [sys.executable, __file__, '--one', name, '--ckpt', str(args.ckpt)]
        if args.threads:
            cmd += ['--threads', str(args.threads)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"| {r['model']} | {r['params']:,} | {r['nodes']:,} | {r['edges']:,} | {r['graph_s']:.2f} "
              f"| {r['step_s']:.3f} | {r['rss_before_mb']:.0f} | {r['rss_peak_mb']:.0f} |", flush=True)


if __name__ == '__main__':
    main()
