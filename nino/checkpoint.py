"""Nowcaster checkpoints: this project's format and import of the paper's published files.

This project's format is a safetensors file (weights only, so loading never runs pickled code)
whose metadata holds `format`, `version`, the `NiNoConfig` as JSON and `sha256`, a digest of the
tensors that the loader checks; it is written atomically. The format of a file is told from its
contents (a safetensors header that parses, or the zip/pickle magic of `torch.save`). The published
`nino_no_posw.pt`, `nino_mlp.pt` and `nino_mlp_h32.pt` are read with `torch.load(weights_only=True)`
and their weights renamed through an explicit key map.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
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


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f'{name}|{t.dtype}|{tuple(t.shape)}|'.encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes: what names a checkpoint wherever it lies."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def save_nowcaster(model: Nowcaster, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a nowcaster in this project's format (safetensors + JSON config), atomically."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {'format': FORMAT, 'version': str(VERSION), 'config': json.dumps(model.config.to_dict()),
            'sha256': tensors_digest(tensors)}
    meta.update(metadata or {})
    tmp = path.with_name(f'.{path.name}.tmp')
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoint_kind(path: Path) -> str:
    """'safetensors', 'torch' (a `torch.save` zip or legacy pickle) or an error naming the file."""
    size = path.stat().st_size
    with open(path, 'rb') as f:
        head = f.read(9)
    if len(head) >= 9:
        header_len = struct.unpack('<Q', head[:8])[0]
        if 2 <= header_len <= size - 8 and head[8:9] == b'{':
            return 'safetensors'
    if head[:4] == b'PK\x03\x04' or (head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05')):
        return 'torch'
    raise CheckpointError(f'{path}: not a nowcaster checkpoint (neither safetensors nor a torch.save file; '
                          f'{size} bytes)')


def load_nowcaster(path: str | Path, device: str | torch.device = 'cpu') -> Nowcaster:
    """Load a nowcaster from this project's format or a published reference `.pt` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no nowcaster checkpoint at {path}')
    if checkpoint_kind(path) == 'torch':
        return import_official(path).to(device)
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
            if meta.get('format') != FORMAT:
                raise CheckpointError(f'{path}: not a nowcaster checkpoint (metadata format={meta.get("format")!r})')
            if int(meta.get('version', -1)) > VERSION:
                raise CheckpointError(f'{path}: format version {meta["version"]} is newer than supported ({VERSION})')
            state = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as err:  # a truncated or damaged file
        raise CheckpointError(f'{path}: unreadable safetensors file ({type(err).__name__}: {err})') from None
    if 'sha256' in meta and tensors_digest(state) != meta['sha256']:
        raise CheckpointError(f'{path}: the tensors do not match the checksum in the metadata (damaged file)')
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
    try:
        raw = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # truncated, damaged, or holding objects other than tensors
        raise CheckpointError(f'{path}: unreadable torch checkpoint ({type(err).__name__}: '
                              f'{str(err).splitlines()[0] if str(err) else ""})') from None
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
