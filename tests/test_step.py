"""`python -m nino.step`: the NiNo step on saved checkpoints, as in the paper's README loop."""

from __future__ import annotations

import os

import pytest
import torch
import transformers
from torch import nn

from nino.checkpoint import load_nowcaster
from nino.graph import family_of
from nino.nowcast import ModelGraphs
from nino.optimizer import k_schedule
from nino.step import GRAPH_CACHE, main

TOKENS = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))


def _llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        vocab_size=64))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, save=None) -> list[float]:
    losses = []
    for step in steps:
        opt.zero_grad()
        loss = model(input_ids=TOKENS, labels=TOKENS).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if save is not None and (step + 1) % 2 == 0:
            save(step + 1)
    return losses


def test_the_readme_loop_on_a_tiny_llama(tmp_path, official_dir):
    """Train 10 steps saving every 2 (period 10), step, resume training from the nowcast weights."""
    model = _llama()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    _train(model, opt, range(10), save=lambda s: model.save_pretrained(tmp_path / f'step_{s}'))
    saved = [transformers.LlamaForCausalLM.from_pretrained(tmp_path / f'step_{s}') for s in (2, 4, 6, 8, 10)]
    states = torch.stack([torch.cat([p.detach().flatten() for p in m.parameters()]) for m in saved], dim=1)

    args = [str(tmp_path / 'step_10'), '--out', str(tmp_path / 'step_10'), '--ckpt',
            str(official_dir / 'nino_no_posw.pt'), '--period', '10', '--max-train-steps', '40']
    assert main(args) == 0
    assert (tmp_path / GRAPH_CACHE).exists() and (tmp_path / 'step_10' / 'config.json').exists()

    resumed = transformers.LlamaForCausalLM.from_pretrained(tmp_path / 'step_10')
    got = torch.cat([p.detach().flatten() for p in resumed.parameters()])
    params = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    graphs = ModelGraphs.build(params, 6, 2, family_of(params))
    graphs.set_lpe(torch.load(tmp_path / GRAPH_CACHE, weights_only=True)['lpe'], 8)
    k = int(k_schedule(40, 40, 10)[0])
    expected = graphs.predict(load_nowcaster(official_dir / 'nino_no_posw.pt'), states, k)
    assert k == 40 and torch.equal(got, expected)
    assert float((got - states[:, -1]).abs().max()) > 4e-3

    opt = torch.optim.AdamW(resumed.parameters(), lr=2e-3)
    losses = _train(resumed, opt, range(10, 16))
    assert all(torch.isfinite(torch.tensor(losses)))

    cache_time = os.path.getmtime(tmp_path / GRAPH_CACHE)
    out = tmp_path / 'nowcast'
    assert main([args[0], '--out', str(out)] + args[3:] + ['--subgraph', '--edge-sample-ratio', '0.5',
                                                          '--chunk-size', '1000']) == 0
    assert os.path.getmtime(tmp_path / GRAPH_CACHE) > cache_time  # another graph: the cache was rebuilt
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / 'step_10').iterdir())


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_torch_save_files_keep_buffers_and_other_entries(tmp_path, official_dir):
    torch.manual_seed(0)
    net, x, y = _Net(), torch.randn(32, 8), torch.randint(0, 3, (32,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(1, 11):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if step % 2 == 0:
            torch.save({'model': net.state_dict(), 'completed_steps': step}, tmp_path / f'step_{step}.pt')
    before = torch.load(tmp_path / 'step_10.pt', weights_only=True)
    out = tmp_path / 'out' / 'step_10.pt'
    out.parent.mkdir()
    assert main([str(tmp_path / 'step_10.pt'), '--out', str(out), '--ckpt', str(official_dir / 'nino_mlp.pt'),
                 '--period', '10', '--max-train-steps', '20']) == 0
    after = torch.load(out, weights_only=True)
    assert after['completed_steps'] == 10
    for name in ('bn.running_mean', 'bn.running_var', 'bn.num_batches_tracked'):
        assert torch.equal(after['model'][name], before['model'][name])
    assert not torch.equal(after['model']['fc1.weight'], before['model']['fc1.weight'])
    net.load_state_dict(after['model'])  # the written file loads into the model


def test_missing_and_mismatched_checkpoints_are_named(tmp_path, official_dir, capsys):
    torch.manual_seed(0)
    net = _Net()
    for step in (2, 4, 8, 10):
        torch.save(net.state_dict(), tmp_path / f'step_{step}.pt')
    common = ['--out', str(tmp_path / 'o.pt'), '--ckpt', str(official_dir / 'nino_mlp.pt'), '--period', '10']
    assert main([str(tmp_path / 'step_10.pt')] + common) == 2
    assert f"missing checkpoints for the NiNo step: {tmp_path / 'step_6.pt'}" in capsys.readouterr().err

    state = net.state_dict()
    state['fc2.weight'] = torch.zeros(4, 16)
    torch.save(state, tmp_path / 'step_6.pt')
    assert main([str(tmp_path / 'step_10.pt')] + common) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'step_6.pt'}: parameter 'fc2.weight' has shape (4, 16), expected (3, 16)" in err
    assert not (tmp_path / 'o.pt').exists()

    assert main([str(tmp_path / 'last.pt')] + common) == 2
    assert 'must end in step_<N> or step_<N>.pt' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / 'step_10.pt')])  # --out and --ckpt are required
