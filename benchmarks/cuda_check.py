"""The CUDA check, as one short script for a lent GPU: meta-training under fp16 autocast with the grad
scaler beside fp32 and bf16, and a nowcast on the GPU against the same nowcast on the CPU.

It records a small digits store itself (scikit-learn's bundled images, no download), so the GPU machine
needs only this checkout and the wheels of the store's packages; `docs/cuda-check.md` gives the whole
procedure. Without a GPU it runs the CPU half (fp32, bf16 and fp16 meta-training on the CPU, the CPU
nowcast), which is how the script itself is checked on a CPU machine.

    python -m benchmarks.cuda_check --out runs/cuda-check [--steps 200] [--trajectories 8]

Prints one table per part and writes them to OUT/cuda_check.md.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
import yaml

from metatrain.training import SCALER_SKIP, TrainConfig, train
from nino import NiNo
from pipeline.data import load_dataset
from pipeline.record_here import record_store
from pipeline.tasks import build_model, load_tasks

ROOT = Path(__file__).resolve().parents[1]
NOWCASTER = ROOT / 'checkpoints' / 'digits-mlp-h64.safetensors'
PERIOD = 60  # the quickstart's: one nowcast after 60 Adam steps


def meta_train(store: Path, out: Path, amp: str, device: str, steps: int) -> dict:
    """`steps` of the quickstart's meta-training under `amp`: time per step after the first ten, the mean
    loss of the last 20 steps, held-out L1, how many steps were skipped as non-finite and how many updates
    the fp16 grad scaler skipped."""
    cfg = yaml.safe_load((ROOT / 'jobs' / 'configs' / 'quickstart-train.yaml').read_text())
    cfg.update(store=str(store), run_dir=str(out / f'train-{amp}'), steps=steps, amp=amp, device=device,
               holdout=2, val_every=0, ckpt_every=steps)
    summary = train(TrainConfig.from_dict(cfg), progress=False)
    with open(out / f'train-{amp}' / 'log.csv') as f:  # seconds since the loop began, per step
        steps = [r for r in csv.DictReader(f) if not r['event'] or r['event'].startswith(SCALER_SKIP)]
    seconds = [float(r['seconds']) for r in steps]
    warm = min(10, len(seconds) - 1)  # the first steps include the first batches' reads and warm-up
    return dict(amp=amp, device=device, steps=summary['step'],
                ms_per_step=1000 * (seconds[-1] - seconds[warm]) / max(len(seconds) - 1 - warm, 1),
                last_loss=sum(summary['losses'][-20:]) / len(summary['losses'][-20:]),
                val_l1=summary['val_l1'], no_change=summary['val_l1_no_change'],
                nonfinite=summary['nonfinite_events'], scaler_skips=sum(bool(r['event']) for r in steps))


def nowcast_run(device: str, amp: bool, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Adam on the digits MLP for one period, then NiNo's nowcast on `device`: the parameters after it
    (on the CPU) and the seconds the nowcast step took."""
    spec = load_tasks({'tasks': [{'preset': 'digits-mlp'}]})[0]
    data = load_dataset(spec.dataset)
    torch.manual_seed(seed)
    model = build_model(spec.arch).to(device)
    opt = NiNo(torch.optim.Adam(model.parameters(), lr=1e-3), model, ckpt=str(NOWCASTER), period=PERIOD,
               max_train_steps=1000, amp=amp)
    gen = torch.Generator().manual_seed(seed)
    seconds = float('nan')
    for _ in range(PERIOD + 1):
        x, y = (t.to(device) for t in data.train_batch(spec.batch_size, gen))
        if opt.need_grads:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        nowcasts = opt.next_step_nowcasts
        if device == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.step()
        if device == 'cuda':
            torch.cuda.synchronize()
        if nowcasts:
            seconds = time.perf_counter() - start
    assert opt.num_nowcasts == 1, f'expected one nowcast after {PERIOD} steps, got {opt.num_nowcasts}'
    return torch.cat([p.detach().cpu().flatten() for p in model.parameters()]), seconds


def table(rows: list[dict]) -> str:
    """Rows of equal keys as a markdown table (floats to 4 significant digits)."""
    def cell(v: object) -> str:
        return f'{v:.4g}' if isinstance(v, float) else str(v)
    lines = ['| ' + ' | '.join(rows[0]) + ' |', '|' + '---|' * len(rows[0])]
    return '\n'.join(lines + ['| ' + ' | '.join(cell(v) for v in r.values()) + ' |' for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--steps', type=int, default=200, help='meta-training steps per precision')
    parser.add_argument('--trajectories', type=int, default=8, help='digits trajectories to record')
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = 'cuda' if cuda else 'cpu'
    args.out.mkdir(parents=True, exist_ok=True)
    print(f'torch {torch.__version__}, device {torch.cuda.get_device_name() if cuda else "cpu"}', flush=True)

    start = time.perf_counter()
    collect = yaml.safe_load((ROOT / 'jobs' / 'configs' / 'quickstart-collect.yaml').read_text())
    store = record_store(args.out / 'store', [{**collect['tasks'][0], 'trajectories': args.trajectories}])
    print(f'recorded {args.trajectories} digits trajectories in {time.perf_counter() - start:.1f} s', flush=True)

    trained = [meta_train(store, args.out, amp, device, args.steps)
               for amp in ('none', 'bf16', 'fp16')]
    part1 = table(trained)
    print(part1, flush=True)

    reference, _ = nowcast_run('cpu', amp=False)
    rows = []
    for dev in ('cpu', 'cuda') if cuda else ('cpu',):
        for amp in (False, True):
            got, seconds = nowcast_run(dev, amp)
            rows.append(dict(device=dev, autocast='bf16' if amp else 'none', nowcast_seconds=seconds,
                             max_abs_diff_vs_cpu_fp32=float((got - reference).abs().max())))
    part2 = table(rows)
    print(part2, flush=True)
    (args.out / 'cuda_check.md').write_text(f'## Meta-training, {args.steps} steps\n\n{part1}\n\n'
                                            f'## One nowcast of digits-mlp-h64 after {PERIOD} Adam steps\n\n'
                                            f'{part2}\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
