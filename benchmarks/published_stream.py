"""Windows per second and bytes fetched per window when training reads the published files in place.

    python benchmarks/published_stream.py [--latency 0.05] [--batches 5]

Serves the fm-16 file of benchmarks/common.py (4 real trajectories, published layout) from the
localhost hub endpoint the tests use (`tests/fake_hub.py`), each answer delayed by `--latency`
seconds (a simulated round trip), and streams the paper's windows (5 + 40 states 200 steps apart,
4 per read, 4 reads per batch) through `hf-published://` with a cold and then a warm state cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

from common import ROOT, RUNS, published_files

from pipeline.loader import WindowConfig, WindowStream
from pipeline.published import REPO_ID, REVISION
from tests.fake_hub import FakeHub, Repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--latency', type=float, default=0.05)
    parser.add_argument('--batches', type=int, default=5)
    args = parser.parse_args()
    folder = published_files()
    files = {name: (folder / name).read_bytes() for name in ('fm-16.dat', 'fm-16_metrics.dat')}
    cache = RUNS / 'bench-published-states'
    shutil.rmtree(cache, ignore_errors=True)
    cfg = WindowConfig(step=200)
    windows = cfg.batch_size * cfg.samples_per_traj
    print('| state cache | round trip | windows/s | MB fetched per window | requests per window |')
    print('|---|---:|---:|---:|---:|')
    with FakeHub() as hub:
        hub.repos[REPO_ID] = Repo(files=files, lfs=set(files), branches={'main', REVISION})
        hub.latency = args.latency
        os.environ['HF_ENDPOINT'] = hub.endpoint
        for label in ('cold', 'warm'):
            stream = WindowStream(f'hf-published://{REPO_ID}@{REVISION}?fm-16=4x2688', cfg, seed=0,
                                  storage_options={'cache_dir': str(cache)})
            hub.ranges.clear()
            start = time.perf_counter()
            for b in range(args.batches):
                stream.batch(b)
            seconds = time.perf_counter() - start
            fetched = [r for r in hub.ranges if r]
            nbytes = sum(int(r.split('-')[1]) - int(r[6:].split('-')[0]) + 1 for r in fetched)
            n = args.batches * windows
            print(f'| {label} | {args.latency * 1000:.0f} ms | {n / seconds:.1f} | {nbytes / n / 1e6:.3f} '
                  f'| {len(fetched) / n:.1f} |', flush=True)


if __name__ == '__main__':
    os.chdir(ROOT)
    main()
