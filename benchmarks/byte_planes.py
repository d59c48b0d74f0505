"""`nino.byte_planes` against Blosc codecs on real delta-coded chunks: bytes, encode and decode speed.

    python benchmarks/byte_planes.py [--store runs/bench-stores/real-v1] [--fm-states 1024]

`nino.byte_planes` (pipeline/codecs.py) splits each delta-coded float16 chunk into its high bytes
(sign, exponent, top mantissa bits: mostly 0x00 or 0xFF after the delta), compressed with zstd,
and its low bytes (mostly noise), compressed with lz4. Chunks as version 2 cuts them, from the real
trajectories of `benchmarks/common.py`'s real-trajectory store: FM-16 pairs of states (trajectory 0,
its first `--fm-states` states) and GPT-2 chunks of 8 states, full width and in 1,536-parameter
blocks (whole chunks only: no padding). MB/s of raw float16 on one core, Python per chunk included;
every chunk is checked to decode to its bytes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import RUNS
from numcodecs import blosc

from pipeline.codecs import join_planes, split_planes
from pipeline.store import TrajectoryStore


def delta_chunks(trajectories: list[np.ndarray], states: int, width: int) -> list[np.ndarray]:
    """Chunks of `states` x `width` uint16, delta-coded along time as `nino.time_delta` does."""
    out = []
    for x in trajectories:
        for t in range(0, x.shape[0] - states + 1, states):
            block = x[t:t + states].view('<u2')
            delta = block.copy()
            delta[1:] = block[1:] - block[:-1]
            out += [np.ascontiguousarray(delta[:, c:c + width]) for c in range(0, x.shape[1], width)]
    return out


def measure(chunks: list[np.ndarray], encode, decode) -> tuple[float, float, float]:
    """(stored / raw, encode MB/s, decode MB/s)."""
    raw = sum(c.nbytes for c in chunks)
    start = time.perf_counter()
    blobs = [encode(c) for c in chunks]
    enc = raw / (time.perf_counter() - start) / 1e6
    start = time.perf_counter()
    for blob, c in zip(blobs, chunks):
        decode(blob, c.shape)
    dec = raw / (time.perf_counter() - start) / 1e6
    assert all(np.array_equal(decode(blob, c.shape), c) for blob, c in zip(blobs, chunks))
    return sum(len(b) for b in blobs) / raw, enc, dec


def blosc_codec(cname: bytes, level: int):
    def encode(chunk: np.ndarray) -> bytes:
        return blosc.compress(chunk, cname, level, blosc.SHUFFLE)

    def decode(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, '<u2')
        blosc.decompress(blob, out)
        return out

    return encode, decode


def byte_planes(level: int):
    def encode(chunk: np.ndarray) -> bytes:
        return split_planes(chunk, level)

    def decode(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, '<u2')
        join_planes(blob, out)
        return out

    return encode, decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--store', default=str(RUNS / 'bench-stores' / 'real-v1'))
    parser.add_argument('--fm-states', type=int, default=1024)
    args = parser.parse_args()
    blosc.set_nthreads(1)
    store = TrajectoryStore(args.store, mode='r')
    fm = [store.group('fm-16').read_params(0)[:args.fm_states]]
    lm = [store.group('lm-3-24').read_params(i) for i in range(2)]
    cases = {'FM-16 pairs': delta_chunks(fm, 2, fm[0].shape[1]),
             'GPT-2 8 states, all parameters': delta_chunks(lm, 8, lm[0].shape[1]),
             'GPT-2 8 states x 1,536 parameters': delta_chunks(lm, 8, 1536)}
    codecs = {'blosc lz4hc-5 (version 2, vision)': blosc_codec(b'lz4hc', 5),
              'blosc zstd-3': blosc_codec(b'zstd', 3),
              'blosc zstd-1': blosc_codec(b'zstd', 1)}
    codecs.update({f'nino.byte_planes: zstd-{level} high bytes, lz4 low bytes': byte_planes(level) for level in (1, 3)})
    print('| chunks | codec | bytes / raw | encode MB/s | decode MB/s |')
    print('|---|---|---:|---:|---:|')
    for case, chunks in cases.items():
        for name, (encode, decode) in codecs.items():
            ratio, enc, dec = measure(chunks, encode, decode)
            print(f'| {case} | {name} | {ratio:.3f} | {enc:.0f} | {dec:.0f} |', flush=True)


if __name__ == '__main__':
    main()
