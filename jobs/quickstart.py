"""The end-to-end quickstart: `python -m jobs.quickstart` (what `make quickstart` runs).

On a local Ray cluster, with data that ships with scikit-learn (no download):
1. collect 32 trajectories of small MLPs on 8x8 digits into runs/quickstart/store;
2. meta-train a small NiNo on them (bf16 autocast, checkpoints) into runs/quickstart/nowcaster;
3. evaluate it, and the nowcasters this project ships for this task (`checkpoints/digits-mlp-h64`,
   the same recipe, and `checkpoints/digits-mlp-nino-ft`, the paper's nowcaster fine-tuned on such
   trajectories), against Adam and linear extrapolation on held-out seeds and a held-out width,
   alone and guarded (`nino.NiNo(guard=..., guard_delay=20, guard_branch=True)`: Adam also trains
   the parameters from before each nowcast for 20 steps, and the run switches to that branch when
   the nowcast's loss on 4 training batches is not lower than the branch's), each also with its
   states recorded from the initial one on (`record_initial=True`, nowcasts 11 steps sooner),
   beside a control (`adam+order1`: Adam with its batches in another order, the noise every
   "end >= Adam" count sits in), print the table and write the plots to runs/quickstart/eval.
Every stage resumes: a rerun skips finished trajectories, training steps and evaluation runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ray

from metatrain.training import TrainConfig, train
from pipeline.tasks import read_config_file
from pipeline.watchdog import init_ray

from .collect import collect
from .evaluate import evaluate

CONFIGS = Path(__file__).resolve().parent / 'configs'
SHIPPED = [Path(__file__).resolve().parents[1] / 'checkpoints' / f'{name}.safetensors'
           for name in ('digits-mlp-h64', 'digits-mlp-nino-ft')]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m jobs.quickstart', description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='runs/quickstart', help='where the store, nowcaster and results go')
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.time()
    init_ray(log_to_driver=False)
    try:
        print('== 1/3 collecting trajectories (digits MLP family) ==', flush=True)
        print(collect(CONFIGS / 'quickstart-collect.yaml', store_url=str(out / 'store')))

        print('\n== 2/3 meta-training the nowcaster ==', flush=True)
        values = read_config_file(CONFIGS / 'quickstart-train.yaml')
        values.update(store=str(out / 'store'), run_dir=str(out / 'nowcaster'))
        summary = train(TrainConfig.from_dict(values), resume='auto')
        print(f"nowcaster: step {summary['step']}, held-out validation L1 {summary['val_l1']:.4f} "
              f"(no-change prediction: {summary['val_l1_no_change']:.4f})")

        print('\n== 3/3 evaluating against Adam (held-out seeds and width) ==', flush=True)
        nowcasters = [str(out / 'nowcaster' / 'nowcaster.safetensors')] + [str(p) for p in SHIPPED if p.is_file()]
        _, table = evaluate(CONFIGS / 'quickstart-eval.yaml', out / 'eval', nowcasters, guard=4, guard_delay=20,
                            guard_branch=True, record_initial=True, reorder=1)
    finally:
        ray.shutdown()
    print('\n' + table)
    print(f'\nplots: {out / "eval" / "curves_digits-mlp.png"}, {out / "eval" / "speedup.png"}')
    print(f'quickstart finished in {time.time() - start:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
