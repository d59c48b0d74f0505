"""Task specs and configs: families, presets, and errors that name the bad field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jobs.collect import load_config
from pipeline.tasks import ConfigError, TaskSpec, build_model, load_tasks

REPO = Path(__file__).resolve().parents[1]


def _fm(**over):
    return {'preset': 'fm-16', 'dataset': {'root': 'data'}, **over}


def test_family_sampling_is_per_trajectory_and_reproducible():
    spec, = load_tasks({'tasks': [_fm(trajectories=50, lr=[0.001, 0.01], seed=7)]})
    lrs = [spec.trajectory_lr(i) for i in range(50)]
    assert all(0.001 <= lr <= 0.01 for lr in lrs) and len(set(lrs)) == 50
    assert lrs == [TaskSpec.from_dict(spec.to_dict()).trajectory_lr(i) for i in range(50)]
    assert [spec.trajectory_seed(i) for i in (0, 3)] == [7, 10]


def test_widths_make_one_group_each_with_scaled_networks():
    specs = load_tasks({'tasks': [_fm(widths=[1, 2])]})
    assert [s.name for s in specs] == ['fm-16', 'fm-16-w2']
    assert specs[1].arch['channels'] == [32, 64, 64]
    sizes = [sum(p.numel() for p in build_model(s.arch).parameters()) for s in specs]
    assert sizes[0] == 14378 and sizes[1] > sizes[0]


def test_presets_cover_the_paper_tasks():
    for preset in ('fm-16', 'fm-32', 'c10-16', 'c10-32', 'c100-32', 'lm-3-24', 'lm-2-32', 'llama-2-32', 'llama-3-64',
                   'digits-mlp', 'mnist1d-mlp'):
        spec, = load_tasks({'tasks': [{'preset': preset, 'dataset': {'root': 'x', 'path': 'y'}}]})
        build_model(spec.arch)
    fm, = load_tasks({'tasks': [_fm()]})
    assert fm.lr == (0.006, 0.006) and fm.record_every == 4


@pytest.mark.parametrize('entry, field', [
    (_fm(stpes=10), 'stpes'),
    (_fm(steps='ten'), "'steps'"),
    (_fm(steps=0), "'steps'"),
    (_fm(lr=[0.01, 0.001]), "'lr'"),
    (_fm(eval_every=10), "'eval_every'"),
    (_fm(optimizer='lion'), "'optimizer'"),
    (_fm(widths=[]), "'widths'"),
    ({'preset': 'fm-99'}, "'preset'"),
    ({'name': 'x', 'dataset': {'name': 'digits'}}, "'arch'"),
    (_fm(nowcast={'ckpt': 'n.safetensors'}), "'nowcast'"),
    (_fm(nowcast={'ckpt': 'n.safetensors', 'period': 0}), "'nowcast.period'"),
    (_fm(nowcast={'ckpt': '', 'period': 60}), "'nowcast.ckpt'"),
    (_fm(nowcast={'ckpt': 'n.safetensors', 'period': 60, 'sha256': 'abc'}), "'nowcast.sha256'"),
    (_fm(nowcast={'ckpt': 'n.safetensors', 'period': 60, 'every': 2}), "'nowcast'"),
])
def test_malformed_task_names_the_field(entry, field):
    with pytest.raises(ConfigError, match=field):
        load_tasks({'tasks': [entry]})


def test_duplicate_task_names_are_rejected():
    with pytest.raises(ConfigError, match='fm-16'):
        load_tasks({'tasks': [_fm(), _fm()]})


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('tasks: [\n')
    with pytest.raises(ConfigError, match='bad.yaml: not valid YAML'):
        load_config(bad)
    bad.write_text('tasks:\n  - preset: fm-16\n    batch_size: -1\n')
    with pytest.raises(ConfigError, match="bad.yaml: .*'batch_size'"):
        load_config(bad)
    with pytest.raises(ConfigError, match='missing.yaml'):
        load_config(tmp_path / 'missing.yaml')
    bad.write_text('storee: runs/x\ntasks:\n  - preset: fm-16\n')
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown top-level field\(s\) \['storee'\]"):
        load_config(bad)


def test_relative_dataset_and_tokenizer_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    from pipeline.tasks import with_absolute_paths
    monkeypatch.chdir(tmp_path)
    entry = {'preset': 'lm-3-24', 'dataset': {'path': 'data/input.txt', 'tokenizer': 'tok'}}
    spec = with_absolute_paths(load_tasks({'tasks': [entry]})[0])
    assert spec.dataset['path'] == str(tmp_path / 'data' / 'input.txt')
    assert spec.dataset['tokenizer'] == str(tmp_path / 'tok')
    for name in ('bytes', 'gpt2'):
        entry['dataset']['tokenizer'] = name
        assert with_absolute_paths(load_tasks({'tasks': [entry]})[0]).dataset['tokenizer'] == name


def test_trajectories_recorded_with_a_nowcaster_hold_its_nowcasts(monkeypatch):
    from pipeline.record import record_trajectory
    from pipeline.tasks import with_absolute_paths
    monkeypatch.chdir(REPO)
    entry = {'preset': 'digits-mlp', 'steps': 120, 'eval_every': 40, 'seed': 3}
    plain, = load_tasks({'tasks': [entry]})
    nowcast = {'ckpt': 'checkpoints/digits-mlp-h64.safetensors', 'period': 60}
    spec = with_absolute_paths(load_tasks({'tasks': [{**entry, 'nowcast': nowcast}]})[0])
    assert spec.nowcast == {'ckpt': str(REPO / nowcast['ckpt']), 'period': 60}
    assert 'nowcast' not in plain.to_dict() and TaskSpec.from_dict(spec.to_dict()) == spec
    a, b = record_trajectory(plain, 0), record_trajectory(spec, 0)
    step = list(a.steps).index(60)  # the first nowcast comes after optimizer step 60
    assert np.array_equal(a.params[:step], b.params[:step])
    adam_step = np.abs(a.params[step].astype(np.float32) - a.params[step - 1]).mean()
    jump = np.abs(b.params[step].astype(np.float32) - a.params[step]).mean()
    assert jump > 5 * adam_step  # 20 states ahead, not one Adam step


def test_a_nowcaster_that_cannot_run_is_named_before_any_work(tmp_path):
    cfg = tmp_path / 'c.yaml'
    ckpt = REPO / 'checkpoints' / 'digits-mlp-h64.safetensors'
    for nowcast, message in [({'ckpt': str(tmp_path / 'missing.safetensors'), 'period': 60}, 'missing.safetensors'),
                             ({'ckpt': str(ckpt), 'period': 62}, r'period \(62\) must be a positive multiple of ctx')]:
        cfg.write_text(yaml.safe_dump({'tasks': [{'preset': 'digits-mlp', 'nowcast': nowcast}]}))
        with pytest.raises(ConfigError, match=f"c.yaml: task 'digits-mlp': field 'nowcast': .*{message}"):
            load_config(cfg)


def test_a_nowcast_collection_is_named_by_its_checkpoint_bytes_not_its_path(tmp_path):
    """A store compares a nowcaster by SHA-256: the same file elsewhere resumes, another file is refused,
    and a checkpoint replaced under a running collection is caught where the trajectory is recorded."""
    import shutil

    from nino.checkpoint import file_sha256, load_nowcaster, save_nowcaster
    from nino.graph import param_shapes
    from pipeline.record import METRICS, with_nowcaster
    from pipeline.store import StoreError, TrajectoryStore
    shipped = REPO / 'checkpoints' / 'digits-mlp-h64.safetensors'
    specs = {}
    for name in ('a', 'b'):
        (tmp_path / name).mkdir()
        shutil.copy(shipped, tmp_path / name / 'nc.safetensors')
        cfg = tmp_path / f'{name}.yaml'
        entry = {'preset': 'digits-mlp', 'nowcast': {'ckpt': str(tmp_path / name / 'nc.safetensors'), 'period': 60}}
        cfg.write_text(yaml.safe_dump({'tasks': [entry]}))
        specs[name], = load_config(cfg)[1]
    assert specs['a'].nowcast['sha256'] == specs['b'].nowcast['sha256'] == file_sha256(shipped)
    store = TrajectoryStore(tmp_path / 's')
    layout = param_shapes(build_model(specs['a'].arch))
    store.ensure_group(specs['a'], layout, list(METRICS))
    assert store.ensure_group(specs['b'], layout, list(METRICS)).spec == specs['a']  # moved, same bytes

    other = load_nowcaster(shipped)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    save_nowcaster(other, tmp_path / 'b' / 'nc.safetensors')
    changed, = load_config(tmp_path / 'b.yaml')[1]
    with pytest.raises(StoreError, match="'digits-mlp' exists with another spec .*nowcast: stored"):
        store.ensure_group(changed, layout, list(METRICS))
    model = build_model(specs['b'].arch)
    with pytest.raises(ValueError, match=r"nc.safetensors: sha256 .* differs from the task's nowcast.sha256"):
        with_nowcaster(specs['b'], model, torch.optim.Adam(model.parameters()))
    entry['nowcast']['sha256'] = specs['a'].nowcast['sha256']  # pinned in the config: checked up front
    (tmp_path / 'b.yaml').write_text(yaml.safe_dump({'tasks': [entry]}))
    with pytest.raises(ConfigError, match="b.yaml: task 'digits-mlp': field 'nowcast': .*differs"):
        load_config(tmp_path / 'b.yaml')


def test_a_tokenizer_larger_than_the_model_vocabulary_is_named_before_any_work(tmp_path, bpe_folder):
    from jobs.evaluate import load_eval_config
    from tests.conftest import TEXT
    config = tmp_path / 'lm.yaml'
    entry = {'preset': 'lm-3-24', 'dataset': {'path': str(TEXT), 'tokenizer': str(bpe_folder)},
             'target': {'metric': 'val_ppl', 'value': 9}}
    config.write_text(yaml.safe_dump({'tasks': [entry]}))
    message = r"lm.yaml: task 'lm-3-24': tokenizer '.*' has 300 tokens but the model's arch.vocab_size is 256"
    for loader in (load_config, load_eval_config):
        with pytest.raises(ConfigError, match=message):
            loader(config)
    entry['arch'] = {'vocab_size': 300}
    config.write_text(yaml.safe_dump({'tasks': [entry]}))
    assert load_config(config)[1][0].arch['vocab_size'] == 300
    entry['dataset']['tokenizer'] = str(tmp_path / 'no-such-bpe')
    config.write_text(yaml.safe_dump({'tasks': [entry]}))
    with pytest.raises(ConfigError, match=r"lm.yaml: task 'lm-3-24': .*no-such-bpe lacks vocab.json and merges.txt"):
        load_config(config)


def test_yaml_exponent_floats_are_accepted_in_collect_configs(tmp_path):
    """PyYAML reads `lr: 3e-3` as a string; collection configs accept it as training configs do."""
    config = tmp_path / 'c.yaml'
    config.write_text('store: s\ntasks:\n  - preset: digits-mlp\n    lr: 3e-3\n    weight_decay: 1e-4\n'
                      '  - preset: digits-mlp\n    name: ranged\n    lr: [1e-3, 3e-3]\n')
    _, specs = load_config(config)
    assert specs[0].lr == (3e-3, 3e-3) and specs[0].weight_decay == 1e-4 and specs[1].lr == (1e-3, 3e-3)
    config.write_text('store: s\ntasks:\n  - preset: digits-mlp\n    lr: fast\n')
    with pytest.raises(ConfigError, match="field 'lr' must be a positive number"):
        load_config(config)


def test_llama_tasks_record_and_load_with_grouped_query_attention(tmp_path):
    from nino.graph import build_graph
    from pipeline.loader import WindowConfig, WindowStream
    from pipeline.store import TrajectoryStore
    from tests.conftest import TEXT, windows_of, write_store

    spec = load_tasks({'tasks': [{'preset': 'llama-2-32', 'dataset': {'path': 'x'}}]})[0]
    model = build_model(spec.arch)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert model.config.tie_word_embeddings and 'lm_head.weight' not in dict(model.named_parameters())
    wide = load_tasks({'tasks': [{'preset': 'llama-2-32', 'widths': [2], 'dataset': {'path': 'x'}}]})[0]
    assert wide.arch['n_embd'] == 64

    store = write_store(tmp_path / 'store', [{'preset': 'llama-2-32', 'dataset': {'path': str(TEXT), 'context': 32},
                                              'steps': 48, 'record_every': 2, 'eval_every': 48, 'batch_size': 8}])
    group = TrajectoryStore(store, mode='r').group('llama-2-32')
    assert group.layout[0] == ('model.embed_tokens.weight', (256, 32))
    cfg = WindowConfig(step=4, seq_len=4, samples_per_traj=1, batch_size=1, wte_size=None)
    (g,) = windows_of(WindowStream(str(store), cfg, seed=0).batch(0))
    expected = build_graph(group.layout, num_heads=4, num_key_value_heads=2)
    assert torch.equal(g.edge_index, expected.edge_index) and torch.equal(g.edge_type, expected.edge_type)


def test_a_new_architecture_is_one_module(monkeypatch):
    """Everything that depends on the family goes through its `Architecture`: specs, widths, models, metrics."""
    from torch import nn

    from metatrain.evaluation import metric_of
    from pipeline.tasks import Architecture, arch, register

    class Toy(Architecture):
        type = 'toy'
        required = ('width',)

        def build(self, a):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, a['width']), nn.ReLU(), nn.Linear(a['width'], 10))

        def scale_width(self, a, mult):
            return {**a, 'width': round(a['width'] * mult)}

    monkeypatch.setattr(arch, '_REGISTRY', dict(arch._REGISTRY))
    register(Toy())
    specs = load_tasks({'tasks': [{'name': 'toy', 'arch': {'type': 'toy', 'width': 8}, 'dataset': {'name': 'digits'},
                                   'widths': [1, 2]}]})
    assert [s.arch['width'] for s in specs] == [8, 16]
    assert sum(p.numel() for p in build_model(specs[1].arch).parameters()) == 64 * 16 + 16 + 16 * 10 + 10
    assert metric_of(specs[0]) == 'val_acc'
    with pytest.raises(ConfigError, match=r"field 'arch': arch of type 'toy' needs field 'width'"):
        load_tasks({'tasks': [{'name': 't', 'arch': {'type': 'toy'}, 'dataset': {'name': 'digits'}}]})
    with pytest.raises(ConfigError, match=r"unknown arch type 'resnet' \(known: convnet, gpt2, llama, mlp, toy\)"):
        load_tasks({'tasks': [{'name': 't', 'arch': {'type': 'resnet'}, 'dataset': {'name': 'digits'}}]})
