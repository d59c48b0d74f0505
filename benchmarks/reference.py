"""Run the paper's reference code (a checkout given with `--reference DIR`) on this machine's data.

Measurement only: nothing of the reference goes into the project. Three stand-ins make its code
importable and runnable offline on a subset of the published files:
- `torchvision` has no CPU build here; its `utils` imports it but the loader and the model do
  not use it, so an empty module stands in;
- its GPT-2 config comes from `AutoConfig.from_pretrained('gpt2')`, answered with transformers'
  `GPT2Config` defaults (vocabulary 50,257, 1,024 positions: the published layout);
- it opens the published files with their full shapes (300 x 2,688 states for fm-16), so each
  file's memmap shape is set to the trajectories actually present before the first read.
Files reach it through a hub cache folder laid out as `huggingface_hub` reads it offline
(`tests.fake_hub.fake_hub_cache`, linking the files).
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np

#: The reference's hard-coded (n_traj, n_states) per task.
FULL_SHAPES = {'fm-16': (300, 2688), 'lm1b-3-24': (200, 124)}


def import_reference(checkout: Path) -> dict[str, object]:
    """The reference's dataset, collate function and model classes."""
    import transformers  # first: it checks whether torchvision is installed, which the stand-in is not
    from transformers import GPT2Config
    sys.modules.setdefault('torchvision', types.ModuleType('torchvision'))

    original = transformers.AutoConfig.from_pretrained

    def from_pretrained(name, *args, **kwargs):
        return GPT2Config(**kwargs) if name == 'gpt2' else original(name, *args, **kwargs)

    transformers.AutoConfig.from_pretrained = from_pretrained
    os.environ.setdefault('HF_HOME', str(checkout))  # read as a default argument at import
    sys.path.insert(0, str(checkout))
    from dataset.dataset import SGDDataset, collate_graphs_fn
    from optim import NiNoModel
    return dict(SGDDataset=SGDDataset, collate=collate_graphs_fn, NiNoModel=NiNoModel)


def full_metrics_file(path: Path, task: str, n_metrics: int) -> Path:
    """A zero metrics file of the reference's full shape (it reads the final metrics at start-up)."""
    n_traj, n_states = FULL_SHAPES[task]
    if not path.exists() or path.stat().st_size != n_traj * n_states * n_metrics * 2:
        np.zeros((n_traj, n_states, n_metrics), np.float16).tofile(path)
    return path


def reference_dataset(ref: dict, cache: Path, task: str, files: dict[str, tuple[Path, int, int]], **kwargs):
    """The reference `SGDDataset` for one task over files {name: (path, n_traj, n_states)}."""
    os.environ['HF_HUB_OFFLINE'] = '1'
    dset = ref['SGDDataset'](root=str(cache), tasks=(task,), verbose=0, **kwargs)
    parts = dset.data[task]
    for i, (_, n_traj, n_states) in enumerate(files.values()):
        path, shape = parts[i]
        parts[i] = (path, (n_traj, n_states, shape[2]))
    return dset

