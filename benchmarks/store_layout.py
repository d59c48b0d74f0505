"""Store layouts for window reads: bytes on disk, write speed and window-read speed.

    python benchmarks/store_layout.py STORE [--task fm-16] [--trajectory 0] [--stride 50] [--widths 1536]

Takes one recorded trajectory of a task group of STORE (real states), writes it in each
candidate layout under runs/bench-layouts/, and reads windows of 45 states `stride` states apart
(5 inputs + 40 targets, as the paper's loader reads them) with zarr-python, tensorstore and
`pipeline.shards` (this project's reader for sharded arrays). `--widths` adds layouts of up to 8
states (cut evenly, as version 2 does) whose inner chunks hold that many parameters (a language
model's word-embedding row blocks).
Ratio is stored bytes over raw float16 bytes; MB/s are of raw float16 states.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import zarr
from common import ROOT
from zarr.codecs import BloscCodec, Crc32cCodec

from pipeline.codecs import BytePlanesCodec, TimeDeltaCodec
from pipeline.shards import local_reader
from pipeline.store import TrajectoryStore, even_split

OUT = ROOT / 'runs' / 'bench-layouts'


def blosc(cname: str, level: int, shuffle: str = 'shuffle') -> list:
    return [BloscCodec(cname=cname, clevel=level, shuffle=shuffle), Crc32cCodec()]


def layouts(n_states: int, n_params: int, widths: list[int]) -> dict[str, dict]:
    v1_chunk = max(1, min(n_states, (4 << 20) // (2 * n_params)))
    shard = max(1, min(n_states, (32 << 20) // (2 * n_params)))
    delta = [TimeDeltaCodec(axis=1)]
    out = {f'v1: chunks of {v1_chunk} states, delta + blosc-zstd-3': dict(
        chunks=(1, v1_chunk, n_params), filters=delta, compressors=blosc('zstd', 3))}
    for k in (1, 2, 3):
        shards = dict(chunks=(1, k, n_params), shards=(1, max(k, shard - shard % k), n_params))
        for cname, level in (('zstd', 1), ('zstd', 3), ('lz4', 5), ('lz4hc', 5)):
            states = f'{k} state{"s" if k > 1 else ""} per chunk'
            name = f'shards, {states}, {"delta + " if k > 1 else ""}blosc-{cname}-{level}'
            out[name] = dict(**shards, filters=delta if k > 1 else [], compressors=blosc(cname, level))
    k = even_split(n_states, 8)
    for width in [n_params] + widths:
        cut = f'{width} parameters per chunk' if width < n_params else 'all parameters'
        for name, compressors in (('blosc-zstd-3', blosc('zstd', 3)),
                                  ('byte planes zstd-1', [BytePlanesCodec(level=1), Crc32cCodec()])):
            out[f'shards, {k} states x {cut}, delta + {name}'] = dict(
                chunks=(1, k, width), shards=(1, max(k, shard - shard % k), -(-n_params // width) * width),
                filters=delta, compressors=compressors)
    return out


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob('*') if f.is_file())


def window_reads(n_states: int, stride: int, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    span = 45 * stride
    return [np.arange(s, n_states, stride)[:45] for s in rng.integers(0, max(1, n_states - span), count)]


def read_rate(read, reads: list[np.ndarray], state_bytes: int) -> float:
    read(reads[0])
    start = time.perf_counter()
    for ind in reads:
        read(ind)
    return sum(len(r) for r in reads) * state_bytes / (time.perf_counter() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('store')
    parser.add_argument('--task', default='fm-16')
    parser.add_argument('--trajectory', type=int, default=0)
    parser.add_argument('--stride', type=int, default=50, help='states between the states of a window')
    parser.add_argument('--reads', type=int, default=20)
    parser.add_argument('--widths', default='', help='comma-separated parameters per inner chunk to try')
    args = parser.parse_args()
    import tensorstore as ts

    group = TrajectoryStore(args.store, mode='r').group(args.task)
    traj = group.read_params(args.trajectory)
    n_states, n_params = traj.shape
    raw = traj.nbytes
    reads = window_reads(n_states, args.stride, args.reads)
    print(f'{args.task} trajectory {args.trajectory}: {n_states} states x {n_params:,} parameters '
          f'({raw / 1e6:.1f} MB raw float16); windows of 45 states {args.stride} apart')
    print('| layout | bytes / raw | write MB/s | window read MB/s: zarr-python | tensorstore | pipeline.shards |')
    print('|---|---:|---:|---:|---:|---:|')
    widths = [int(w) for w in args.widths.split(',') if w]
    for name, kwargs in layouts(n_states, n_params, widths).items():
        path = OUT / args.task / name.split(':')[0].replace(' ', '_').replace(',', '')
        shutil.rmtree(path, ignore_errors=True)
        array = zarr.create_array(str(path), shape=(1, n_states, n_params), dtype='float16', **kwargs)
        start = time.perf_counter()
        step = (kwargs.get('shards') or kwargs['chunks'])[1]
        for s in range(0, n_states, step):
            array[0, s:s + step] = traj[s:s + step]
        write = raw / (time.perf_counter() - start) / 1e6
        back = zarr.open_array(str(path), mode='r')
        assert np.array_equal(back[0].view(np.uint16), traj.view(np.uint16)), name
        zp = read_rate(lambda ind, a=back: a.get_orthogonal_selection((0, ind, slice(None))), reads, 2 * n_params)
        try:
            t = ts.open({'driver': 'zarr3', 'kvstore': {'driver': 'file', 'path': str(path)}}).result()
            tsr = f'{read_rate(lambda ind, a=t: a[0, ind, :].read().result(), reads, 2 * n_params):.0f}'
        except ValueError:
            tsr = 'n/a (codec)'
        try:
            reader = local_reader(path)
            own = f'{read_rate(lambda ind, r=reader: r.read(0, ind), reads, 2 * n_params):.0f}'
        except ValueError:
            own = 'n/a (layout)'
        print(f'| {name} | {folder_bytes(path) / raw:.3f} | {write:.0f} | {zp:.0f} | {tsr} | {own} |', flush=True)


if __name__ == '__main__':
    main()
