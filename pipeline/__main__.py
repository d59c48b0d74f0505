"""`python -m pipeline COMMAND`: the published dataset and store maintenance.

    download --tasks fm-16,lm1b-3-24 [--cache-dir DIR]      fetch published files (resumable)
    convert --tasks fm-16 --source DIR|hub --store STORE     published memmaps -> trajectory store
    migrate SRC DST                                          rewrite a store in the current layout (resumable)
    info STORE                                               a table per task
    verify STORE                                             shapes, completeness, NaN/Inf, checksums
    stream STORE [--batches N]                               read training windows (hf://, hf-published://, ...)
    push STORE --repo OWNER/NAME [--path-in-repo DIR]        verify, then upload a store to a hub dataset repo
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .lease import LeaseError
from .store import StoreError, TrajectoryStore
from .verify import verify_store


def _shapes(values: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for v in values:
        name, _, dims = v.partition('=')
        n_traj, _, n_states = dims.partition('x')
        out[name] = (int(n_traj), int(n_states))
    return out


def info_table(store: TrajectoryStore) -> str:
    """Per task: trajectories done/total, states, parameters, bytes on disk, final metrics."""
    manifest = store.manifest()
    local = Path(store.url) if '://' not in store.url else None
    lines = ['| task | trajectories | states | parameters | bytes on disk | final metric | mean ± std | min | max |',
             '|---|---:|---:|---:|---:|---|---:|---:|---:|']
    for name in store.task_names():
        group = store.group(name)
        spec = group.spec
        n_params = group.params.shape[2]
        done = sorted(i for t, i in manifest.done(name))
        size = '-'
        if local is not None and (local / name).is_dir():
            size = f'{sum(f.stat().st_size for f in (local / name).rglob("*") if f.is_file()) / 1e6:.1f} MB'
        finals = np.array([group.read_metrics(i)[-1] for i in done]) if done else np.zeros((0, len(group.metric_names)))
        for j, metric in enumerate(group.metric_names):
            v = finals[:, j] if len(finals) else np.array([np.nan])
            head = (f'| {name} | {len(done)}/{spec.trajectories} | {spec.num_states} | {n_params:,} | {size} '
                    if j == 0 else '| | | | | ')
            lines.append(head + f'| {metric} | {np.nanmean(v):.4f} ± {np.nanstd(v):.4f} | {np.nanmin(v):.4f} '
                                f'| {np.nanmax(v):.4f} |')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m pipeline', description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('download', help='fetch published files into the hub cache')
    p.add_argument('--tasks', required=True)
    p.add_argument('--cache-dir', default=None)
    p = sub.add_parser('convert', help='convert published memmaps into a trajectory store')
    p.add_argument('--tasks', required=True)
    p.add_argument('--source', required=True, help="folder with the .dat files, or 'hub' (download first)")
    p.add_argument('--store', required=True)
    p.add_argument('--cache-dir', default=None)
    p.add_argument('--shape', action='append', default=[], help='TASK=NTRAJxNSTATES for files of other sizes')
    p.add_argument('--address', default=None, help='Ray cluster address (default: local, or RAY_ADDRESS)')
    p = sub.add_parser('migrate', help='rewrite a store in the current layout version (resumable, verified)')
    p.add_argument('src')
    p.add_argument('dst')
    p.add_argument('--address', default=None, help='Ray cluster address (default: local, or RAY_ADDRESS)')
    for name, helptext in (('info', 'a table per task'), ('verify', 'check a store')):
        p = sub.add_parser(name, help=helptext)
        p.add_argument('store')
        p.add_argument('--cache-dir', default=None)
    p = sub.add_parser('stream', help='read training windows from a store (local, fsspec URL or hf://)')
    p.add_argument('store')
    p.add_argument('--batches', type=int, default=3)
    p.add_argument('--step', type=int, default=200)
    p.add_argument('--cache-dir', default=None)
    p = sub.add_parser('push', help='verify a store, then upload its folder to a hub dataset repository')
    p.add_argument('store')
    p.add_argument('--repo', required=True)
    p.add_argument('--path-in-repo', default='')
    args = parser.parse_args(argv)

    try:
        if args.command == 'download':
            from .hub import download
            for task, paths in download(args.tasks.split(','), args.cache_dir).items():
                print(f'{task}: ' + ', '.join(str(p) for p in paths))
            return 0
        if args.command == 'convert':
            from .convert import convert
            tasks = args.tasks.split(',')
            source = args.source
            if source == 'hub':
                from .hub import download
                source = str(download(tasks, args.cache_dir)[tasks[0]][0].parent)
            print(convert(tasks, source, args.store, _shapes(args.shape), args.address))
            return 0
        if args.command == 'migrate':
            from .migrate import migrate
            summary = migrate(args.src, args.dst, args.address)
            print(summary)
            return 1 if summary.failed else 0
        if args.command == 'push':
            from .publish import push
            print(push(args.store, args.repo, args.path_in_repo))
            return 0
        if args.command == 'stream':
            from .loader import WindowConfig, WindowStream
            stream = WindowStream(args.store, WindowConfig(step=args.step),
                                  storage_options={'cache_dir': args.cache_dir} if args.cache_dir else None)
            for b in range(args.batches):
                t = time.time()
                batch = stream.batch(b)
                mask = batch.target_mask()
                targets = len(batch.y_slot) * batch.seq_len if mask is None else int(mask.sum())
                print(f'batch {b}: {batch.num_windows} windows, {batch.edge_index.shape[1]:,} edges, '
                      f'{targets:,} target values, {time.time() - t:.2f} s')
                for problem in batch.skipped:
                    print(f'  skipped a damaged read: {problem}')
            return 0
        store = TrajectoryStore(args.store, {'cache_dir': args.cache_dir} if args.cache_dir else None, mode='r')
        if args.command == 'info':
            print(info_table(store))
            return 0
        if args.command == 'verify':
            checked, problems = verify_store(store, progress=True)
            for problem in problems:
                print(f'BAD {problem}')
            print(f'{checked} trajectories checked, {len(problems)} problem(s)')
            return 1 if problems else 0
    except (StoreError, LeaseError, ValueError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 2


if __name__ == '__main__':
    sys.exit(main())
