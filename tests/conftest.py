"""Shared test fixtures: paths into ../shared (read-only data, published checkpoints, fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nino.baselines import LinearExtrapolation

SHARED = Path(__file__).resolve().parents[2] / 'shared'
#: Fixtures holding a whole-model graph (the subgraph-mode fixture has per-block LPEs instead).
FIXTURES = sorted((SHARED / 'fixtures' / 'official').glob('*.npz')) + sorted(
    p for p in (SHARED / 'fixtures' / 'transformers').glob('*.npz') if not p.stem.endswith('_subgraph'))
OFFICIAL = SHARED / 'checkpoints' / 'official'
FASHION = SHARED / 'data' / 'fashion-mnist-t10k-4443'


def require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f'{path} is missing: the tests read ../shared beside the checkout')
    return path


def load_fixture(path: Path) -> tuple[dict, dict]:
    """(meta, arrays) of a reference fixture."""
    data = np.load(require(path))
    arrays = {k: data[k] for k in data.files if k != 'meta_json'}
    return json.loads(bytes(data['meta_json'])), arrays


@pytest.fixture(params=FIXTURES, ids=[p.stem for p in FIXTURES])
def fixture(request) -> tuple[dict, dict]:
    return load_fixture(request.param)


@pytest.fixture(scope='session')
def official_dir() -> Path:
    return require(OFFICIAL)


@pytest.fixture(scope='session')
def fashion_mnist():
    from pipeline.data import load_idx_dataset
    return load_idx_dataset(require(FASHION / 'images-idx3-ubyte.gz'), require(FASHION / 'labels-idx1-ubyte.gz'))


FM_ROOT = SHARED / 'data' / 'fashion-mnist-t10k-4443'
TEXT = SHARED / 'data' / 'tinyshakespeare' / 'input.txt'


def write_store(path: Path, entries: list[dict]) -> Path:
    """A trajectory store recorded in-process (no Ray): for loader and training tests."""
    from pipeline.record_here import record_store
    return record_store(path, entries)


def fm16_entry(**over) -> dict:
    return {'preset': 'fm-16', 'dataset': {'root': str(FM_ROOT), 'val_size': 443}, 'batch_size': 64,
            'eval_every': 40, **over}


@pytest.fixture(scope='session')
def small_store(tmp_path_factory) -> Path:
    """FM-16 (4 trajectories, 41 states 4 steps apart) and a byte GPT-2 (2 trajectories, 41 states)."""
    return write_store(tmp_path_factory.mktemp('stores') / 'small', [
        fm16_entry(steps=160, trajectories=4, lr=[0.003, 0.01]),
        {'preset': 'lm-3-24', 'dataset': {'path': str(TEXT), 'context': 32}, 'steps': 160, 'record_every': 4,
         'eval_every': 80, 'batch_size': 8, 'trajectories': 2}])


def write_published(folder: Path, name: str, n_traj: int, n_states: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Small files in exactly the published layout and naming (random-walk float16 states)."""
    from pipeline.published import published_task
    task = published_task(name).with_shape(n_traj, n_states)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per_part = n_traj // task.parts
    arrays = {}
    for filename in task.part_files():
        mm = np.memmap(folder / filename, dtype=np.float16, mode='w+', shape=(per_part, n_states, task.n_params))
        for t in range(per_part):
            x = rng.normal(0, 0.05, task.n_params).astype(np.float32)
            for s in range(n_states):
                x += rng.normal(0, 1e-3, task.n_params).astype(np.float32)
                mm[t, s] = x.astype(np.float16)
        mm.flush()
        arrays[filename] = np.array(mm)
        del mm
    metrics = rng.random((n_traj, n_states, len(task.metrics))).astype(np.float16)
    metrics.tofile(folder / task.metrics_file)
    arrays[task.metrics_file] = metrics
    return arrays


@pytest.fixture(scope='session')
def bpe_folder(tmp_path_factory):
    """A 300-token byte-level BPE trained on tiny-shakespeare, saved in GPT-2's file format."""
    from tokenizers import ByteLevelBPETokenizer
    folder = tmp_path_factory.mktemp('bpe')
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(require(TEXT))], vocab_size=300, special_tokens=['<|endoftext|>'], show_progress=False)
    bpe.save_model(str(folder))
    return folder


class Window:
    """One window of a batch, cut out with the batch's pointers."""

    def __init__(self, batch, w: int, ctx: int = 5) -> None:
        e0, e1 = batch.edge_ptr[w:w + 2].tolist()
        n0, n1 = batch.node_ptr[w:w + 2].tolist()
        q0, q1 = batch.y_ptr[w:w + 2].tolist()
        self.edge_attr = batch.edge_attr[e0:e1]
        self.edge_type = batch.edge_type[e0:e1]
        self.edge_index = batch.edge_index[:, e0:e1] - n0
        self.pos = None if batch.pos is None else batch.pos[n0:n1]
        self.pos_w = batch.pos_w[n0:n1]
        self.y = batch.targets()[q0:q1]
        self.y_len = int(batch.y_len[w])
        feat = batch.edge_attr.shape[1] // ctx
        self.y_slot = batch.y_slot[q0:q1] - e0 * feat
        self.window = batch.window[w]


def windows_of(batch, ctx: int = 5) -> list[Window]:
    """The windows of a `WindowBatch`, each cut out with the batch's pointers."""
    return [Window(batch, w, ctx) for w in range(batch.num_windows)]


class FarOff(LinearExtrapolation):
    """A nowcaster whose predictions are far off (linear extrapolation + 25): any guard should refuse them."""

    def forward(self, edge_attr, **kwargs):
        return super().forward(edge_attr, **kwargs) + 25.0
