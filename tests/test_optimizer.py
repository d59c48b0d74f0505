"""The NiNo optimizer wrapper: when it nowcasts, what it writes, and that it resumes exactly."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nino import NiNo, k_schedule, load_nowcaster
from nino.baselines import LinearExtrapolation
from nino.graph import UnsupportedLayerError, graph_for_module, laplacian_pe
from nino.scaling import scale_states, unscale_states
from pipeline.tasks import ConvNet
from tests.conftest import FarOff

PERIOD, STEPS, BATCH, LR = 10, 25, 32, 6e-3


def test_k_schedule_decays_from_40_to_1():
    assert k_schedule(40, 10000, 1000).tolist() == [40, 33, 26, 21, 16, 11, 8, 5, 3, 1]
    assert k_schedule(40, 500, 1000).tolist() == [40]


def _batch(data, step: int):
    x, y = data
    g = torch.Generator().manual_seed(1000 + step)
    idx = torch.randint(0, len(x), (BATCH,), generator=g)
    return x[idx], y[idx]


def _setup(nowcaster, seed: int = 0):
    torch.manual_seed(seed)
    model = ConvNet()
    opt = NiNo(torch.optim.AdamW(model.parameters(), lr=LR), model, ckpt=nowcaster,
               period=PERIOD, max_train_steps=STEPS)
    return model, opt


def _train(model, opt, data, start: int, stop: int, log: dict | None = None) -> list[float]:
    losses = []
    for step in range(start, stop):
        x, y = _batch(data, step)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        need_grads = getattr(opt, 'need_grads', True)  # a plain torch optimizer always needs them
        if log is not None:
            log.setdefault('need_grads', []).append(need_grads)
            if not need_grads:
                log.setdefault('states', []).append(torch.stack(opt._states + [opt._flat_params()], 1))
        if need_grads:
            loss.backward()
        opt.step()
        losses.append(loss.item())
        if log is not None and not log['need_grads'][-1]:
            log.setdefault('after', []).append(opt._flat_params())
    return losses


@pytest.fixture(scope='module')
def gnn(official_dir):
    return load_nowcaster(official_dir / 'nino_no_posw.pt')


def test_fm16_nowcasts_twice_and_writes_the_prediction(gnn, fashion_mnist):
    model, opt = _setup(gnn)
    log: dict = {}
    losses = _train(model, opt, fashion_mnist, 0, STEPS, log)
    assert opt.num_nowcasts == 2 and opt.num_rejected == 0
    assert [i + 1 for i, need in enumerate(log['need_grads']) if not need] == [10, 20]
    assert opt.k_schedule.tolist() == [40, 1]
    for states, after, k in zip(log['states'], log['after'], [40, 1]):
        g = graph_for_module(model)
        scaled, stats = scale_states(states, g.params)
        with torch.no_grad():
            pred = gnn(g.edge_features(scaled), g.edge_type, g.edge_index, laplacian_pe(g.edge_index, g.num_nodes),
                       g.pos_w, k=k)
        expected = unscale_states(g.to_vector(pred), g.params, stats)
        assert torch.equal(after, expected)
        assert not torch.equal(after, states[:, -1])
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5])


def test_state_dict_mid_period_resumes_identically(gnn, fashion_mnist):
    model, opt = _setup(gnn)
    full = _train(model, opt, fashion_mnist, 0, STEPS)
    final = [p.detach().clone() for p in model.parameters()]

    model_a, opt_a = _setup(gnn)
    first = _train(model_a, opt_a, fashion_mnist, 0, 13)
    assert len(opt_a._states) == 1  # saved between two recorded states of the second period
    buf = io.BytesIO()
    torch.save({'model': model_a.state_dict(), 'opt': opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    model_b, opt_b = _setup(gnn, seed=123)  # different init: everything must come from the save
    model_b.load_state_dict(saved['model'])
    opt_b.load_state_dict(saved['opt'])
    rest = _train(model_b, opt_b, fashion_mnist, 13, STEPS)
    assert first + rest == full
    assert opt_b.num_nowcasts == 2
    for p, q in zip(model_b.parameters(), final):
        assert torch.equal(p, q)


def test_states_and_graphs_live_on_the_edge_device(gnn, fashion_mnist):
    model, opt = _setup(gnn)
    torch.manual_seed(0)
    kept = NiNo(torch.optim.AdamW(copy.deepcopy(model).parameters(), lr=LR), model, ckpt=gnn, period=PERIOD,
                max_train_steps=STEPS, edge_device='cpu', chunk_size=500)
    assert kept.edge_device == torch.device('cpu') and kept.graphs.device == torch.device('cpu')
    assert kept.graphs.parts[0].graph.edge_index.device == kept.edge_device


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU: the nowcaster there, states on the CPU')
def test_the_nowcaster_on_the_gpu_with_states_and_edges_on_the_cpu(gnn, fashion_mnist):
    data = tuple(t.cuda() for t in fashion_mnist)
    out = {}
    for edge_device in ('cuda', 'cpu'):
        torch.manual_seed(0)
        model = ConvNet().cuda()
        opt = NiNo(torch.optim.AdamW(model.parameters(), lr=LR), model, ckpt=copy.deepcopy(gnn), period=PERIOD,
                   max_train_steps=STEPS, edge_device=edge_device, chunk_size=5000)
        _train(model, opt, data, 0, PERIOD + PERIOD // 2)
        assert opt.num_nowcasts == 1 and opt.nowcaster.device.type == 'cuda'
        assert opt._states and all(s.device.type == edge_device for s in opt._states)
        out[edge_device] = torch.cat([p.detach().cpu().flatten() for p in model.parameters()])
    torch.testing.assert_close(out['cpu'], out['cuda'], atol=1e-4, rtol=0)


def test_without_checkpoint_it_is_the_base_optimizer(fashion_mnist):
    model, opt = _setup(None)
    torch.manual_seed(0)
    ref = ConvNet()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR)
    assert _train(model, opt, fashion_mnist, 0, 12) == _train(ref, ref_opt, fashion_mnist, 0, 12)
    assert opt.need_grads


def test_non_finite_prediction_is_never_written(official_dir, fashion_mnist):
    broken = load_nowcaster(official_dir / 'nino_mlp.pt')
    with torch.no_grad():
        broken.mlp[-1].bias.fill_(float('nan'))
    model, opt = _setup(broken)
    torch.manual_seed(0)
    ref = ConvNet()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR)

    def train_always_backward(m, o):
        out = []
        for step in range(STEPS):
            x, y = _batch(fashion_mnist, step)
            o.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            o.step()
            out.append(loss.item())
        return out

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        losses = train_always_backward(model, opt)
    assert sum('NaN/Inf' in str(w.message) for w in caught) == 2
    assert opt.num_rejected == 2 and opt.num_nowcasts == 0
    assert losses == train_always_backward(ref, ref_opt)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gpt2_nowcast_runs_on_a_real_transformers_model(gnn):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=12, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    opt = NiNo(torch.optim.AdamW(model.parameters(), lr=1e-2), model, ckpt=gnn, period=5, max_train_steps=5)
    tokens = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    before = None
    for _ in range(5):
        opt.zero_grad()
        loss = model(tokens, labels=tokens).loss
        if opt.need_grads:
            loss.backward()
        else:
            before = opt._flat_params()
        opt.step()
    assert opt.num_nowcasts == 1
    assert not torch.equal(opt._flat_params(), before)


def test_kernel_larger_than_the_nowcaster_supports_is_named(gnn):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match=r"'0\.weight' has a 5x5 kernel"):
        NiNo(torch.optim.SGD(model.parameters(), lr=0.1), model, ckpt=gnn)


def test_load_state_dict_rejects_another_period(gnn):
    model, opt = _setup(gnn)
    other = NiNo(torch.optim.AdamW(model.parameters()), model, ckpt=gnn, period=20, max_train_steps=STEPS)
    with pytest.raises(ValueError, match='period=10'):
        other.load_state_dict(opt.state_dict())


def test_a_precomputed_lpe_is_used(gnn, fashion_mnist):
    torch.manual_seed(0)
    model = ConvNet()
    lpe = torch.randn(95, 8)
    opt = NiNo(torch.optim.AdamW(model.parameters(), lr=LR), model, ckpt=gnn, period=PERIOD, lpe=lpe)
    assert torch.equal(opt.graphs.lpe[0], lpe)
    with pytest.raises(ValueError, match=r'lpe must have shape \(95, 8\)'):
        NiNo(torch.optim.AdamW(model.parameters(), lr=LR), model, ckpt=gnn, lpe=torch.randn(10, 8))


def test_frozen_parameters_are_not_nowcast(gnn, fashion_mnist):
    """A frozen layer (not in the base optimizer) keeps its values through nowcasts; the graph
    still holds it, so the other parameters get the same prediction as with it trainable."""
    torch.manual_seed(0)
    model = ConvNet()
    frozen = [p for name, p in model.named_parameters() if name.startswith(model_first_layer(model))]
    for p in frozen:
        p.requires_grad_(False)
    before = [p.detach().clone() for p in frozen]
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = NiNo(torch.optim.AdamW(trainable, lr=LR), model, ckpt=gnn, period=PERIOD, max_train_steps=STEPS)
    log: dict = {}
    _train(model, opt, fashion_mnist, 0, STEPS, log)
    assert opt.num_nowcasts == 2
    for p, b in zip(frozen, before):
        assert torch.equal(p, b)
    moved = log['after'][0] - log['states'][0][:, -1]
    n_frozen = sum(p.numel() for p in frozen)
    assert moved[:n_frozen].abs().max() == 0 and moved[n_frozen:].abs().max() > 0


def model_first_layer(model: torch.nn.Module) -> str:
    """Name prefix of the model's first parameter's module (e.g. 'features.0.')."""
    first = next(iter(dict(model.named_parameters())))
    return first.rsplit('.', 1)[0] + '.'


def test_lr_schedulers_drive_the_wrapper(gnn, fashion_mnist):
    from transformers import get_linear_schedule_with_warmup
    model, opt = _setup(gnn)
    assert isinstance(opt, torch.optim.Optimizer)
    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    lrs = []
    for step in range(12):
        x, y = _batch(fashion_mnist, step)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if opt.need_grads:
            loss.backward()
        opt.step()
        step_lr.step()
        lrs.append(opt.base_opt.param_groups[0]['lr'])
    assert lrs[3] == LR and lrs[4] == LR / 2 and lrs[9] == LR / 4 and opt.num_nowcasts == 1
    model, opt = _setup(gnn)
    warmup = get_linear_schedule_with_warmup(opt, num_warmup_steps=4, num_training_steps=20)
    seen = []
    for _ in range(8):
        seen.append(opt.base_opt.param_groups[0]['lr'])
        opt.step()
        warmup.step()
    assert seen[:5] == pytest.approx([0, LR / 4, LR / 2, 3 * LR / 4, LR]) and seen[7] < LR


def _regression(seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = torch.sin(x @ torch.randn(8, 1))
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)), x, y


def _run(pairs, x, y, steps: int) -> None:
    for _ in range(steps):
        for model, opt in pairs:
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            if getattr(opt, 'need_grads', True):
                loss.backward()
            opt.step()


def test_the_guard_turns_down_a_bad_nowcast_and_the_base_optimizer_steps(caplog):
    model, x, y = _regression()
    alone = copy.deepcopy(model)
    calls = []

    def guard() -> float:
        calls.append(torch.is_grad_enabled())
        return F.mse_loss(model(x), y).item()

    opt = NiNo(torch.optim.SGD(model.parameters(), lr=0.05), model, ckpt=FarOff(seq_len=10), period=5,
               max_train_steps=10, guard=guard)
    assert opt.need_grads  # with a guard the base optimizer may take a nowcast's step
    with caplog.at_level('INFO', logger='nino.optimizer'):
        _run([(model, opt), (alone, torch.optim.SGD(alone.parameters(), lr=0.05))], x, y, 10)
    assert opt.num_nowcasts == 0 and opt.num_rejected == 2 and len(calls) == 2 * 4 and not any(calls)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), alone.parameters()))  # exactly Adam's path
    assert [(h['step'], h['accepted'], h['scale']) for h in opt.guard_history] == [(5, False, 0.0), (10, False, 0.0)]
    assert all(h['loss_after'] == h['loss_before'] for h in opt.guard_history)
    assert 'base optimizer steps' in caplog.text


def test_the_guard_writes_the_candidate_it_chose_not_the_whole_change():
    model, x, y = _regression(8)
    seen, scores = [], iter([1.0, 0.9, 0.5, 0.8])  # the current parameters, then scales 1, 0.5, 0.25: 0.5 wins

    def guard() -> float:
        seen.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
        return next(scores)

    opt = NiNo(torch.optim.SGD(model.parameters(), lr=0.05), model, ckpt=LinearExtrapolation(seq_len=10), period=5,
               max_train_steps=10, guard=guard, guard_scales=(1.0, 0.5, 0.25))
    _run([(model, opt)], x, y, 5)
    assert [(h['scale'], h['accepted']) for h in opt.guard_history] == [(0.5, True)] and opt.num_nowcasts == 1
    assert torch.equal(opt._flat_params(), seen[2]) and not torch.equal(seen[2], seen[1])
    assert torch.allclose(seen[2], torch.lerp(seen[0], seen[1], 0.5), atol=1e-6)


def test_the_guard_scores_shorter_horizons_and_writes_the_one_it_chose():
    """guard_horizons (1, 0.5): the predictions at k and k/2, each at scales 1, 0.5, 0.25; k/2 at half the
    change wins, which for a linear extrapolation is a quarter of the change to k."""
    model, x, y = _regression(8)
    seen, scores = [], iter([1.0, 0.9, 0.8, 0.85, 0.95, 0.5, 0.7])  # current; k x 3 scales; k/2 x 3 scales

    def guard() -> float:
        seen.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
        return next(scores)

    opt = NiNo(torch.optim.SGD(model.parameters(), lr=0.05), model, ckpt=LinearExtrapolation(seq_len=10), period=5,
               max_train_steps=10, guard=guard, guard_scales=(1.0, 0.5, 0.25), guard_horizons=(1.0, 0.5))
    _run([(model, opt)], x, y, 5)
    (record,) = opt.guard_history
    assert (record['k'], record['horizon'], record['scale'], record['accepted']) == (10, 5, 0.5, True)
    assert len(seen) == 7 and torch.equal(opt._flat_params(), seen[5])
    assert torch.allclose(seen[5], torch.lerp(seen[0], seen[1], 0.25), atol=1e-6)
    assert torch.allclose(seen[4], torch.lerp(seen[0], seen[1], 0.5), atol=1e-6)  # k/2 at scale 1
    for bad, message in (((1.0, 0.0), 'fractions in \\(0, 1\\]'), ((1.0, 1.5), 'fractions in \\(0, 1\\]')):
        with pytest.raises(ValueError, match=message):
            NiNo(torch.optim.SGD(model.parameters()), model, ckpt=LinearExtrapolation(), guard=guard,
                 guard_horizons=bad)
    with pytest.raises(ValueError, match='candidates of the immediate guard: they need a guard and guard_delay=0'):
        NiNo(torch.optim.SGD(model.parameters()), model, ckpt=LinearExtrapolation(), period=100, guard=guard,
             guard_delay=20, guard_horizons=(1.0, 0.5))


def test_the_guard_takes_the_best_candidate_and_its_record_survives_a_resume():
    model, x, y = _regression(1)
    opt = NiNo(torch.optim.SGD(model.parameters(), lr=0.02), model, ckpt=LinearExtrapolation(seq_len=10), period=5,
               max_train_steps=10, guard=lambda: F.mse_loss(model(x), y), guard_scales=(1.0, 0.5, 0.25))
    _run([(model, opt)], x, y, 5)
    (record,) = opt.guard_history
    assert record['accepted'] and record['scale'] in (1.0, 0.5, 0.25) and opt.num_nowcasts == 1
    assert record['loss_after'] < record['loss_before']
    with torch.no_grad():
        assert F.mse_loss(model(x), y).item() == pytest.approx(record['loss_after'], rel=1e-6)  # the best, written
    other = NiNo(torch.optim.SGD(model.parameters(), lr=0.02), model, ckpt=LinearExtrapolation(seq_len=10), period=5,
                 max_train_steps=10, guard=lambda: 0.0)
    other.load_state_dict(opt.state_dict())
    assert other.guard_history == opt.guard_history and other.num_nowcasts == 1
    with pytest.raises(ValueError, match='guard_scales must be positive'):
        NiNo(torch.optim.SGD(model.parameters()), model, ckpt=LinearExtrapolation(), guard=lambda: 0.0,
             guard_scales=(1.0, 0.0))


def test_upd_scale_and_k_power_are_the_papers_knobs():
    assert k_schedule(40, 10000, 1000, power=1.0).tolist() == [40, 36, 31, 27, 23, 18, 14, 10, 5, 1]
    model, x, y = _regression(2)
    half = copy.deepcopy(model)
    opts = [NiNo(torch.optim.SGD(m.parameters(), lr=0.02), m, ckpt=LinearExtrapolation(seq_len=10), period=5,
                 max_train_steps=10, upd_scale=s) for m, s in ((model, 1.0), (half, 0.5))]
    _run(list(zip((model, half), opts)), x, y, 4)
    before = opts[0]._flat_params()
    _run(list(zip((model, half), opts)), x, y, 1)
    assert torch.allclose(opts[1]._flat_params(), torch.lerp(before, opts[0]._flat_params(), 0.5), atol=1e-7)


def test_k_max_sets_the_first_horizon_of_the_decay():
    model, _, _ = _regression(2)
    opt = NiNo(torch.optim.SGD(model.parameters(), lr=0.02), model, ckpt=LinearExtrapolation(seq_len=10),
               period=5, max_train_steps=20, k_max=4)
    assert opt.k_schedule.tolist() == k_schedule(4, 20, 5).tolist() == [4, 3, 2, 1]
    for bad in (0, 11):
        with pytest.raises(ValueError, match='k_max must be a horizon from 1 to'):
            NiNo(torch.optim.SGD(model.parameters()), model, ckpt=LinearExtrapolation(seq_len=10), k_max=bad)


def test_a_delayed_guard_rolls_back_a_nowcast_that_did_not_pay_off_and_resumes_exactly():
    def make():
        model, x, y = _regression(3)
        opt = NiNo(torch.optim.Adam(model.parameters(), lr=0.01), model, ckpt=FarOff(seq_len=10), period=5,
                   max_train_steps=12, guard=lambda: F.mse_loss(model(x), y), guard_delay=3)
        return model, opt, x, y

    model, opt, x, y = make()
    _run([(model, opt)], x, y, 4)
    before = opt._flat_params()
    adam_state = copy.deepcopy(opt.base_opt.state_dict())
    assert not opt.need_grads  # the nowcast is taken for now: its gradients are not needed
    _run([(model, opt)], x, y, 1)  # step 5: the far-off nowcast is written...
    assert opt.num_nowcasts == 1 and not torch.equal(opt._flat_params(), before)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))  # ...and saved while awaiting its judgement
    _run([(model, opt)], x, y, 3)  # step 8 = 5 + 3: worse than before it, so rolled back
    assert torch.equal(opt._flat_params(), before) and opt.num_nowcasts == 0 and opt.num_rejected == 1
    assert str(opt.base_opt.state_dict()) == str(adam_state)
    assert [(h['step'], h['accepted']) for h in opt.guard_history] == [(5, False)]

    resumed, other, _, _ = make()
    resumed.load_state_dict(saved[0])
    other.load_state_dict(saved[1])
    _run([(resumed, other)], x, y, 3)
    assert torch.equal(other._flat_params(), before) and other.guard_history == opt.guard_history


def test_a_delayed_guard_keeps_a_nowcast_that_paid_off():
    model, x, y = _regression(4)
    opt = NiNo(torch.optim.SGD(model.parameters(), lr=0.02), model, ckpt=LinearExtrapolation(seq_len=10), period=5,
               max_train_steps=12, guard=lambda: F.mse_loss(model(x), y), guard_delay=3)
    _run([(model, opt)], x, y, 8)
    (record,) = opt.guard_history
    assert record['accepted'] and record['loss_after'] < record['loss_before'] and opt.num_nowcasts == 1


def test_a_delayed_guard_makes_no_nowcast_it_could_not_judge_before_the_end():
    model, x, y = _regression(5)
    opt = NiNo(torch.optim.SGD(model.parameters(), lr=0.02), model, ckpt=LinearExtrapolation(seq_len=10), period=5,
               max_train_steps=7, guard=lambda: F.mse_loss(model(x), y), guard_delay=3)
    _run([(model, opt)], x, y, 5)  # step 5 would nowcast, but 5 + 3 > 7 steps
    assert opt.num_nowcasts == 0 and opt.guard_history == [] and opt._states == []


def _run_closure(pairs, x, y, first: int, steps: int) -> None:
    """Steps `first`..`first + steps - 1` through step(closure), each on its own mini-batch of 64."""
    for step in range(first, first + steps):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(step))[:64]
        for model, opt in pairs:
            def closure(model=model, opt=opt, idx=idx):
                opt.zero_grad()
                loss = F.mse_loss(model(x[idx]), y[idx])
                loss.backward()
                return loss
            opt.step(closure)


def test_a_guard_branch_rolls_back_to_the_base_optimizers_own_steps_and_resumes_exactly():
    def make():
        model, x, y = _regression(3)
        opt = NiNo(torch.optim.Adam(model.parameters(), lr=0.01), model, ckpt=FarOff(seq_len=10), period=5,
                   max_train_steps=12, guard=lambda: F.mse_loss(model(x), y), guard_delay=3, guard_branch=True)
        return model, opt, x, y

    model, opt, x, y = make()
    alone = copy.deepcopy(model)
    adam = torch.optim.Adam(alone.parameters(), lr=0.01)
    flat = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()])  # noqa: E731
    _run_closure([(model, opt), (alone, adam)], x, y, 1, 5)  # step 5: the far-off nowcast is written...
    assert opt.num_nowcasts == 1 and not torch.allclose(flat(model), flat(alone))
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))  # ...and saved while its branch trains
    _run_closure([(model, opt), (alone, adam)], x, y, 6, 3)  # step 8: worse than the branch: switch to it
    assert opt.num_nowcasts == 0 and opt.num_rejected == 1
    assert torch.allclose(flat(model), flat(alone), atol=1e-7)  # Adam's 8 steps: none lost
    assert str(opt.base_opt.state_dict()) == str(adam.state_dict())
    (record,) = opt.guard_history
    assert not record['accepted'] and record['loss_after'] > record['loss_branch']
    assert record['loss_branch'] == pytest.approx(F.mse_loss(alone(x), y).item(), rel=1e-6)
    _run_closure([(model, opt), (alone, adam)], x, y, 9, 1)
    assert torch.allclose(flat(model), flat(alone), atol=1e-7)

    resumed, other, _, _ = make()
    resumed.load_state_dict(saved[0])
    other.load_state_dict(saved[1])
    _run_closure([(resumed, other)], x, y, 6, 4)
    assert torch.allclose(flat(resumed), flat(alone), atol=1e-7) and other.guard_history == opt.guard_history


def test_a_guard_branch_keeps_a_nowcast_that_beats_the_base_optimizers_own_steps():
    model, x, y = _regression(4)
    opt = NiNo(torch.optim.SGD(model.parameters(), lr=0.02), model, ckpt=LinearExtrapolation(seq_len=10), period=5,
               max_train_steps=12, guard=lambda: F.mse_loss(model(x), y), guard_delay=3, guard_branch=True)
    _run_closure([(model, opt)], x, y, 1, 8)
    (record,) = opt.guard_history
    assert record['accepted'] and record['loss_after'] < record['loss_branch'] < record['loss_before']
    assert opt.num_nowcasts == 1 and opt._pending is None


def test_a_guard_branch_needs_a_delay_and_a_closure():
    model, x, y = _regression(5)
    guard = lambda: F.mse_loss(model(x), y)  # noqa: E731
    with pytest.raises(ValueError, match='guard_branch needs a guard and a guard_delay of 1 or more'):
        NiNo(torch.optim.SGD(model.parameters()), model, ckpt=LinearExtrapolation(), guard=guard, guard_branch=True)
    with pytest.raises(ValueError, match=r'guard_delay \(5\) must be shorter than the period \(5\)'):
        NiNo(torch.optim.SGD(model.parameters()), model, ckpt=LinearExtrapolation(seq_len=10), period=5,
             guard=guard, guard_delay=5)
    opt = NiNo(torch.optim.SGD(model.parameters(), lr=0.02), model, ckpt=LinearExtrapolation(seq_len=10), period=5,
               max_train_steps=12, guard=guard, guard_delay=3, guard_branch=True)
    _run([(model, opt)], x, y, 4)  # no closure needed before the nowcast
    with pytest.raises(ValueError, match='step 5 needs step\\(closure\\)'):
        _run([(model, opt)], x, y, 1)


def test_record_initial_makes_the_first_nowcast_from_the_initial_state_on():
    model, x, y = _regression(6)
    alone = copy.deepcopy(model)
    opt = NiNo(torch.optim.SGD(model.parameters(), lr=0.05), model, ckpt=LinearExtrapolation(seq_len=10), period=10,
               max_train_steps=20, record_initial=True)
    sgd = torch.optim.SGD(alone.parameters(), lr=0.05)
    flat = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()])  # noqa: E731
    states = [flat(alone)]
    for step in range(1, 9):
        _run([(model, opt), (alone, sgd)], x, y, 1)
        if step % 2 == 0:
            states.append(flat(alone))
    assert opt.next_step_nowcasts and opt.current_k() == 10  # states after 0, 2, 4, 6, 8 updates: step 9 nowcasts
    assert torch.equal(opt._flat_params(), states[-1])
    _run([(model, opt)], x, y, 1)
    s = torch.stack(states, 1)
    t = torch.arange(5.0) - 2
    expected = s[:, -1] + 10 * (s * t).sum(1) / (t * t).sum()
    assert opt.num_nowcasts == 1 and torch.allclose(opt._flat_params(), expected, rtol=1e-4, atol=1e-5)
    paper = NiNo(torch.optim.SGD(model.parameters()), model, ckpt=LinearExtrapolation(seq_len=10), period=10,
                 max_train_steps=20)
    with pytest.raises(ValueError, match='record_initial=True, this wrapper has record_initial=False'):
        paper.load_state_dict(opt.state_dict())
    older = paper.state_dict()
    del older['nino']['record_initial']  # saved before the option existed: the paper's schedule
    paper.load_state_dict(older)
    with pytest.raises(ValueError, match='record_initial=False, this wrapper has record_initial=True'):
        opt.load_state_dict(older)
    _run([(model, opt)], x, y, 10)
    assert opt.num_nowcasts == 2  # the second by step 19 (the paper's wrapper makes it at step 20)
