"""Dataset readers and downloaders, on the shared files and on files written in the same formats."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile

import numpy as np
import pytest
import torch

from pipeline.data import ChecksumError, download_dataset, download_file, load_dataset, read_idx
from pipeline.data.cifar import load_cifar
from pipeline.data.download import SOURCES
from tests.conftest import SHARED, TEXT
from tests.fake_hub import fake_hub_cache


def _write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, 'wb').write(data)


def test_idx_round_trip_and_errors(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / 'a.idx', a)
    _write_idx(tmp_path / 'a.idx.gz', a, gz=True)
    assert (read_idx(tmp_path / 'a.idx') == a).all() and (read_idx(tmp_path / 'a.idx.gz') == a).all()
    (tmp_path / 'bad.idx').write_bytes(b'\x01\x02\x03\x04')
    with pytest.raises(ValueError, match='bad.idx: not an IDX file'):
        read_idx(tmp_path / 'bad.idx')
    (tmp_path / 'short.idx').write_bytes((tmp_path / 'a.idx').read_bytes()[:-1])
    with pytest.raises(ValueError, match='short.idx'):
        read_idx(tmp_path / 'short.idx')


def test_shared_fashion_mnist_split(fashion_mnist):
    data = load_dataset({'name': 'fashion-mnist', 'root': str(SHARED / 'data' / 'fashion-mnist-t10k-4443'),
                         'val_size': 443})
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_val.shape == (443, 1, 28, 28)
    assert torch.equal(data.y_val, fashion_mnist[1][-443:])


def test_train_test_idx_pair(tmp_path):
    for split, n in (('train', 6), ('t10k', 4)):
        _write_idx(tmp_path / f'{split}-images-idx3-ubyte.gz', np.full((n, 28, 28), 255), gz=True)
        _write_idx(tmp_path / f'{split}-labels-idx1-ubyte.gz', np.arange(n), gz=True)
    data = load_dataset({'name': 'mnist', 'root': str(tmp_path)})
    assert len(data.x_train) == 6 and len(data.x_val) == 4 and float(data.x_train.max()) == 1.0


def _cifar_batch(path, n, label_key, seed, protocol=pickle.DEFAULT_PROTOCOL):
    rng = np.random.default_rng(seed)
    d = {b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: rng.integers(0, 10, n).tolist(),
         b'filenames': [b'x.png'] * n}
    with open(path, 'wb') as f:
        pickle.dump(d, f, protocol=protocol)
    return d


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ('touch pwned',))


def test_cifar_batch_that_would_run_code_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / 'cifar-10-batches-py'
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    for i in range(2, 6):
        _cifar_batch(folder / f'data_batch_{i}', 2, b'labels', i, protocol=2)  # as the published (py2) files
    with open(folder / 'data_batch_1', 'wb') as f:
        pickle.dump({b'data': _Exploit(), b'labels': [0]}, f)
    with pytest.raises(ValueError, match=r'data_batch_1: not a CIFAR batch \(refused global posix.system'):
        load_cifar(tmp_path, 'cifar10', 'train')
    assert not (tmp_path / 'pwned').exists()
    _cifar_batch(folder / 'data_batch_1', 3, b'labels', 1, protocol=2)
    assert load_cifar(tmp_path, 'cifar10', 'train')[0].shape == (11, 3, 32, 32)


def test_cifar_batches(tmp_path):
    folder = tmp_path / 'cifar-10-batches-py'
    folder.mkdir()
    batches = [_cifar_batch(folder / f'data_batch_{i}', 5, b'labels', i) for i in range(1, 6)]
    _cifar_batch(folder / 'test_batch', 3, b'labels', 9)
    x, y = load_cifar(tmp_path, 'cifar10', 'train')
    assert x.shape == (25, 3, 32, 32) and y.tolist()[:5] == batches[0][b'labels']
    assert torch.equal(x[0], torch.from_numpy(batches[0][b'data'][0].reshape(3, 32, 32) / 255.0).float())
    folder100 = tmp_path / 'c100' / 'cifar-100-python'
    folder100.mkdir(parents=True)
    _cifar_batch(folder100 / 'train', 4, b'fine_labels', 1)
    _cifar_batch(folder100 / 'test', 2, b'fine_labels', 2)
    data = load_dataset({'name': 'cifar100', 'root': str(tmp_path / 'c100')})
    assert len(data.x_train) == 4 and len(data.x_val) == 2


def test_text_windows_are_next_token_pairs():
    data = load_dataset({'name': 'text', 'path': str(SHARED / 'data' / 'tinyshakespeare' / 'input.txt'),
                         'context': 16})
    x, y = data.train_batch(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < 256


def test_mnist1d_is_generated_offline_with_a_thousand_validation_signals():
    import random
    np.random.seed(5)
    random.seed(5)
    before = np.random.rand(), random.random()
    np.random.seed(5)
    random.seed(5)
    data = load_dataset({'name': 'mnist1d'})
    assert (np.random.rand(), random.random()) == before  # the generator's global seeding is undone
    assert data.x_train.shape == (4000, 40) and data.x_val.shape == (1000, 40)
    assert data.y_train.dtype == torch.long and sorted(data.y_val.unique().tolist()) == list(range(10))
    assert torch.bincount(torch.cat([data.y_train, data.y_val])).tolist() == [500] * 10  # balanced classes
    again = load_dataset({'name': 'mnist1d', 'seed': 42, 'num_samples': 5000})  # defaults spelled out: same data
    assert torch.equal(again.x_train, data.x_train)
    other = load_dataset({'name': 'mnist1d', 'seed': 7, 'num_samples': 500})
    assert other.x_val.shape == (100, 40) and not torch.equal(other.x_train[:10], data.x_train[:10])
    with pytest.raises(ValueError, match="'mnist1d': num_samples must be at least 50, got 10"):
        load_dataset({'name': 'mnist1d', 'num_samples': 10})


def test_guard_size_holds_the_last_training_examples_out_for_the_guard():
    whole = load_dataset({'name': 'digits'})
    data = load_dataset({'name': 'digits', 'guard_size': 100})
    assert len(data.x_train) == len(whole.x_train) - 100 and torch.equal(data.x_val, whole.x_val)
    assert torch.equal(data.x_guard, whole.x_train[-100:]) and torch.equal(data.y_guard, whole.y_train[-100:])
    assert [len(x) for x, _ in data.guard_batches(32)] == [32, 32, 32, 4] and whole.guard_batches(32) == []
    for bad in (0, len(whole.x_train), 'many'):
        with pytest.raises(ValueError, match=f"'digits': field 'guard_size' must be an integer in .*{bad!r}"):
            load_dataset({'name': 'digits', 'guard_size': bad})
    with pytest.raises(ValueError, match="'guard_size' applies to classification datasets only"):
        load_dataset({'name': 'text', 'path': str(TEXT), 'guard_size': 10})


def test_download_file_checks_md5_and_leaves_nothing_on_mismatch(tmp_path):
    src = SHARED / 'data' / 'tinyshakespeare' / 'input.txt'
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = download_file(src.as_uri(), tmp_path / 'a' / 'input.txt', md5)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(ChecksumError, match='does not match'):
        download_file(src.as_uri(), tmp_path / 'b' / 'input.txt', '0' * 32)
    assert list((tmp_path / 'b').iterdir()) == []


def test_download_dataset_from_a_mirror_skips_files_already_there(tmp_path):
    mirror = (SHARED / 'data' / 'tinyshakespeare').as_uri()
    root = download_dataset('tinyshakespeare', tmp_path, mirror=mirror)
    first = (root / 'input.txt').stat().st_mtime_ns
    download_dataset('tinyshakespeare', tmp_path, mirror=mirror)
    assert (root / 'input.txt').stat().st_mtime_ns == first


def test_download_dataset_unpacks_archives(tmp_path, monkeypatch):
    src = tmp_path / 'src'
    (src / 'cifar-10-batches-py').mkdir(parents=True)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        _cifar_batch(src / 'cifar-10-batches-py' / name, 2, b'labels', 0)
    archive = tmp_path / 'cifar-10-python.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(src / 'cifar-10-batches-py', arcname='cifar-10-batches-py')
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(SOURCES, 'cifar10', ('unused', {'cifar-10-python.tar.gz': md5}))
    root = download_dataset('cifar10', tmp_path / 'data', mirror=tmp_path.as_uri())
    assert load_cifar(root, 'cifar10', 'test')[0].shape == (2, 3, 32, 32)


def test_bpe_tokenizer_from_a_folder_round_trips_the_corpus(bpe_folder):
    from pipeline.data.text import load_bpe, tokenizer_vocab_size
    data = load_dataset({'name': 'text', 'path': str(TEXT), 'tokenizer': str(bpe_folder), 'context': 32}, 300)
    tokens = torch.cat([data.train, data.val])
    assert tokenizer_vocab_size(str(bpe_folder)) == 300 and int(tokens.max()) < 300
    assert len(tokens) < 0.8 * TEXT.stat().st_size  # merges make it shorter than bytes
    assert load_bpe(str(bpe_folder)).decode(tokens.tolist()) == TEXT.read_text(encoding='utf-8')
    cfg = {'name': 'text', 'path': str(TEXT), 'tokenizer': str(bpe_folder), 'context': 32}
    message = r"300 tokens but the model's arch.vocab_size is 256: set arch.vocab_size to 300"
    with pytest.raises(ValueError, match=message):
        load_dataset(cfg, 256)
    with pytest.raises(FileNotFoundError, match=r"lacks vocab.json and merges.txt \(GPT-2 BPE format\)"):
        load_dataset({'name': 'text', 'path': str(TEXT), 'tokenizer': str(bpe_folder / 'nope')})


def test_gpt2_tokenizer_comes_through_the_hub_cache(bpe_folder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from pipeline.data.text import GPT2_REPO, load_bpe, load_text_tokens, tokenizer_vocab_size
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
    load_bpe.cache_clear()  # tokenizers are loaded once per process: forget any earlier 'gpt2'
    with pytest.raises(FileNotFoundError, match='not in the hub cache and the hub cannot be reached'):
        load_text_tokens(TEXT, 'gpt2')
    fake_hub_cache(tmp_path / 'hub', GPT2_REPO, 'main', {n: bpe_folder / n for n in ('vocab.json', 'merges.txt')},
                   repo_type='model')
    tokens = load_text_tokens(TEXT, 'gpt2')
    assert tokenizer_vocab_size('gpt2') == 300 and torch.equal(tokens, load_text_tokens(TEXT, str(bpe_folder)))


def test_a_gpt2_trajectory_records_with_a_bpe_vocabulary(bpe_folder):
    from pipeline.record import record_trajectory
    from pipeline.tasks import load_tasks
    spec, = load_tasks({'tasks': [{'preset': 'lm-3-24', 'arch': {'vocab_size': 300}, 'steps': 8, 'record_every': 4,
                                   'eval_every': 8, 'batch_size': 4, 'trajectories': 1,
                                   'dataset': {'path': str(TEXT), 'tokenizer': str(bpe_folder), 'context': 16}}]})
    traj = record_trajectory(spec, 0)
    wte = 300 * 24
    assert traj.params.shape[0] == 3 and np.isfinite(traj.params).all()
    assert not np.array_equal(traj.params[0, :wte], traj.params[-1, :wte])  # the embedding trains
    assert np.isfinite(traj.metrics[-1]).all()


def test_hf_text_reads_local_parquet_splits_and_trains_a_llama(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.record import METRICS, record_trajectory

    monkeypatch.setenv('HF_DATASETS_CACHE', str(tmp_path / 'cache'))
    lines = TEXT.read_text(encoding='utf-8').splitlines()[:2000]
    pq.write_table(pa.table({'text': lines[:1800], 'id': list(range(1800))}), tmp_path / 'train.parquet')
    pq.write_table(pa.table({'text': lines[1800:]}), tmp_path / 'validation.parquet')
    cfg = {'name': 'hf-text', 'train_files': str(tmp_path / 'train.parquet'),
           'val_files': str(tmp_path / 'validation.parquet'), 'context': 32}
    data = load_dataset(cfg)
    assert bytes(data.train.to(torch.uint8).tolist()).decode() == '\n'.join(lines[:1800])
    assert bytes(data.val.to(torch.uint8).tolist()).decode() == '\n'.join(lines[1800:])

    from pipeline.tasks import load_tasks
    spec, = load_tasks({'tasks': [{'preset': 'llama-2-32', 'dataset': cfg, 'steps': 20, 'record_every': 10,
                                   'eval_every': 20, 'batch_size': 8}]})
    traj = record_trajectory(spec, 0)
    assert traj.params.shape == (3, sum(int(np.prod(s)) for _, s in _llama_layout(spec)))
    val_loss = traj.metrics[[0, -1], METRICS.index('val_loss')]
    assert np.isfinite(val_loss).all() and val_loss[1] < val_loss[0] - 1

    only_train = load_dataset({**{k: v for k, v in cfg.items() if k != 'val_files'}, 'val_fraction': '0.1'})
    assert len(only_train.val) == int(0.1 * (len(only_train.train) + len(only_train.val)))
    with pytest.raises(ValueError, match="no column 'content'"):
        load_dataset({**cfg, 'column': 'content'})


def test_hf_text_names_a_dataset_missing_offline(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    # HF_HUB_OFFLINE=1 as a user sets it before starting Python: these flags are read at import time
    monkeypatch.setattr(datasets.config, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(FileNotFoundError, match="hf-text': cannot load dataset 'no-such/corpus'"):
        load_dataset({'name': 'hf-text', 'dataset': 'no-such/corpus', 'cache_dir': str(tmp_path)})
    with pytest.raises(FileNotFoundError, match='train file not found'):
        load_dataset({'name': 'hf-text', 'train_files': str(tmp_path / 'missing.parquet')})


def _llama_layout(spec):
    from pipeline.tasks import build_model
    return [(n, tuple(p.shape)) for n, p in build_model(spec.arch).named_parameters()]
