"""Shared test fixtures: paths into ../shared (read-only data, published checkpoints, fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / 'shared'
FIXTURES = sorted((SHARED / 'fixtures' / 'official').glob('*.npz'))
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
