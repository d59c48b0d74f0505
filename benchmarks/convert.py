"""Conversion throughput on a multi-GB synthetic memmap in the published fm-16 layout, and peak RSS.

    python benchmarks/convert.py [--trajectories 80] [--states 1000] [--workers 2]

Writes `fm-16.dat` and `fm-16_metrics.dat` (random-walk float16 states, the published naming and
C order) under runs/bench-convert/, then times (1) a plain sequential read of the same file and
(2) `pipeline.convert` into a fresh store with local Ray. While converting, the resident set of
the driver and of every Ray worker is sampled; the largest is reported.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.convert import convert  # noqa: E402
from pipeline.published import published_task  # noqa: E402

OUT = ROOT / 'runs' / 'bench-convert'


def write_source(n_traj: int, n_states: int) -> Path:
    task = published_task('fm-16').with_shape(n_traj, n_states)
    path = OUT / 'fm-16.dat'
    if path.exists() and path.stat().st_size == 2 * n_traj * n_states * task.n_params:
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(path, 'wb') as f:
        for _ in range(n_traj):
            x = rng.normal(0, 0.05, task.n_params).astype(np.float32)
            steps = rng.normal(0, 1e-3, (n_states, task.n_params)).astype(np.float32)
            f.write((x + np.cumsum(steps, axis=0)).astype(np.float16).tobytes())
    rng.random((n_traj, n_states, 4)).astype(np.float16).tofile(OUT / 'fm-16_metrics.dat')
    return path


def sequential_read(path: Path, block: int = 64 << 20) -> float:
    start = time.perf_counter()
    with open(path, 'rb') as f:
        while f.read(block):
            pass
    return time.perf_counter() - start


class RssSampler(threading.Thread):
    """Largest RSS of this process and of any Ray worker, sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.driver = 0
        self.worker = 0
        self.stop = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            for p in psutil.process_iter(['cmdline', 'memory_info']):
                if any('convert:' in part for part in (p.info['cmdline'] or [])):
                    self.worker = max(self.worker, p.info['memory_info'].rss)
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--trajectories', type=int, default=80)
    parser.add_argument('--states', type=int, default=1000)
    parser.add_argument('--workers', type=int, default=2)
    args = parser.parse_args()
    path = write_source(args.trajectories, args.states)
    size = path.stat().st_size
    read_s = min(sequential_read(path) for _ in range(2))
    store = OUT / 'store'
    shutil.rmtree(store, ignore_errors=True)
    import ray
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level='ERROR', log_to_driver=False)
    sampler = RssSampler()
    sampler.start()
    try:
        start = time.perf_counter()
        summary = convert(['fm-16'], OUT, str(store), {'fm-16': (args.trajectories, args.states)}, progress=False)
        convert_s = time.perf_counter() - start
    finally:
        sampler.stop.set()
        ray.shutdown()
    assert summary.done == args.trajectories, summary
    stored = sum(f.stat().st_size for f in store.rglob('*') if f.is_file())
    print(f'source: {path.name} {size / 1e9:.2f} GB ({args.trajectories} x {args.states} x 14,378 float16)')
    print('| what | seconds | MB/s of source |')
    print('|---|---:|---:|')
    print(f'| plain sequential read | {read_s:.1f} | {size / read_s / 1e6:.0f} |')
    print(f'| convert ({args.workers} Ray workers: read, compress, write, read back, compare) | {convert_s:.1f} '
          f'| {size / convert_s / 1e6:.0f} |')
    print(f'\nstore: {stored / 1e9:.2f} GB ({stored / size:.2f} of source); peak RSS: driver '
          f'{sampler.driver / 1e6:.0f} MB, largest worker {sampler.worker / 1e6:.0f} MB')


if __name__ == '__main__':
    main()
