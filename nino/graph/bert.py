"""Neural graphs of BERT encoders (`transformers.BertModel`, `BertLMHeadModel`, `BertForMaskedLM`).

Word, position and token-type embeddings feed the same neurons; q/k/v projections have biases; a
residual identity follows the intermediate (MLP input) bias. The masked/causal LM head's output
bias (`cls.predictions.bias`, one value per vocabulary row) is attached, as in the reference, to
the word-embedding rows: it becomes one extra node feeding them, and every other edge moves by one.
"""

from __future__ import annotations

from .transformer import EdgeDict, SameNeurons, TransformerFamily

_LM_BIAS = 'cls.predictions.bias'


class BertFamily(TransformerFamily):
    """BERT: `embeddings.{word,position,token_type}_embeddings`, `attention.self.{query,key,value}`."""

    title = 'BERT'
    marker = 'attention.self.query.weight'
    model_types = ('bert',)
    block_pattern = r'(?:^|\.)encoder\.layer\.(\d+)\.'
    word_embedding = ('word_embeddings.weight',)
    position_embedding = ('position_embeddings.weight',)
    type_embedding = ('token_type_embeddings.weight',)
    q_weight = 'attention.self.query.weight'
    k_weight = 'attention.self.key.weight'
    v_weight = 'attention.self.value.weight'
    mlp_residual_after = ('intermediate.dense.bias',)

    def move_offset(self, name: str, col: int, row: int, n_out: int, n_in: int) -> tuple[int, int]:
        if name.endswith(_LM_BIAS):
            row -= 1
        return col, row

    def correct_offsets(self, edges: EdgeDict, same: SameNeurons) -> None:
        layer, key = _LM_BIAS.rpartition('.')[::2]
        if key not in edges.get(layer, {}):
            return
        first = min(same)
        node = max(0, first + sum(extra for extra, _, _ in same[first]) - 1)
        block = edges[layer][key]
        block[0] = node
        block[1] -= int(block[1, 0])
        edges[layer][key] = block[[1, 0]]  # vocabulary rows -> the bias node, reversed
        first_key_bias = None
        for name in edges:
            if name.endswith(self._module(self.k_weight)):
                first_key_bias = name
                break
        for name, keys in edges.items():
            for k, b in keys.items():
                b[1] += 1
                if ('embeddings' not in name and not name.endswith(layer)
                        and not (name == first_key_bias and k == 'bias')):
                    b[0] += 1
        for start in same:
            same[start] = [s for s in same[start] if not (s[1] == layer and s[2] == key)]
