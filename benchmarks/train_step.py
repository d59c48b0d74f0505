"""Meta-training step time (forward, L1 loss, backward, clip, AdamW), beside the paper's reference.

    python benchmarks/train_step.py [--reference DIR] [--steps 5] [--tasks fm-16]

The paper's NiNo (hidden 128, 3 layers, 40 horizons) on one batch of 4 trajectory reads x 4
windows of the published fm-16 layout (benchmarks/common.py), 5 inputs + 40 targets 200 steps
apart; `lm1b-3-24` adds a GPT-2 batch (1,000 sampled word-embedding rows). The batch is built
once; only the step is timed: fp32, and bf16 autocast. With `--reference DIR` the reference's
`NiNoModel` steps on a fm-16 batch from its own loader (same files, same window settings, so the
same edge count) in the same process, and the ratio column divides its fp32 time by each of ours.
The steps are timed in turns (reference, ours fp32, ours bf16, again...) and each reported as
its median over `--steps` rounds: the machine is shared and its speed drifts within a run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import published_store
from loader import CONFIGS

from metatrain.training import forward, window_l1
from nino.model import NiNoConfig, build_nowcaster
from pipeline.loader import WindowStream


def interleaved_medians(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each step function, timed in turns (one of each per round, after one warm-up
    round), so that the machine's speed drifting during the run affects all of them alike."""
    for one in steps.values():
        one()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, one in steps.items():
            start = time.perf_counter()
            one()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def our_step(batch, amp: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_nowcaster(NiNoConfig()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def one() -> None:
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            loss = window_l1(forward(model, batch), batch, 5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    return one


def reference_step(checkout: Path, task: str) -> tuple[Callable[[], None], int]:
    """(one fp32 step, edges) of the reference on a batch from its own loader."""
    import torch.nn.functional as F
    from loader import reference_loader
    from reference import import_reference
    ref = import_reference(checkout)
    batch = next(iter(reference_loader(checkout, task, CONFIGS[task], 0)))
    torch.manual_seed(0)
    model = ref['NiNoModel'](ctx=5, lpe=8, seq_len=40, max_feat_size=9, wte_pos_enc=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def one() -> None:
        graphs = batch.clone()
        out = model(graphs)
        loss = F.l1_loss(out.edge_attr[graphs.y_mask], graphs.y[graphs.y_mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    return one, batch.edge_index.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--reference', type=Path, help='checkout of the paper code (skipped when absent)')
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--tasks', default='fm-16')
    args = parser.parse_args()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    rows = []
    for task in args.tasks.split(','):
        batch = WindowStream(str(published_store(2)), CONFIGS[task], tasks=[task], seed=0).batch(0)
        steps = {'fp32': our_step(batch, False), 'bf16 autocast': our_step(batch, True)}
        edges = {'fp32': batch.edge_index.shape[1], 'bf16 autocast': batch.edge_index.shape[1]}
        if args.reference and args.reference.is_dir() and task == 'fm-16':  # its GPT-2 batches do not run
            steps['reference'], edges['reference'] = reference_step(args.reference, task)
        seconds = interleaved_medians(steps, args.steps)
        ref = seconds.get('reference', float('nan'))
        for name, s in seconds.items():
            code, precision = ('reference', 'fp32') if name == 'reference' else ('this project', name)
            rows.append((task, code, precision, edges[name], s, ref / s))
    print('| batch | code | precision | edges | s/step | x reference fp32 |')
    print('|---|---|---|---:|---:|---:|')
    for task, code, precision, edges, seconds, ratio in rows:
        print(f'| {task}, 4x4 windows | {code} | {precision} | {edges:,} | {seconds:.3f} | {ratio:.2f} |')


if __name__ == '__main__':
    main()
