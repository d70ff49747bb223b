"""The normalized architecture every costs computation reads: an Arch is a list of layers, each a
token mixer (attention, MLA or LFM2 short convolution) plus an FFN (dense SwiGLU or routed experts).

What it is: frozen dataclasses describing shapes only. What it is not: how a config.json becomes
an Arch (configs.py) or what the parts cost (layers.py, model.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attention:
    """Multi-head / grouped-query softmax attention with RoPE (no learned position table)."""

    heads: int
    kv_heads: int
    head_dim: int
    qk_norm: bool = False  # LFM2: a [head_dim] RMSNorm weight each for q and k
    bias: bool = False  # Llama attention_bias: biases on q, k, v and o
    kind = "attention"


@dataclass(frozen=True)
class MLA:
    """DeepSeek multi-head latent attention: low-rank q (optional) and a shared kv latent plus a rope key."""

    heads: int
    q_lora_rank: int  # 0: plain q_proj
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    bias: bool = False  # attention_bias: biases on q_a_proj, kv_a_proj_with_mqa and o_proj
    kind = "mla"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class ShortConv:
    """LFM2 gated short convolution: in_proj to (B, C, x), depthwise causal conv of B*x, C gate, out_proj."""

    kernel: int  # conv_L_cache
    bias: bool = False
    kind = "conv"


@dataclass(frozen=True)
class DenseMLP:
    """SwiGLU MLP: gate and up [F, D], down [D, F]."""

    width: int
    bias: bool = False
    kind = "dense"


@dataclass(frozen=True)
class MoE:
    """Routed SwiGLU experts (top-k of E) plus optional always-on shared experts (one fused SwiGLU)."""

    experts: int
    top_k: int
    width: int
    shared_width: int = 0  # n_shared_experts * moe_intermediate_size (DeepSeek); 0: none
    router_bias_buffer: bool = False  # expert_bias / e_score_correction_bias: a buffer, not a parameter
    kind = "moe"


@dataclass(frozen=True)
class Layer:
    mixer: Attention | MLA | ShortConv
    ffn: DenseMLP | MoE

    @property
    def kind(self) -> str:
        return f"{self.mixer.kind}+{self.ffn.kind}"


@dataclass(frozen=True)
class Arch:
    name: str
    model_type: str
    vocab: int
    hidden: int
    layers: tuple[Layer, ...]
    tied: bool
    max_position_embeddings: int | None
    source: str
    mtp_layers: int = 0  # DeepSeek multi-token-prediction modules: reported, never counted in the total

    @property
    def n_layers(self) -> int:
        return len(self.layers)
