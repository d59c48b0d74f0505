"""Windows per second of the streaming loader, beside the paper's reference loader on the same files.

    python benchmarks/loader.py [--reference DIR] [--batches 20] [--workers 0,2]

Data (benchmarks/common.py): the published layout, fm-16 with 4 real trajectories of 2,688 states
and lm1b-3-24 with 2 synthetic trajectories of 124 states; this project reads them converted into
a version-2 store (and, for comparison, a version-1 store), the reference reads the `.dat` files.
Windows as the paper trains: 5 inputs + 40 targets 200 optimizer steps apart, 4 windows per
trajectory read, 4 reads per batch; GPT-2 reads sample 1,000 word-embedding rows (this project: in
random blocks of 64 consecutive rows, its loader's default; the reference: independent rows). With
`--reference DIR` (a checkout of github.com/SamsungSAILMontreal/nino) the reference runs in the
same process first, and the ratio column divides by its rate at the same worker count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import RUNS, SHAPES, published_files, published_store

from pipeline.loader import WindowConfig, WindowStream, window_loader
from pipeline.published import REPO_ID, REVISION, published_task

CONFIGS = {'fm-16': WindowConfig(step=200), 'lm1b-3-24': WindowConfig(step=200, wte_size=1000)}


def rate(batches, count: int, windows_per_batch: int, rounds: int = 3) -> float:
    """Windows per second: the median of `rounds` runs of `count` batches, after one batch of start-up
    (the machine is shared: a median of a few runs is steadier than one)."""
    it = iter(batches)
    next(it)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            next(it)
        rates.append(count * windows_per_batch / (time.perf_counter() - start))
    return statistics.median(rates)


def stored_mb_per_window(store: Path, task: str, cfg: WindowConfig, batches: int = 5) -> float:
    """Stored (compressed) MB a window reads: counted on the fast reader's fetches over a few batches
    (version 2), estimated from the chunks a read decodes with zarr-python (version 1)."""
    stream = WindowStream(str(store), cfg, tasks=[task], seed=1)
    group = stream._open()[task].group
    reader = group._reader
    if reader is None:  # a version-1 read decodes whole chunks of consecutive states
        folder = store / task / 'params'
        stored = sum(f.stat().st_size for f in folder.rglob('*') if f.is_file())
        per_state = stored / (group.spec.trajectories * group.spec.num_states)
        stride = cfg.step // group.spec.record_every
        states = len({s // group.chunk_states for s in range(0, (cfg.ctx + cfg.seq_len) * stride, stride)}) \
            * group.chunk_states
        return per_state * states / cfg.samples_per_traj / 1e6
    fetched, fetch = [], reader.fetch
    reader.fetch = lambda requests: [fetched.append(len(b)) or b for b in fetch(requests)]
    for b in range(batches):
        stream.batch(b)
    return sum(fetched) / (batches * cfg.batch_size * cfg.samples_per_traj) / 1e6


def reference_loader(checkout: Path, task: str, cfg: WindowConfig, workers: int):
    """The reference's DataLoader over the published-layout files, as its training builds it."""
    import torch
    from reference import full_metrics_file, import_reference, reference_dataset

    from tests.fake_hub import fake_hub_cache
    ref = import_reference(checkout)
    folder = published_files()
    spec = published_task(task).with_shape(*SHAPES[task])
    per_part = spec.n_traj // spec.parts
    files = {name: (folder / name, per_part, spec.n_states) for name in spec.part_files()}
    metrics = full_metrics_file(RUNS / 'bench-published' / f'full-{spec.metrics_file}', task, len(spec.metrics))
    cache = RUNS / 'bench-reference-cache'
    fake_hub_cache(cache, REPO_ID, REVISION, {**{n: p for n, (p, _, _) in files.items()}, spec.metrics_file: metrics},
                   link=True)
    dset = reference_dataset(ref, cache, task, files, ctx=cfg.ctx, step=cfg.step, seq_len=cfg.seq_len,
                             wte_size=cfg.wte_size, samples_per_traj=cfg.samples_per_traj)
    torch.manual_seed(0)
    return torch.utils.data.DataLoader(dset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
                                       collate_fn=ref['collate'])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--reference', type=Path, help='checkout of the paper code (skipped when absent)')
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--workers', default='0,2')
    parser.add_argument('--tasks', default='fm-16,lm1b-3-24')
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(',')]
    stores = {2: published_store(2), 1: published_store(1)}
    rows = []
    for task in args.tasks.split(','):
        cfg = CONFIGS[task]
        per_batch = cfg.batch_size * cfg.samples_per_traj
        count = args.batches if task == 'fm-16' else max(2, args.batches // 2)
        ref = {}
        if args.reference and args.reference.is_dir():
            ref = {w: rate(reference_loader(args.reference, task, cfg, w), count, per_batch) for w in workers}
            rows += [(task, 'reference (.dat memmap)', w, r, '-', 1.0) for w, r in ref.items()]
        for version, store in stores.items():
            mb = stored_mb_per_window(store, task, cfg)
            for w in workers if version == 2 else [0]:
                stream = WindowStream(str(store), cfg, tasks=[task], seed=0)
                r = rate(window_loader(stream, w), count, per_batch)
                rows.append((task, f'this project, version-{version} store', w, r, f'{mb:.2f}',
                             r / ref[w] if w in ref else float('nan')))
    print('| task | loader | workers | windows/s | stored MB read per window | x reference |')
    print('|---|---|---:|---:|---:|---:|')
    for task, name, w, r, mb, ratio in rows:
        print(f'| {task} | {name} | {w} | {r:.1f} | {mb} | {ratio:.2f} |')


if __name__ == '__main__':
    main()
