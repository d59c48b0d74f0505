"""Windows per second of the streaming loader with 0, 1 and 2 workers, and bytes read per window.

    python benchmarks/loader.py [--batches 20]

Stores (built once under runs/bench-stores/): real FM-16 trajectories (201 states, 4 steps apart)
read with windows 40 optimizer steps apart, and synthetic states in the published GPT-2
lm1b-3-24 layout (1.25M parameters, 25 states 200 steps apart) read with 1000 sampled
word-embedding rows. Bytes read per window are the compressed sizes of the chunk files that hold
the window's states (a read fetches those chunks only), divided by the windows cut from them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import fm16_store, gpt2_store

from pipeline.loader import WindowConfig, WindowStream, window_loader


def chunk_bytes(store: Path, task: str, traj: int, chunk: int) -> int:
    path = store / task / 'params' / 'c' / str(traj) / str(chunk) / '0'
    return path.stat().st_size if path.exists() else 0


def bytes_per_window(stream: WindowStream, store: Path, batches: int) -> float:
    tasks = stream._open()
    total, windows = 0, 0
    for b in range(batches):
        batch = stream.batch(b)
        seen = set()
        for task_index, traj, start, _ in batch.window.tolist():
            name = stream.task_names[task_index]
            t = tasks[name]
            ind = np.arange(start, t.group.spec.num_states, t.stride)[:stream.config.ctx + stream.config.seq_len]
            for chunk in set((ind // t.group.chunk_states).tolist()):
                if (name, traj, start, chunk) not in seen:
                    seen.add((name, traj, start, chunk))
                    total += chunk_bytes(store, name, traj, chunk)
            windows += 1
    return total / windows


def windows_per_second(stream: WindowStream, workers: int, batches: int) -> float:
    loader = iter(window_loader(stream, workers))
    next(loader)  # start-up (worker processes, graphs, LPE) is not counted
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    per_batch = stream.config.batch_size * stream.config.samples_per_traj
    return batches * per_batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batches', type=int, default=20)
    args = parser.parse_args()
    cases = [('fm-16', fm16_store(), WindowConfig(step=40)),
             ('lm1b-3-24', gpt2_store(), WindowConfig(step=200, wte_size=1000))]
    print('| task | window | workers | windows/s | bytes read per window |')
    print('|---|---|---:|---:|---:|')
    for name, store, cfg in cases:
        stream = WindowStream(str(store), cfg, tasks=[name], seed=0)
        per_window = bytes_per_window(stream, store, 4)
        for workers in (0, 1, 2):
            rate = windows_per_second(stream, workers, args.batches)
            print(f'| {name} | ctx {cfg.ctx}, {cfg.seq_len} targets, {cfg.step} steps apart, '
                  f'{cfg.samples_per_traj} per read | {workers} | {rate:.1f} | {per_window / 1e6:.2f} MB |',
                  flush=True)


if __name__ == '__main__':
    main()
