"""What a checkpoint in the Hugging Face layout must hold: tensor names and shapes, file names.

`expected_tensors(cfg)` is the single source of truth for the manifest (MODEL.md §3.1); the
reader validates against it and the writer streams it.
"""

from __future__ import annotations

from ..config import LFM2Config

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def expected_tensors(cfg: LFM2Config) -> dict[str, tuple[int, ...]]:
    """{HF tensor name: shape} — the single source of truth for what a checkpoint must hold."""
    d, v = cfg.hidden_size, cfg.vocab_size
    m: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (v, d),
        "model.embedding_norm.weight": (d,),
    }
    if not cfg.tie_word_embeddings:
        m["lm_head.weight"] = (v, d)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        m[p + "operator_norm.weight"] = (d,)
        m[p + "ffn_norm.weight"] = (d,)
        if cfg.is_attention_layer(i):
            a = p + "self_attn."
            m[a + "q_proj.weight"] = (cfg.num_attention_heads * cfg.head_dim, d)
            m[a + "k_proj.weight"] = (cfg.kv_dim, d)
            m[a + "v_proj.weight"] = (cfg.kv_dim, d)
            m[a + "out_proj.weight"] = (d, cfg.num_attention_heads * cfg.head_dim)
            m[a + "q_layernorm.weight"] = (cfg.head_dim,)
            m[a + "k_layernorm.weight"] = (cfg.head_dim,)
        else:
            c = p + "conv."
            m[c + "in_proj.weight"] = (3 * d, d)
            m[c + "conv.weight"] = (d, 1, cfg.conv_L_cache)
            m[c + "out_proj.weight"] = (d, d)
        f = p + "feed_forward."
        if cfg.is_moe_layer(i):
            m[f + "gate.weight"] = (cfg.num_experts, d)
            if cfg.use_expert_bias:
                m[f + "expert_bias"] = (cfg.num_experts,)
            fe = cfg.moe_intermediate_size
            for e in range(cfg.num_experts):
                m[f"{f}experts.{e}.w1.weight"] = (fe, d)
                m[f"{f}experts.{e}.w3.weight"] = (fe, d)
                m[f"{f}experts.{e}.w2.weight"] = (d, fe)
        else:
            ff = cfg.ffn_dim
            m[f + "w1.weight"] = (ff, d)
            m[f + "w3.weight"] = (ff, d)
            m[f + "w2.weight"] = (d, ff)
    return m


def manifest_size(cfg: LFM2Config) -> tuple[int, int]:
    """(tensors, elements) of expected_tensors(cfg), counted without listing it: the reader compares
    them with the checkpoint before listing a manifest that a config of 2**40 experts would make
    endless."""
    d, v = cfg.hidden_size, cfg.vocab_size
    tensors, elements = 2, v * d + d
    if not cfg.tie_word_embeddings:
        tensors, elements = tensors + 1, elements + v * d
    hd = cfg.num_attention_heads * cfg.head_dim
    n_attn = len(cfg.attention_layers)
    n_conv = cfg.num_hidden_layers - n_attn
    tensors += 2 * cfg.num_hidden_layers + 6 * n_attn + 3 * n_conv
    elements += 2 * d * cfg.num_hidden_layers
    elements += n_attn * (hd * d + 2 * cfg.kv_dim * d + d * hd + 2 * cfg.head_dim)
    elements += n_conv * (3 * d * d + d * cfg.conv_L_cache + d * d)
    n_moe = cfg.num_hidden_layers - cfg.num_dense_layers if cfg.is_moe else 0
    n_dense = cfg.num_hidden_layers - n_moe
    tensors += 3 * n_dense
    elements += n_dense * 3 * cfg.ffn_dim * d
    if n_moe:
        e, fe = cfg.num_experts, cfg.moe_intermediate_size
        per = 1 + int(cfg.use_expert_bias) + 3 * e
        tensors += n_moe * per
        elements += n_moe * (e * d + (e if cfg.use_expert_bias else 0) + e * 3 * fe * d)
    return tensors, elements
