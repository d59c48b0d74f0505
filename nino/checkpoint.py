"""Nowcaster checkpoints: this project's format and import of the paper's published files.

This project's format is a safetensors file (weights only, so loading never runs pickled code)
whose metadata holds `format`, `version` and the `NiNoConfig` as JSON. The published
`nino_no_posw.pt`, `nino_mlp.pt` and `nino_mlp_h32.pt` are read with `torch.load(weights_only=True)`
and their weights renamed through an explicit key map.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .model import NiNoConfig, Nowcaster, build_nowcaster

FORMAT = 'nino-nowcaster'
VERSION = 1

#: The reference constructor's defaults; a published file's `model_args` override them.
OFFICIAL_DEFAULTS = dict(ctx=5, hid=128, layers=3, gnn=True, dms=True, max_feat_size=9, input_layer='linear',
                         act_name='silu', residual=True, max_seq_len=40, improved_graph=True,
                         wte_pos_enc=True, vocab_size=50257, edge_types=15, lpe=8, chunk_size=10**5,
                         final_edge_update=False)
#: Reference arguments this project implements only with the value given here.
OFFICIAL_FIXED = dict(dms=True, input_layer='linear', act_name='silu', residual=True, improved_graph=True,
                      final_edge_update=False)
_OFFICIAL_RENAMED = dict(max_seq_len='seq_len')

_LINEAR = ('weight', 'bias')
_GNN_KEYS = [  # (official pattern, ours); {i} is a message-passing layer index
    ('layer_embed.weight', 'edge_type_embed.weight'),
    ('wte_pos_enc_layer.weight', 'word_embed.weight'),
    *[(f'node_proj.fc.0.{p}', f'node_proj.{p}') for p in _LINEAR],
    *[(f'edge_proj.fc.0.{p}', f'edge_proj.{p}') for p in _LINEAR],
    *[(f'edge_out.fc.{j}.{p}', f'head.{j}.{p}') for j in (0, 2) for p in _LINEAR],
    *[(f'gnn.convs.{{i}}.{a}.{p}', f'layers.{{i}}.conv.{b}.{p}') for a, b in
      [('pre_nns.0.0', 'message'), ('edge_encoder', 'modulation'), ('post_nns.0.0', 'update'), ('lin', 'out')]
      for p in _LINEAR],
    *[(f'gnn.edge_update.{{i}}.{a}.{p}', f'layers.{{i}}.edge_update.{b}.{p}') for a, b in
      [('lin_e', 'edge_in'), ('lin_s', 'src'), ('lin_t', 'dst'), ('lin1', 'edge_out')] for p in _LINEAR],
]
_MLP_KEYS = [
    ('layer_embed.weight', 'edge_type_embed.weight'),
    *[(f'edge_proj.fc.0.{p}', f'edge_proj.{p}') for p in _LINEAR],
    *[(f'edge_mlp.fc.{j}.{p}', f'mlp.{j}.{p}') for j in (0, 2, 4, 6) for p in _LINEAR],
]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the nowcaster; the message names the file and keys."""


def save_nowcaster(model: Nowcaster, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a nowcaster in this project's format (safetensors + JSON config)."""
    meta = {'format': FORMAT, 'version': str(VERSION), 'config': json.dumps(model.config.to_dict())}
    meta.update(metadata or {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=meta)


def load_nowcaster(path: str | Path, device: str | torch.device = 'cpu') -> Nowcaster:
    """Load a nowcaster from this project's format or a published reference `.pt` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no nowcaster checkpoint at {path}')
    with open(path, 'rb') as f:
        head = f.read(16)
    if head[:2] == b'PK' or head[:1] == b'\x80':  # torch zip archive or legacy pickle
        return import_official(path).to(device)
    with safe_open(str(path), framework='pt') as f:
        meta = f.metadata() or {}
        if meta.get('format') != FORMAT:
            raise CheckpointError(f'{path}: not a nowcaster checkpoint (metadata format={meta.get("format")!r})')
        if int(meta.get('version', -1)) > VERSION:
            raise CheckpointError(f'{path}: format version {meta["version"]} is newer than supported ({VERSION})')
        state = {k: f.get_tensor(k) for k in f.keys()}
    try:
        config = NiNoConfig.from_dict(json.loads(meta['config']))
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f'{path}: bad config in metadata: {err}') from err
    model = build_nowcaster(config)
    load_strict(model, state, str(path))
    return model.to(device).eval()


def official_config(model_args: dict, source: str = 'checkpoint') -> NiNoConfig:
    """This project's config for a reference checkpoint's `model_args`."""
    args = dict(OFFICIAL_DEFAULTS, **model_args)
    for name, value in OFFICIAL_FIXED.items():
        if args.pop(name) != value:
            raise CheckpointError(f'{source}: model_args {name}={model_args[name]!r} is not supported '
                                  f'(only {value!r})')
    args['gnn'] = args['gnn'] not in (False, None, 'None', 'none')
    for old, new in _OFFICIAL_RENAMED.items():
        args[new] = args.pop(old)
    try:
        return NiNoConfig.from_dict(args)
    except ValueError as err:
        raise CheckpointError(f'{source}: {err}') from err


def import_official(path: str | Path) -> Nowcaster:
    """Load a published reference checkpoint (`{'state_dict', 'model_args'}` or a bare state dict)."""
    path = Path(path)
    raw = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(raw, dict):
        raise CheckpointError(f'{path}: expected a dict, got {type(raw).__name__}')
    state = raw.get('state_dict', raw)
    config = official_config(raw.get('model_args', {}), str(path))
    model = build_nowcaster(config)
    load_strict(model, rename_official(state, config), str(path))
    return model.eval()


def rename_official(state: dict[str, Tensor], config: NiNoConfig) -> dict[str, Tensor]:
    """Rename reference weights to this project's names through the explicit key map.

    The reference GNN's last message-passing layer feeds no output (see `NiNoGNN`); its weights
    are dropped here. Keys the map does not know are kept under their own name, so that
    `load_strict` reports them as unexpected.
    """
    table: dict[str, str] = {}
    pairs = _GNN_KEYS if config.gnn else _MLP_KEYS
    for old, new in pairs:
        if '{i}' in old:
            for i in range(config.layers - 1):
                table[old.format(i=i)] = new.format(i=i)
        else:
            table[old] = new
    dropped = re.compile(rf'^gnn\.convs\.{config.layers - 1}\.') if config.gnn else None
    out = {}
    for key, value in state.items():
        if dropped is not None and dropped.match(key):
            continue
        out[table.get(key, key)] = value
    return out


def load_strict(model: Nowcaster, state: dict[str, Tensor], source: str) -> None:
    """Load weights, failing with the missing and unexpected keys and shape mismatches named."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                   for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(f'{source}: checkpoint does not match the nowcaster; missing keys: {missing}; '
                              f'unexpected keys: {unexpected}; shape mismatches: {wrong}')
    model.load_state_dict(state)
