"""This project's checkpoint format and the import of the published files."""

from __future__ import annotations

import json

import pytest
import torch

from nino.checkpoint import CheckpointError, import_official, load_nowcaster, official_config, save_nowcaster
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
    assert path.read_bytes()[:1] != b'\x80' and path.read_bytes()[:2] != b'PK'  # not a pickle
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
