"""Neural graphs of Llama-style transformers (`transformers.LlamaForCausalLM` and kin).

Separate q/k/v projections stored (out, in), grouped-query attention (the value projection has
`num_key_value_heads` heads), RMSNorm weights, a SwiGLU MLP whose gate and up projections read
the same input neurons and feed the same output neurons (the reference models this with a
residual identity after each and by moving their columns together), and an untied or tied head.
"""

from __future__ import annotations

from .transformer import TransformerFamily


class LlamaFamily(TransformerFamily):
    """Llama: `model.embed_tokens`, `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, RMSNorm."""

    title = 'Llama'
    marker = 'self_attn.q_proj.weight'
    model_types = ('llama',)
    word_embedding = ('embed_tokens.weight',)
    q_weight, k_weight, v_weight = 'self_attn.q_proj.weight', 'self_attn.k_proj.weight', 'self_attn.v_proj.weight'
    swiglu = ('mlp.gate_proj.weight', 'mlp.up_proj.weight')
    mlp_residual_after = swiglu

    def move_offset(self, name: str, col: int, row: int, n_out: int, n_in: int) -> tuple[int, int]:
        if name.endswith(self.swiglu[0]):
            col += n_in  # gate and up projections feed the same neurons
        elif name.endswith(self.swiglu[1]):
            col -= n_out
        return col, row
