"""What one layer costs: parameters (all and active per token), matmul multiply-adds, forward FLOPs,
the activations its forward produces, and its peak memory with checkpoints at layer boundaries.

What it is: per-layer accounting over the Arch description. What it is not: whole-model sums,
the embedding or the head (model.py), or decode-time state (inference.py).
"""

from __future__ import annotations

from .arch import MLA, Attention, DenseMLP, Layer


def _mixer_parts(m, hidden: int) -> dict[str, tuple[int, int, int]]:
    """{group: (params, active params, matmul MACs per token)} of a token mixer (norms excluded)."""
    D = hidden
    if isinstance(m, Attention):
        q, kv = m.heads * m.head_dim, m.kv_heads * m.head_dim
        w = D * q + 2 * D * kv + q * D  # q_proj, k_proj, v_proj, o_proj
        extra = (q + 2 * kv + D if m.bias else 0) + (2 * m.head_dim if m.qk_norm else 0)
        return {"attention": (w + extra, w + extra, w)}
    if isinstance(m, MLA):
        H = m.heads
        if m.q_lora_rank:
            wq = D * m.q_lora_rank + m.q_lora_rank * H * m.qk_head_dim  # q_a_proj, q_b_proj
            nq = m.q_lora_rank  # q_a_layernorm
        else:
            wq, nq = D * H * m.qk_head_dim, 0
        wkv = D * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * H * (m.qk_nope_head_dim + m.v_head_dim)
        wo = H * m.v_head_dim * D
        b = (m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim + D) if m.bias else 0
        w = wq + wkv + wo
        p = w + nq + m.kv_lora_rank + b  # + kv_a_layernorm
        return {"attention": (p, p, w)}
    # ShortConv: in_proj [3D, D], conv weight [D, 1, L], out_proj [D, D]; the taps are MACs too.
    w = 3 * D * D + D * D
    taps = D * m.kernel
    b = 5 * D if m.bias else 0
    return {"conv": (w + taps + b, w + taps + b, w + taps)}


def _ffn_parts(f, hidden: int) -> dict[str, tuple[int, int, int]]:
    D = hidden
    if isinstance(f, DenseMLP):
        w = 3 * D * f.width
        b = 2 * f.width + D if f.bias else 0
        return {"mlp": (w + b, w + b, w)}
    one = 3 * D * f.width
    parts = {
        "experts_routed": (f.experts * one, f.top_k * one, f.top_k * one),
        "router": (f.experts * D, f.experts * D, f.experts * D),
    }
    if f.shared_width:
        s = 3 * D * f.shared_width
        parts["experts_shared"] = (s, s, s)
    return parts


def layer_parts(layer: Layer, hidden: int) -> dict[str, tuple[int, int, int]]:
    """{group: (params, active params, MACs per token)} for one layer, its two RMSNorms under 'norms'."""
    parts = {"norms": (2 * hidden, 2 * hidden, 0)}
    parts.update(_mixer_parts(layer.mixer, hidden))
    parts.update(_ffn_parts(layer.ffn, hidden))
    return parts


def layer_params(layer: Layer, hidden: int) -> int:
    return sum(p for p, _, _ in layer_parts(layer, hidden).values())


def attention_flops(m, batch: int, seq: int, causal: bool) -> tuple[int, int]:
    """(QK^T FLOPs, PV FLOPs) of B sequences of S tokens attending to each other (naive MLA form)."""
    pairs = batch * (seq * (seq + 1) // 2 if causal else seq * seq)  # (query, key) pairs computed
    if isinstance(m, Attention):
        return 2 * m.heads * m.head_dim * pairs, 2 * m.heads * m.head_dim * pairs
    if isinstance(m, MLA):
        return 2 * m.heads * m.qk_head_dim * pairs, 2 * m.heads * m.v_head_dim * pairs
    return 0, 0


def layer_forward_flops(layer: Layer, hidden: int, batch: int, seq: int, causal: bool = False) -> dict[str, int]:
    """FLOPs of one layer's forward over B x S tokens, by group (2 per multiply-add)."""
    tokens = batch * seq
    out = {g: 2 * tokens * macs for g, (_, _, macs) in layer_parts(layer, hidden).items() if macs}
    qk, av = attention_flops(layer.mixer, batch, seq, causal)
    if qk:
        out["attention_scores"] = qk
        out["attention_values"] = av
    out["total"] = sum(out.values())
    return out


def _mixer_acts(m, D: int, S: int) -> dict[str, int]:
    """Activation elements per token kept by the mixer (S enters through the score matrices)."""
    if isinstance(m, Attention):
        q, kv = m.heads * m.head_dim, m.kv_heads * m.head_dim
        return {"attn_norm": D, "q": q, "k": kv, "v": kv, "scores": m.heads * S, "probs": m.heads * S,
                "attn_out": q, "o_proj": D, "residual": D}
    if isinstance(m, MLA):
        H = m.heads
        a = {"attn_norm": D}
        if m.q_lora_rank:
            a.update(q_a=m.q_lora_rank, q_a_norm=m.q_lora_rank)
        a.update(q=H * m.qk_head_dim, kv_a=m.kv_lora_rank + m.qk_rope_head_dim, kv_a_norm=m.kv_lora_rank,
                 kv_b=H * (m.qk_nope_head_dim + m.v_head_dim), k=H * m.qk_head_dim,
                 scores=H * S, probs=H * S, attn_out=H * m.v_head_dim, o_proj=D, residual=D)
        return a
    return {"op_norm": D, "in_proj": 3 * D, "bx": D, "conv": D, "c_gate": D, "out_proj": D, "residual": D}


def _ffn_acts(f, D: int) -> dict[str, int]:
    if isinstance(f, DenseMLP):
        return {"ffn_norm": D, "gate": f.width, "up": f.width, "act": f.width, "gated": f.width,
                "down": D, "output": D}
    a = {"ffn_norm": D, "router_logits": f.experts, "router_scores": f.experts,
         "dispatched": f.top_k * D, "expert_hidden": 4 * f.top_k * f.width, "expert_out": f.top_k * D}
    if f.shared_width:
        a.update(shared_hidden=4 * f.shared_width, shared_out=D)
    a.update(combined=D, output=D)
    return a


def layer_activation_elements(layer: Layer, hidden: int, batch: int, seq: int) -> dict[str, int]:
    """Elements of every intermediate tensor one layer's forward produces over B x S tokens.

    Convention: each tensor counted once and none freed before the layer ends (what a checkpointed
    layer holds when it is recomputed for its backward pass); RoPE and the LFM2 q/k norms work in
    place; GQA keys/values are not expanded; the score and probability matrices are materialized
    (no fused/flash attention); the layer's input is not included (it is the checkpoint).
    """
    per_tok = {**_mixer_acts(layer.mixer, hidden, seq), **_ffn_acts(layer.ffn, hidden)}
    return {k: batch * seq * v for k, v in per_tok.items()}


def layer_peak_memory(layer: Layer, hidden: int, batch: int, seq: int, dtype_bytes: int = 2) -> dict[str, int]:
    """Bytes held at the end of one layer's forward with checkpoints at layer boundaries."""
    acts = sum(layer_activation_elements(layer, hidden, batch, seq).values())
    out = {
        "weights": layer_params(layer, hidden) * dtype_bytes,
        "input": batch * seq * hidden * dtype_bytes,
        "activations": acts * dtype_bytes,
    }
    out["total"] = sum(out.values())
    return out
