"""The neural graph walk shared by every transformer family (GPT-2, Llama, Qwen3, BERT, nanoGPT).

A family (`TransformerFamily` subclass, one module each) says three things:
- class attributes: the parameter-name suffixes that play each role (word and position
  embeddings, query/key/value weights), how it is recognised and where its block index is;
- `expand`: the network's (name, shape) list turned into the walk's entry list, where fused
  q/k/v weights are split and auxiliary entries that hold no parameter are inserted (per-head
  edges after the query and value weights, residual identities), each real entry carrying the
  flat indices of its values;
- `move_offset` / `correct_offsets`: the family's own adjustments of the walk's row/column
  offsets and of finished edge blocks (e.g. SwiGLU's gate and up projections feeding the same
  neurons).

The walk numbers nodes and orders edges exactly as the paper's reference code does (checked
against `../shared/fixtures`): it keeps a running row offset (input neurons) and column offset
(output neurons) per entry, then shifts columns by the extra nodes that biases, norms, heads and
embeddings add. Weights stored (out, in) have their feature slots read out-major, as the
reference does, including for (rows, dim) embeddings of such families (their features then run
dim-major over edges laid out row-major; kept for parity with the published nowcasters).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from .neural_graph import EdgeBlock, EdgeType, NeuralGraph, UnsupportedLayerError, _numel, assemble


@dataclass
class Entry:
    """One row of the expanded parameter list: a real parameter (index set) or an auxiliary one.

    `shape` is in the model's own convention ((out, in) or (in, out)); `index` holds the flat
    parameter indices of its values in that shape, None for auxiliary entries (residual, head).
    """

    name: str
    shape: tuple[int, ...]
    index: Tensor | None = None

    @property
    def layer(self) -> str:
        return self.name.rpartition('.')[0]

    @property
    def key(self) -> str:
        return self.name.rpartition('.')[2]


#: A finished edge block per (layer, key): (2, n) source/target nodes, editable by `correct_offsets`.
EdgeDict = dict[str, dict[str, Tensor]]
#: First column -> list of (extra nodes, layer, key), as the reference's `offset_same_neurons`.
SameNeurons = dict[int, list[tuple[int, str, str]]]


class TransformerFamily:
    """Base family: the names and hooks the shared walk reads. Subclasses override what differs."""

    #: Human-readable family name, used in error messages.
    title = 'transformer'
    #: Whether 2-D weights are stored (out, in) as in `nn.Linear` (False for GPT-2's Conv1D).
    first_dim_out = True
    word_embedding: tuple[str, ...] = ()  # suffixes of word embeddings (edge type 5, `pos_w` rows)
    position_embedding: tuple[str, ...] = ()  # suffixes of position embeddings (edge type 6)
    type_embedding: tuple[str, ...] = ()  # token-type embeddings: joined like position embeddings
    q_weight = k_weight = v_weight = ''  # suffixes of the (split) attention weights
    #: A parameter-name suffix only this family has (how `nino.graph.family_of` recognises it).
    marker = ''
    #: transformers `config.model_type` values of this family.
    model_types: tuple[str, ...] = ()
    #: Where a parameter name gives its transformer block index (subgraph mode), e.g. `h.3.`.
    block_pattern = r'(?:^|\.)layers\.(\d+)\.'

    def __init__(self, num_heads: int, num_key_value_heads: int | None = None):
        if not num_heads or num_heads < 1:
            raise ValueError(f'num_heads must be given for a {self.title} neural graph')
        self.num_heads = int(num_heads)
        self.num_kv_heads = int(num_key_value_heads or num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f'num_heads ({self.num_heads}) is not a multiple of num_key_value_heads '
                             f'({self.num_kv_heads})')

    @staticmethod
    def _bias(weight_suffix: str) -> str:
        return weight_suffix[:-len('weight')] + 'bias'

    @staticmethod
    def _module(weight_suffix: str) -> str:
        return weight_suffix.rpartition('.')[0]

    #: Suffixes after which a residual identity over the input of the same layer's weight is added
    #: (by `expand` of families with separate q/k/v projections).
    mlp_residual_after: tuple[str, ...] = ()

    def expand(self, params: list[tuple[str, tuple[int, ...]]], index: dict[str, Tensor]) -> list[Entry]:
        """The walk's entries; `index[name]` holds each parameter's flat indices in its own shape.

        This default serves families with separate q/k/v projections (Llama, Qwen3, BERT): each
        projection's bias right after its weight, per-head entries after the query (`num_heads`)
        and value (`num_key_value_heads`) weights, a residual after the value bias, and one after
        each `mlp_residual_after` suffix. Families with fused or renamed weights override it.
        """
        shapes = dict(params)
        qkv = (self.q_weight, self.k_weight, self.v_weight)
        qkv_bias = tuple(self._bias(w) for w in qkv)
        entries: list[Entry] = []
        for name, shape in params:
            if name.endswith(qkv_bias):
                continue  # emitted right after its weight
            entry = Entry(name, shape, index[name])
            entries.append(entry)
            if name.endswith(qkv):
                if name.endswith((self.q_weight, self.v_weight)):
                    entries += self._heads(entry, self.num_heads if name.endswith(self.q_weight) else self.num_kv_heads)
                bias = self._bias(name)
                if bias in shapes:
                    entries.append(Entry(bias, shapes[bias], index[bias]))
                if name.endswith(self.v_weight):
                    entries.append(self._residual(name, shape, name))
            elif name.endswith(self.mlp_residual_after):
                weight = name.rpartition('.')[0] + '.weight'
                entries.append(self._residual(weight, shapes[weight], name))
        return entries

    def move_offset(self, name: str, col: int, row: int, n_out: int, n_in: int) -> tuple[int, int]:
        """Adjust (col, row) before an entry that plays no attention/embedding role."""
        return col, row

    def correct_offsets(self, edges: EdgeDict, same: SameNeurons) -> None:
        """Edit finished edge blocks and the column groups before columns are shifted."""

    def edge_type(self, name: str, shape: tuple[int, ...]) -> EdgeType:
        """Edge type of an entry, by the reference's rules for transformers."""
        is_w, is_b = name.endswith('.weight'), name.endswith('.bias')
        if len(shape) == 1 and is_w:
            return EdgeType.NORM
        if len(shape) in (2, 3) and name.endswith(self.word_embedding or (' ',)):
            return EdgeType.WORD_EMBEDDING
        if len(shape) in (2, 3) and name.endswith(self.position_embedding or (' ',)):
            return EdgeType.POSITION_EMBEDDING
        if len(shape) == 2:
            for suffix, etype in ((self.q_weight, EdgeType.ATTN_Q), (self.k_weight, EdgeType.ATTN_K),
                                  (self.v_weight, EdgeType.ATTN_V)):
                if name.endswith(suffix):
                    return etype
        if len(shape) == 4:
            return EdgeType.CONV
        if len(shape) == 2 and 'embed' not in name:
            return EdgeType.LINEAR
        if not is_w and not is_b and '.head' in name:
            return EdgeType.ATTN_HEAD
        if not is_w and not is_b and '.res' in name:
            return EdgeType.RESIDUAL
        return EdgeType.BIAS

    # Helpers for `expand` implementations.
    def _heads(self, weight: Entry, count: int) -> list[Entry]:
        out_dim = weight.shape[0] if self.first_dim_out else weight.shape[1]
        if out_dim % count:
            raise UnsupportedLayerError(f"parameter '{weight.name}': {out_dim} features are not divisible "
                                        f'into {count} heads')
        prefix = weight.name[:-len('weight')]
        return [Entry(f'{prefix}head{h}', (out_dim // count,)) for h in range(count)]

    def _residual(self, weight_name: str, weight_shape: tuple[int, ...], at: str) -> Entry:
        """A residual identity over the input neurons of `weight_name`, named `<at layer>.res`."""
        in_dim = weight_shape[1] if self.first_dim_out else weight_shape[0]
        return Entry(at.rpartition('.')[0] + '.res', (in_dim,))


def flat_indices(params: list[tuple[str, tuple[int, ...]]]) -> dict[str, Tensor]:
    """Each parameter's flat indices (in `named_parameters()` order), shaped like the parameter."""
    out, flat = {}, 0
    for name, shape in params:
        n = _numel(shape)
        out[name] = torch.arange(flat, flat + n).view(shape)
        flat += n
    return out


def build_transformer_graph(params: Iterable[tuple[str, tuple[int, ...]]], family: TransformerFamily,
                            pos_w: bool = True) -> NeuralGraph:
    """Build the neural graph of a transformer from its (name, shape) list and family."""
    params = [(name, tuple(int(s) for s in shape)) for name, shape in params]
    entries = [e for e in family.expand(params, flat_indices(params)) if len(e.shape)]
    names = {e.name for e in entries}
    f = family
    v_layer, k_layer, q_layer = f._module(f.v_weight), f._module(f.k_weight), f._module(f.q_weight)
    value_res = f.v_weight[:-len('weight')] + 'res'
    joined = f.word_embedding + f.position_embedding + f.type_embedding

    edges: EdgeDict = {}
    same: SameNeurons = {}
    col = row = 0
    q_col = qv_row = v_col = v_end = 0
    q_bias = k_bias = v_bias = False
    for i, e in enumerate(entries):
        etype = f.edge_type(e.name, e.shape)
        layer, key = e.layer, e.key
        n_out, n_in = e.shape[0], e.shape[1] if len(e.shape) > 1 else 1
        if (not f.first_dim_out and len(e.shape) >= 2) or e.name.endswith(joined or (' ',)):
            n_out, n_in = n_in, n_out
        if len(e.shape) == 1 and key != 'res':
            col = max(0, col - n_out)
        elif i == 0:
            col = n_in

        is_embed = etype == EdgeType.POSITION_EMBEDDING or e.name.endswith(f.type_embedding or (' ',))
        if is_embed:
            col -= n_out  # rows feed the same neurons as the word embedding
        elif e.name.endswith(f.q_weight):
            k_bias = e.name.replace(f.q_weight, f._bias(f.k_weight)) in names
            q_bias = k_bias  # the reference tests the key bias for both
            v_bias = e.name.replace(f.q_weight, f._bias(f.v_weight)) in names
            row += int(k_bias)
            q_col, qv_row, v_col = col, row, col + n_out
        elif e.name.endswith(f.k_weight):
            col, row = q_col, qv_row
        elif e.name.endswith(f.v_weight):
            col, row = v_col, qv_row
            v_end = col + n_out
        elif e.name.endswith(f._bias(f.q_weight)):
            col, row = q_col, qv_row + n_out + f.num_heads
        elif e.name.endswith(f._bias(f.k_weight)):
            col, row = q_col - n_out, qv_row - 1
        elif e.name.endswith(f._bias(f.v_weight)):
            has_q_bias = e.name.replace(f._bias(f.v_weight), f._bias(f.q_weight)) in names
            col, row = v_col, qv_row + n_out + f.num_heads + int(has_q_bias)
        elif etype == EdgeType.ATTN_HEAD:
            col = q_col if layer.endswith(q_layer) else v_col
        else:
            col, row = f.move_offset(e.name, col, row, n_out, n_in)

        if key == 'res':
            if e.name.endswith(value_res):
                row, col = qv_row, v_end
            else:
                row -= n_out + int(v_bias)
            block = torch.stack((torch.arange(row, row + n_out), torch.arange(col, col + n_out)))
        else:
            block = torch.stack((torch.arange(row, row + n_in).repeat_interleave(n_out),
                                 torch.arange(col, col + n_out).repeat(n_in)))
        edges.setdefault(layer, {})[key] = block
        if etype != EdgeType.RESIDUAL and (len(e.shape) == 1 or (etype == EdgeType.ATTN_Q and q_bias)):
            extra = 1
        else:
            extra = n_in if is_embed else 0
        same.setdefault(col, []).append((extra, layer, key))

        if key == 'res':
            col -= n_out
            if e.name.endswith(value_res):
                row += n_out + f.num_heads + v_end - v_col + int(k_bias) + int(v_bias) - 1
            else:
                row += n_out - int(not v_bias)
        row += n_in
        col += n_out

    f.correct_offsets(edges, same)
    shift = 0
    for start in sorted(same):
        shift += sum(extra for extra, _, _ in same[start])
        for _, layer, key in same[start]:
            is_w = key.endswith('weight')
            if layer.endswith(v_layer) and is_w:
                shift -= f.num_kv_heads + int(v_bias)
            block = edges[layer][key]
            block[1] += shift
            if 'head' in key and not is_w and not key.endswith('bias'):
                block[1] += int(key[key.find('head') + 4:]) * block.shape[1]
            elif layer.endswith(k_layer) and is_w:
                edges[layer][key] = block[[1, 0]]

    rows = 0
    if pos_w:  # the word embedding's rows, as the walk sees it (ViT: a one-row class token)
        rows = next((e.shape[0] for e in entries if e.name.endswith(f.word_embedding or (' ',))), 0)
    by_name = {e.name: e for e in entries}
    del entries
    blocks = []
    for layer in list(edges):  # popped as they go, so `assemble` can free each block once copied
        keys = edges.pop(layer)
        for key in list(keys):
            block = keys.pop(key)
            e = by_name.pop(f'{layer}.{key}')
            index = None if e.index is None else _feature_index(e.index, f.first_dim_out)
            blocks.append(EdgeBlock(layer, key, f.edge_type(e.name, e.shape), block[0], block[1], index))
            del block, e
    return assemble(blocks, params, pos_w_rows=rows)


def _feature_index(index: Tensor, first_dim_out: bool) -> Tensor:
    """(n_in * n_out, feat) flat indices of an entry's edge slots, in the reference's order."""
    if index.dim() == 1:
        index = index.view(-1, 1, 1)
    else:
        index = index.reshape(index.shape[0], index.shape[1], -1)
    if first_dim_out:
        index = index.transpose(0, 1)
    return index.reshape(index.shape[0] * index.shape[1], index.shape[2])


def split_blocks(params: list[tuple[str, tuple[int, ...]]], family: type[TransformerFamily]) -> list[list[int]]:
    """Indices of the parameters of each transformer block, for one neural graph per block.

    Walks the parameters in order and starts a new group whenever the block index grows, as the
    reference's subgraph mode does: what comes before the first block (embeddings) joins it, what
    comes after the last (final norm, an untied head) joins the last.
    """
    pattern = re.compile(family.block_pattern)
    groups: list[list[int]] = [[]]
    block = 0
    for i, (name, _) in enumerate(params):
        match = pattern.search(name)
        if match and int(match.group(1)) > block:
            block = int(match.group(1))
            if groups[-1]:
                groups.append([])
        groups[-1].append(i)
    return groups
