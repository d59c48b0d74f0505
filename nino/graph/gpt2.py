"""Neural graphs of GPT-2 style transformers (`transformers.GPT2LMHeadModel` / `GPT2Model`).

The fused `attn.c_attn` weight (in, 3*out) is split into query, key and value blocks. Auxiliary
edges that hold no parameter are added as in the reference implementation: per-head edges from
the query and value neurons (type 11), a residual identity around attention (from the block's
input neurons to the value outputs) and around the MLP (type 10). Node numbering and edge order
reproduce the reference code exactly (checked against `../shared/fixtures/official`): the walk
below keeps a running row offset (input neurons) and column offset (output neurons) per parameter
and then shifts columns by the extra nodes that biases, norms and position embeddings add.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from .neural_graph import EdgeBlock, EdgeType, NeuralGraph, UnsupportedLayerError, _numel, assemble

_BLOCK_SUFFIXES = ('ln_1.weight', 'ln_1.bias', 'ln_2.weight', 'ln_2.bias',
                   'attn.c_attn.weight', 'attn.c_attn.bias', 'attn.c_proj.weight', 'attn.c_proj.bias',
                   'mlp.c_fc.weight', 'mlp.c_fc.bias', 'mlp.c_proj.weight', 'mlp.c_proj.bias')
_TOP_SUFFIXES = ('wte.weight', 'wpe.weight', 'ln_f.weight', 'ln_f.bias')
_BLOCK = re.compile(r'^(.*\.)?h\.\d+\.')


def is_gpt2(params: Iterable[tuple[str, tuple[int, ...]]]) -> bool:
    """Whether a parameter list looks like a GPT-2 (has a fused `attn.c_attn.weight`)."""
    return any(name.endswith('attn.c_attn.weight') for name, _ in params)


@dataclass
class _Entry:
    """One parameter of the expanded model: real (param_index set) or auxiliary."""

    name: str
    shape: tuple[int, ...]
    etype: EdgeType
    param_index: Tensor | None  # (n_in * n_out, 1), input-major

    @property
    def layer(self) -> str:
        return self.name.rpartition('.')[0]

    @property
    def key(self) -> str:
        return self.name.rpartition('.')[2]


def _check_supported(name: str, shape: tuple[int, ...]) -> None:
    if name.endswith(_TOP_SUFFIXES) or (_BLOCK.match(name) and name.endswith(_BLOCK_SUFFIXES)):
        return
    raise UnsupportedLayerError(
        f"parameter '{name}' with shape {tuple(shape)} is not part of a GPT-2 neural graph "
        f"(supported: wte, wpe, ln_1/ln_2/ln_f, attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)")


def _expand(params: list[tuple[str, tuple[int, ...]]], num_heads: int) -> list[_Entry]:
    """Split fused q/k/v, add per-head and residual auxiliary entries; attach flat indices."""
    offsets, flat = {}, 0
    for name, shape in params:
        _check_supported(name, shape)
        offsets[name] = flat
        flat += _numel(shape)
    shapes = dict(params)

    def index(name: str) -> Tensor:
        return torch.arange(offsets[name], offsets[name] + _numel(shapes[name])).view(-1, 1)

    entries: list[_Entry] = []
    for name, shape in params:
        if name.endswith('attn.c_attn.bias'):
            continue  # emitted with the q/k/v weights below
        if name.endswith('attn.c_attn.weight'):
            d_in, d_out = shape[0], shape[1] // 3
            if d_out % num_heads:
                raise UnsupportedLayerError(f"parameter '{name}': {d_out} features are not divisible "
                                            f"into {num_heads} heads")
            w_idx = torch.arange(offsets[name], offsets[name] + _numel(shape)).view(d_in, 3, d_out)
            bias = name.replace('weight', 'bias')
            b_idx = index(bias).view(3, d_out) if bias in shapes else None
            prefix = name[:-len('weight')]
            for j, part in enumerate('qkv'):
                base = f'{prefix}{part}.'
                etype = (EdgeType.ATTN_Q, EdgeType.ATTN_K, EdgeType.ATTN_V)[j]
                entries.append(_Entry(base + 'weight', (d_in, d_out), etype, w_idx[:, j, :].reshape(-1, 1)))
                if part in 'qv':
                    for h in range(num_heads):
                        entries.append(_Entry(f'{base}head{h}', (d_out // num_heads,), EdgeType.ATTN_HEAD, None))
                if b_idx is not None:
                    entries.append(_Entry(base + 'bias', (d_out,), EdgeType.BIAS, b_idx[j].view(-1, 1)))
                if part == 'v':
                    entries.append(_Entry(base + 'res', (d_in,), EdgeType.RESIDUAL, None))
            continue
        if len(shape) == 1:
            etype = EdgeType.NORM if name.endswith('.weight') else EdgeType.BIAS
        elif name.endswith('wte.weight'):
            etype = EdgeType.WORD_EMBEDDING
        elif name.endswith('wpe.weight'):
            etype = EdgeType.POSITION_EMBEDDING
        else:
            etype = EdgeType.LINEAR
        entries.append(_Entry(name, shape, etype, index(name)))
        if name.endswith('mlp.c_fc.bias'):
            entries.append(_Entry(name[:-len('bias')] + 'res', (shapes[name[:-len('bias')] + 'weight'][0],),
                                  EdgeType.RESIDUAL, None))
    return entries


def build_gpt2_graph(params: Iterable[tuple[str, tuple[int, ...]]], num_heads: int) -> NeuralGraph:
    """Build the neural graph of a GPT-2 from its (name, shape) list and number of heads."""
    params = [(name, tuple(int(s) for s in shape)) for name, shape in params]
    if not num_heads or num_heads < 1:
        raise ValueError('num_heads must be given for a GPT-2 neural graph')
    entries = _expand(params, num_heads)
    names = {e.name for e in entries}
    has_bias = {p: any(n.endswith(f'attn.c_attn.{p}.bias') for n in names) for p in 'qkv'}

    blocks: list[EdgeBlock] = []
    shifts: dict[int, list[tuple[int, EdgeBlock]]] = {}
    col = row = 0
    q_col = qv_row = v_col = v_end = 0
    for i, e in enumerate(entries):
        if len(e.shape) >= 2:
            n_in, n_out = e.shape[0], e.shape[1]  # GPT-2 Conv1D and embeddings are (in, out)
        else:
            n_in, n_out = 1, e.shape[0]
        if len(e.shape) == 1 and e.key != 'res':
            col = max(0, col - n_out)
        elif i == 0:
            col = n_in

        is_pos = e.etype == EdgeType.POSITION_EMBEDDING
        if is_pos:
            col -= n_out  # position rows feed the same neurons as the word embedding
        elif e.name.endswith('c_attn.q.weight'):
            row += int(has_bias['k'])
            q_col, qv_row, v_col = col, row, col + n_out
        elif e.name.endswith('c_attn.k.weight'):
            col, row = q_col, qv_row
        elif e.name.endswith('c_attn.v.weight'):
            col, row = v_col, qv_row
            v_end = col + n_out
        elif e.name.endswith('c_attn.q.bias'):
            col, row = q_col, qv_row + n_out + num_heads
        elif e.name.endswith('c_attn.k.bias'):
            col, row = q_col - n_out, qv_row - 1
        elif e.name.endswith('c_attn.v.bias'):
            col, row = v_col, qv_row + n_out + num_heads + int(has_bias['q'])
        elif e.etype == EdgeType.ATTN_HEAD:
            col = q_col if e.layer.endswith('c_attn.q') else v_col

        if e.key == 'res':
            if e.name.endswith('c_attn.v.res'):
                row, col = qv_row, v_end
            else:
                row -= n_out + int(has_bias['v'])
            src, dst = torch.arange(row, row + n_out), torch.arange(col, col + n_out)
        else:
            src = torch.arange(row, row + n_in).repeat_interleave(n_out)
            dst = torch.arange(col, col + n_out).repeat(n_in)
        block = EdgeBlock(e.layer, e.key, e.etype, src, dst, e.param_index)
        blocks.append(block)
        extra = n_in if is_pos else 0
        if e.etype != EdgeType.RESIDUAL and (len(e.shape) == 1 or (e.etype == EdgeType.ATTN_Q and has_bias['k'])):
            extra = 1
        shifts.setdefault(col, []).append((extra, block))

        if e.key == 'res':
            col -= n_out
            if e.name.endswith('c_attn.v.res'):
                row += n_out + num_heads + v_end - v_col + int(has_bias['k']) + int(has_bias['v']) - 1
            else:
                row += n_out - int(not has_bias['v'])
        row += n_in
        col += n_out

    shift = 0
    for start in sorted(shifts):
        shift += sum(extra for extra, _ in shifts[start])
        for _, block in shifts[start]:
            if block.layer.endswith('c_attn.v') and block.key == 'weight':
                shift -= num_heads + int(has_bias['v'])
            block.dst += shift
            if block.key.startswith('head'):
                block.dst += int(block.key[4:]) * len(block.dst)
            elif block.layer.endswith('c_attn.k') and block.key == 'weight':
                block.src, block.dst = block.dst, block.src

    vocab = next(shape[0] for name, shape in params if name.endswith('wte.weight')) \
        if any(name.endswith('wte.weight') for name, _ in params) else 0
    return assemble(blocks, params, pos_w_rows=vocab)
