"""Windows per second from a store on an S3 API against the same store on local disk, in one run.

    python benchmarks/s3_store.py [--batches 20]

The version-2 fm-16 store of benchmarks/common.py (4 real trajectories of 2,688 states) is
uploaded to a local S3-compatible server (moto, started here on 127.0.0.1 in its own process), and
the loader reads the paper's windows (5 + 40 states 200 steps apart, 4 x 4 per batch) from both.
Each S3 read is an HTTP range request per chunk; a local server has no network latency, so this
measures the request overhead of the object-store path, not a real network.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

from common import published_store
from loader import CONFIGS, rate

from pipeline.loader import WindowStream, window_loader

BUCKET = 'nino-bench'


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), 'moto_server'), '-H', '127.0.0.1',
                               '-p', str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f'http://127.0.0.1:{port}'
    for _ in range(100):
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--workers', default='0,2')
    args = parser.parse_args()
    local = published_store(2)
    server, endpoint = start_server()
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID='bench', AWS_SECRET_ACCESS_KEY='bench',
                      AWS_DEFAULT_REGION='us-east-1')
    try:
        import s3fs
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        start = time.perf_counter()
        fs.put(str(local), f'{BUCKET}/store', recursive=True)
        print(f'uploaded {local} in {time.perf_counter() - start:.1f} s')
        cfg = CONFIGS['fm-16']
        per_batch = cfg.batch_size * cfg.samples_per_traj
        rows = []
        for workers in [int(w) for w in args.workers.split(',')]:
            for name, url in (('local disk', str(local)), ('S3 (moto on 127.0.0.1)', f's3://{BUCKET}/store')):
                stream = WindowStream(url, cfg, tasks=['fm-16'], seed=0)
                rows.append((name, workers, rate(window_loader(stream, workers), args.batches, per_batch)))
        print('| store | workers | windows/s | x local disk |')
        print('|---|---:|---:|---:|')
        for name, workers, r in rows:
            base = next(x for n, w, x in rows if w == workers and n == 'local disk')
            print(f'| {name} | {workers} | {r:.1f} | {r / base:.2f} |')
    finally:
        server.terminate()
        server.wait()


if __name__ == '__main__':
    main()
