"""Parity check against the paper's reference code: `python -m nino.compat FIXTURE.npz [...]`.

A fixture (format: `../shared/fixtures/official/README.md`) holds parameter states and what the
reference code computed from them; a subgraph-mode fixture (`meta.subgraph`) holds the split into
blocks and per-block positional encodings instead of one graph. This command rebuilds the neural graph, the scaled edge
features and the predictions of each published checkpoint with this project's code, prints the
differences, and exits 1 when any prediction is off by more than `--tol` (default 1e-4) or the
graph differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_nowcaster
from .graph import build_graph
from .nowcast import ModelGraphs
from .scaling import scale_states, unscale_states

TOLERANCE = 1e-4


@dataclass
class ParityRow:
    what: str
    error: float
    ok: bool


def default_ckpt_dir(fixture: Path) -> Path:
    """In the `shared/` layout: `checkpoints/<the fixture's folder>` if there is one (e.g. `synthetic`),
    else `checkpoints/official`."""
    root = fixture.resolve().parent.parent.parent / 'checkpoints'
    own = root / fixture.resolve().parent.name
    return own if own.is_dir() else root / 'official'


def check_fixture(fixture: Path, ckpt_dir: Path, tol: float = TOLERANCE) -> list[ParityRow]:
    """Compare this project's graph, features and predictions with one fixture."""
    data = np.load(fixture)
    try:
        meta = json.loads(bytes(data['meta_json']))
        params = [(name, tuple(shape)) for name, shape in meta['params']]
    except KeyError as err:
        raise ValueError(f'{fixture}: missing field {err}') from None
    if meta.get('subgraph'):
        return _check_subgraphs(data, meta, params, ckpt_dir, tol)
    graph = build_graph(params, **meta.get('graph_kwargs', {}))
    rows = []
    for key, ours in [('edge_index', graph.edge_index), ('edge_type', graph.edge_type), ('pos_w', graph.pos_w)]:
        ref = data[key]
        same = tuple(ours.shape) == ref.shape and bool((ours.numpy() == ref).all())
        rows.append(ParityRow(key, 0.0 if same else float('inf'), same))
    if not all(r.ok for r in rows):
        return rows

    states = torch.from_numpy(data['states']).float()
    scaled, stats = scale_states(states, params)
    features = graph.edge_features(scaled)
    lpe = torch.from_numpy(data['lpe']).float()
    for tag, ckpt_name in meta['nino_ckpts'].items():
        ref_features = data.get(f'edge_attr_{tag}')
        if ref_features is not None:
            err = float(np.abs(features.numpy() - ref_features).max())
            rows.append(ParityRow(f'edge_attr_{tag}', err, err <= 1e-5))
        model = load_nowcaster(ckpt_dir / ckpt_name)
        for k in meta['ks']:
            with torch.no_grad():
                pred = model(features, graph.edge_type, graph.edge_index, lpe, graph.pos_w, k=int(k))
            x = unscale_states(graph.to_vector(pred), params, stats)
            rows.append(_prediction_row(ckpt_name, k, x, data[f'pred_{tag}_k{k}'], tol))
    return rows


def _check_subgraphs(data: np.lib.npyio.NpzFile, meta: dict, params: list, ckpt_dir: Path,
                     tol: float) -> list[ParityRow]:
    """Subgraph mode: the same split into blocks, then each checkpoint's whole predicted vector."""
    graphs = ModelGraphs.build(params, subgraph=True, **meta.get('graph_kwargs', {}))
    blocks = [[name for name, _ in part.params] for part in graphs.parts]
    same = blocks == meta['blocks']
    rows = [ParityRow('blocks', 0.0 if same else float('inf'), same)]
    if not same:
        return rows
    graphs.set_lpe([torch.from_numpy(data[f'lpe_block{i}']) for i in range(len(blocks))], k=8)
    states = torch.from_numpy(data['states']).float()
    for tag, ckpt_name in meta['nino_ckpts'].items():
        model = load_nowcaster(ckpt_dir / ckpt_name)
        for k in meta['ks']:
            x = graphs.predict(model, states, int(k))
            rows.append(_prediction_row(ckpt_name, k, x, data[f'pred_{tag}_k{k}'], tol))
    return rows


def _prediction_row(ckpt_name: str, k: int, x: torch.Tensor, ref: np.ndarray, tol: float) -> ParityRow:
    err = float(np.abs(x.numpy() - ref).max())
    return ParityRow(f'pred {ckpt_name} k={k}', err, err <= tol)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m nino.compat', description=__doc__.split('\n\n')[0])
    parser.add_argument('fixtures', nargs='+', type=Path, help='reference fixture .npz files')
    parser.add_argument('--ckpt-dir', type=Path, default=None,
                        help='folder with the checkpoints the fixture names (default: ../../checkpoints/<the '
                             'fixture folder> from the fixture if it exists, else ../../checkpoints/official)')
    parser.add_argument('--tol', type=float, default=TOLERANCE, help='max abs error allowed for predictions')
    args = parser.parse_args(argv)

    failed = False
    for fixture in args.fixtures:
        ckpt_dir = args.ckpt_dir or default_ckpt_dir(fixture)
        print(f'{fixture}')
        for row in check_fixture(fixture, ckpt_dir, args.tol):
            failed |= not row.ok
            print(f'  {row.what:<32} max abs error {row.error:.3e}  {"ok" if row.ok else "FAIL"}')
    print('parity: FAIL' if failed else 'parity: ok')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
