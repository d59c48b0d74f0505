"""`python -m pipeline COMMAND`: store maintenance commands (verify)."""

from __future__ import annotations

import argparse
import sys

from .store import StoreError, TrajectoryStore
from .verify import verify_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m pipeline')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('verify', help='check shapes, completeness, NaN/Inf and checksums of a store')
    p.add_argument('store', help='store path or fsspec URL')
    args = parser.parse_args(argv)

    if args.command == 'verify':
        try:
            store = TrajectoryStore(args.store, mode='r')
        except StoreError as err:
            print(f'error: {err}', file=sys.stderr)
            return 2
        checked, problems = verify_store(store)
        for problem in problems:
            print(f'BAD {problem}')
        print(f'{checked} trajectories checked, {len(problems)} problem(s)')
        return 1 if problems else 0
    return 2


if __name__ == '__main__':
    sys.exit(main())
