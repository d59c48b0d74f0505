"""This project's checkpoint format and the import of the published files."""

from __future__ import annotations

import json

import pytest
import torch

from nino.checkpoint import (
    CheckpointError,
    checkpoint_kind,
    import_official,
    load_nowcaster,
    official_config,
    save_nowcaster,
)
from nino.model import NiNoConfig, NiNoGNN, NiNoMLP, build_nowcaster


def test_official_configs(official_dir):
    gnn = import_official(official_dir / 'nino_no_posw.pt')
    assert isinstance(gnn, NiNoGNN) and not gnn.config.wte_pos_enc and gnn.config.layers == 3
    mlp = import_official(official_dir / 'nino_mlp_h32.pt')
    assert isinstance(mlp, NiNoMLP) and mlp.config.hid == 32


@pytest.mark.parametrize('name', ['nino_no_posw.pt', 'nino_mlp.pt', 'nino_mlp_h32.pt'])
def test_own_format_round_trip_gives_identical_predictions(official_dir, tmp_path, name):
    model = load_nowcaster(official_dir / name)
    path = tmp_path / 'model.safetensors'
    save_nowcaster(model, path)
    assert checkpoint_kind(path) == 'safetensors'  # not a pickle
    again = load_nowcaster(path)
    assert again.config == model.config
    e, f = 50, model.config.max_feat_size
    attr = torch.randn(e, f * 5)
    etype = torch.randint(0, 14, (e,))
    edge_index = torch.randint(0, 10, (2, e))
    lpe = torch.randn(10, 8)
    with torch.no_grad():
        assert torch.equal(model(attr, etype, edge_index, lpe, k=3), again(attr, etype, edge_index, lpe, k=3))


def test_mismatch_names_missing_and_unexpected_keys(tmp_path):
    from safetensors.torch import save_file
    small = build_nowcaster(NiNoConfig(hid=16, layers=2))
    config = dict(small.config.to_dict(), layers=3)
    wrong = tmp_path / 'wrong.safetensors'
    save_file(dict(small.state_dict()), str(wrong),
              metadata={'format': 'nino-nowcaster', 'version': '1', 'config': json.dumps(config)})
    with pytest.raises(CheckpointError, match=r"missing keys: \['layers\.1\.conv\.message\.bias'") as err:
        load_nowcaster(wrong)
    assert 'wrong.safetensors' in str(err.value)


def test_official_import_names_unexpected_keys(official_dir, tmp_path):
    raw = torch.load(official_dir / 'nino_mlp_h32.pt', weights_only=True)
    raw['state_dict']['extra.weight'] = torch.zeros(1)
    del raw['state_dict']['edge_mlp.fc.6.bias']
    path = tmp_path / 'edited.pt'
    torch.save(raw, path)
    with pytest.raises(CheckpointError) as err:
        load_nowcaster(path)
    assert "missing keys: ['mlp.6.bias']" in str(err.value)
    assert "unexpected keys: ['extra.weight']" in str(err.value)


def test_unsupported_official_arguments_are_named():
    with pytest.raises(CheckpointError, match='act_name'):
        official_config({'act_name': 'relu'})
    with pytest.raises(CheckpointError, match='bogus'):
        official_config({'bogus': 1})


def test_missing_file_and_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pt'):
        load_nowcaster(tmp_path / 'nope.pt')
    from safetensors.torch import save_file
    other = tmp_path / 'other.safetensors'
    save_file({'w': torch.zeros(1)}, str(other))
    with pytest.raises(CheckpointError, match='not a nowcaster checkpoint'):
        load_nowcaster(other)


def test_sweep_of_exports_round_trips_whatever_the_header_length(tmp_path):
    """A safetensors header length whose low byte is 0x80 (the pickle magic) once sent the file to
    the pickle importer; every export of a sweep must load back, that case included."""
    low_bytes = set()
    configs = [NiNoConfig(hid=h, layers=n, seq_len=s, gnn=g, lpe=8 if g else 0)
               for h in (8, 16) for n in (2, 3) for s in (10, 20, 40) for g in (True, False)]
    exports = [(c, {}) for c in configs] + [(configs[0], {'note': 'x' * pad}) for pad in range(0, 256, 8)]
    for i, (config, meta) in enumerate(exports):
        model = build_nowcaster(config)
        path = tmp_path / f'm{i}.safetensors'
        save_nowcaster(model, path, metadata=meta)
        low_bytes.add(path.read_bytes()[0])
        again = load_nowcaster(path)
        assert again.config == config
        for key, value in model.state_dict().items():
            assert torch.equal(value, again.state_dict()[key])
    assert 0x80 in low_bytes  # the sweep covers the case that used to fail


def test_damaged_or_foreign_files_are_named(tmp_path, official_dir):
    model = build_nowcaster(NiNoConfig(hid=8, layers=2))
    path = tmp_path / 'model.safetensors'
    save_nowcaster(model, path)
    assert not list(tmp_path.glob('.*.tmp'))  # written atomically, no temporary left
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last tensor
    flipped = tmp_path / 'flipped.safetensors'
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match='flipped.safetensors.*checksum'):
        load_nowcaster(flipped)
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match='cut.safetensors'):
        load_nowcaster(cut)
    text = tmp_path / 'notes.txt'
    text.write_text('hello\n')
    with pytest.raises(CheckpointError, match='notes.txt'):
        load_nowcaster(text)
    truncated = tmp_path / 'nino_truncated.pt'
    truncated.write_bytes((official_dir / 'nino_mlp_h32.pt').read_bytes()[:5000])
    with pytest.raises(CheckpointError, match='nino_truncated.pt'):
        load_nowcaster(truncated)


def test_shipped_checkpoints_load_and_are_listed_in_the_model_card():
    """Every nowcaster in checkpoints/ loads (its SHA-256 checked) and has a row in checkpoints/README.md."""
    from pathlib import Path

    from nino import NiNo
    from pipeline.tasks import MLP

    folder = Path(__file__).resolve().parents[1] / 'checkpoints'
    files = sorted(folder.glob('*.safetensors'))
    card = (folder / 'README.md').read_text()
    assert files
    for path in files:
        model = load_nowcaster(path)
        assert f'`{path.name}`' in card and f'## `{path.stem}`' in card
        assert sum(p.numel() for p in model.parameters()) > 0
    torch.manual_seed(0)
    net = MLP(64, [32, 32], 10)
    opt = NiNo(torch.optim.AdamW(net.parameters(), lr=1e-3), net, ckpt=folder / 'digits-mlp-h64.safetensors',
               period=60, max_train_steps=1000)
    x, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 10
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert opt.num_nowcasts == 1 and all(bool(torch.isfinite(p).all()) for p in net.parameters())
