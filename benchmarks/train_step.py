"""Meta-training step time (forward, masked L1, backward, clip, AdamW) in fp32 and bf16 autocast.

    python benchmarks/train_step.py [--steps 5]

The paper's NiNo (hidden 128, 3 layers) on one batch of 4 trajectories x 4 windows from the
benchmark stores of `benchmarks/loader.py` (FM-16 windows; GPT-2 lm1b-3-24 windows with 1000
sampled word-embedding rows). The batch is built once; only the step is timed.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import fm16_store, gpt2_store

from nino.model import NiNoConfig, build_nowcaster
from nino.training import forward, masked_l1
from pipeline.loader import WindowConfig, WindowStream


def time_steps(batch, amp: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = build_nowcaster(NiNoConfig()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def one() -> None:
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            loss = masked_l1(forward(model, batch), batch.y, batch.y_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    one()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=5)
    args = parser.parse_args()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    print('| batch | edges | fp32 s/step | bf16 s/step | bf16 speed-up |')
    print('|---|---:|---:|---:|---:|')
    for name, store, cfg in [('fm-16', fm16_store(), WindowConfig(step=40)),
                             ('lm1b-3-24', gpt2_store(), WindowConfig(step=200, wte_size=1000))]:
        batch = WindowStream(str(store), cfg, tasks=[name], seed=0).batch(0)
        fp32 = time_steps(batch, False, args.steps)
        bf16 = time_steps(batch, True, args.steps)
        print(f'| {name}, {cfg.batch_size}x{cfg.samples_per_traj} windows | {batch.edge_index.shape[1]:,} '
              f'| {fp32:.3f} | {bf16:.3f} | {fp32 / bf16:.2f}x |', flush=True)


if __name__ == '__main__':
    main()
