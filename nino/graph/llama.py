"""Neural graphs of Llama-style transformers (`transformers.LlamaForCausalLM` and kin).

Separate q/k/v projections stored (out, in), grouped-query attention (the value projection has
`num_key_value_heads` heads), RMSNorm weights, a SwiGLU MLP whose gate and up projections read
the same input neurons and feed the same output neurons (the reference models this with a
residual identity after each and by moving their columns together), and an untied or tied head.
"""

from __future__ import annotations

from torch import Tensor

from .transformer import Entry, TransformerFamily


class LlamaFamily(TransformerFamily):
    """Llama: `model.embed_tokens`, `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, RMSNorm."""

    title = 'Llama'
    marker = 'self_attn.q_proj.weight'
    model_types = ('llama',)
    word_embedding = ('embed_tokens.weight',)
    q_weight, k_weight, v_weight = 'self_attn.q_proj.weight', 'self_attn.k_proj.weight', 'self_attn.v_proj.weight'
    swiglu = ('mlp.gate_proj.weight', 'mlp.up_proj.weight')

    def expand(self, params: list[tuple[str, tuple[int, ...]]], index: dict[str, Tensor]) -> list[Entry]:
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
                    heads = self.num_heads if name.endswith(self.q_weight) else self.num_kv_heads
                    entries += self._heads(entry, heads)
                bias = self._bias(name)
                if bias in shapes:
                    entries.append(Entry(bias, shapes[bias], index[bias]))
                if name.endswith(self.v_weight):
                    entries.append(self._residual(name, shape, name))
            elif name.endswith(self.swiglu):
                entries.append(self._residual(name, shape, name))
        return entries

    def move_offset(self, name: str, col: int, row: int, n_out: int, n_in: int) -> tuple[int, int]:
        if name.endswith(self.swiglu[0]):
            col += n_in  # gate and up projections feed the same neurons
        elif name.endswith(self.swiglu[1]):
            col -= n_out
        return col, row
