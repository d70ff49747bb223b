"""Plain NumPy reference of LFM2 / LFM2-MoE: one function per op and per block.

The in-project oracle for every C++/CUDA kernel and for the whole engine. It is slow on purpose
and never on a hot path. It follows docs/MODEL.md line by line and computes in the dtype
of its inputs (float32, or float64 for a tighter oracle). It must match transformers' eager
Lfm2MoeForCausalLM / Lfm2ForCausalLM.

Shape legend (row-major, NumPy order): T tokens, S cache length, D hidden, H / Hkv query / KV
heads, Dh head dim, F dense FFN width, Fe expert FFN width, E experts, K top-k, L conv kernel
length, V vocab.
"""

from __future__ import annotations

import numpy as np

from .config import LFM2Config

# ----------------------------------------------------------------------------- ops


def embedding(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """table [V, D], ids [T] int -> [T, D] (row gather, no scaling)."""
    return table[np.asarray(ids, dtype=np.int64)]


def gemm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [T, K] · w[N, K]ᵀ -> [T, N] (every Linear; weights stored [out, in])."""
    return x @ w.T


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x [..., D], w [D] -> w ⊙ x / sqrt(mean(x²) + eps) (weight used as stored, not 1 + w).

    A finite row whose mean square overflows (RMS above ~1.8e19 in float32) is rescaled by
    m = max|x|: sqrt(mean((x/m)²) + eps/m²)·m, as the C++ ops do, instead of normalizing to zero."""
    with np.errstate(over="ignore"):
        ms = np.mean(x * x, axis=-1, keepdims=True)
    den = np.sqrt(ms + eps)
    over = np.isinf(ms) & np.isfinite(x).all(axis=-1, keepdims=True)
    if over.any():
        m = np.where(over, np.abs(x).max(axis=-1, keepdims=True), 1)
        y = x / m
        with np.errstate(over="ignore"):  # m² may overflow: eps / inf = 0, as in the C++ ops
            den = np.where(over, m * np.sqrt(np.mean(y * y, axis=-1, keepdims=True) + eps / (m * m)), den)
    return (x / den) * w


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """NeoX (rotate-half) RoPE. x [T, H, Dh], positions [T] -> [T, H, Dh]; pairs are (j, j + Dh/2)."""
    dh = x.shape[-1]
    half = dh // 2
    inv_freq = theta ** (-np.arange(0, half, dtype=np.float64) * 2.0 / dh)  # [Dh/2]
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, Dh/2]
    cos = np.cos(ang).astype(x.dtype)[:, None, :]  # [T, 1, Dh/2]
    sin = np.sin(ang).astype(x.dtype)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Causal GQA attention over a cache.

    q [T, H, Dh]; k, v [S, Hkv, Dh] (the whole cache, new tokens included); positions [T]:
    token t sees cache rows 0..positions[t]. Query head n uses KV head n // (H / Hkv).
    Returns [T, H, Dh].
    """
    t_, h, dh = q.shape
    hkv = k.shape[1]
    g = h // hkv
    kk = np.repeat(k, g, axis=1)  # [S, Hkv, Dh] -> [S, H, Dh] (repeat-interleave)
    vv = np.repeat(v, g, axis=1)
    scores = np.einsum("thd,shd->hts", q, kk) / np.sqrt(dh).astype(q.dtype)  # [H, T, S]
    s_idx = np.arange(k.shape[0])
    mask = s_idx[None, :] > np.asarray(positions)[:, None]  # [T, S]
    scores = np.where(mask[None], -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, vv).astype(q.dtype)  # [T, H, Dh]


def shortconv(bcx: np.ndarray, conv_w: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gated depthwise causal conv of one sequence.

    bcx [T, 3D] (in_proj output, split order B, C, x); conv_w [D, L] (last tap = current token);
    state [L-1, D] (the previous L-1 values of u = B ⊙ x, oldest first).
    Returns (y [T, D] = C ⊙ conv(u), new_state [L-1, D]).
    """
    d = bcx.shape[1] // 3
    b, c, xs = bcx[:, :d], bcx[:, d : 2 * d], bcx[:, 2 * d :]  # [T, 3D] -> 3 × [T, D]
    u = b * xs
    lm1 = conv_w.shape[1] - 1
    full = np.concatenate([state, u], axis=0)  # [L-1+T, D]
    t_ = u.shape[0]
    z = np.zeros_like(u)
    for j in range(lm1 + 1):
        z += conv_w[:, j][None, :] * full[j : j + t_]
    return c * z, full[full.shape[0] - lm1 :].copy()


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """SiLU(gate) ⊙ up; both [T, F]."""
    return gate / (1.0 + np.exp(-gate)) * up


def moe_route(router_logits: np.ndarray, expert_bias: np.ndarray | None, k: int, norm_topk: bool,
              scale: float, flip=()) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid router. router_logits [T, E], expert_bias [E] or None.

    Selection uses sigmoid + bias (ties: lower expert id first); weights use the unbiased sigmoid,
    renormalized over the top-k (+1e-6 as in HF) and scaled. Returns (ids [T, K] int32 in
    selection order, weights [T, K]). `flip`: tokens whose k-th choice is replaced by their
    (k+1)-th (the other side of a near-tie; RoutingLog).
    """
    s = 1.0 / (1.0 + np.exp(-router_logits.astype(np.float64)))
    sel = s + (expert_bias.astype(np.float64)[None, :] if expert_bias is not None else 0.0)
    order = np.argsort(-sel, axis=-1, kind="stable")
    ids = order[:, :k].astype(np.int32)  # [T, K]
    for t in flip:
        ids[t, k - 1] = order[t, k]
    w = np.take_along_axis(s, ids, axis=-1)
    if norm_topk:
        w = w / (w.sum(axis=-1, keepdims=True) + 1e-6)
    w = w * scale
    return ids, w.astype(router_logits.dtype)


def moe_experts(x: np.ndarray, ids: np.ndarray, weights: np.ndarray, w1: np.ndarray, w3: np.ndarray,
                w2: np.ndarray) -> np.ndarray:
    """x [T, D]; ids, weights [T, K]; w1, w3 [E, Fe, D]; w2 [E, D, Fe] -> [T, D].

    A token's expert outputs are summed in top-k slot order."""
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = ids[t, j]
            h = swiglu(w1[e] @ x[t], w3[e] @ x[t])
            out[t] += weights[t, j] * (w2[e] @ h)
    return out


# ----------------------------------------------------------------------------- blocks


class ReferenceCache:
    """Decode state of one sequence: K/V per attention layer, last L-1 values of u per conv layer."""

    def __init__(self, cfg: LFM2Config, dtype=np.float32):
        self.cfg = cfg
        self.length = 0
        self.k = {i: np.zeros((0, cfg.num_key_value_heads, cfg.head_dim), dtype) for i in cfg.attention_layers}
        self.v = {i: np.zeros((0, cfg.num_key_value_heads, cfg.head_dim), dtype) for i in cfg.attention_layers}
        self.conv = {i: np.zeros((cfg.conv_L_cache - 1, cfg.hidden_size), dtype) for i in cfg.conv_layers}


def attention_block(wts: dict, cfg: LFM2Config, i: int, h: np.ndarray, cache: ReferenceCache,
                    positions: np.ndarray) -> np.ndarray:
    p = f"model.layers.{i}.self_attn."
    t_ = h.shape[0]
    nh, nkv, dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = gemm(h, wts[p + "q_proj.weight"]).reshape(t_, nh, dh)  # [T, H·Dh] -> [T, H, Dh]
    k = gemm(h, wts[p + "k_proj.weight"]).reshape(t_, nkv, dh)
    v = gemm(h, wts[p + "v_proj.weight"]).reshape(t_, nkv, dh)
    q = rope(rmsnorm(q, wts[p + "q_layernorm.weight"], cfg.norm_eps), positions, cfg.rope_theta)
    k = rope(rmsnorm(k, wts[p + "k_layernorm.weight"], cfg.norm_eps), positions, cfg.rope_theta)
    cache.k[i] = np.concatenate([cache.k[i], k], axis=0)  # [S, Hkv, Dh]
    cache.v[i] = np.concatenate([cache.v[i], v], axis=0)
    o = attention(q, cache.k[i], cache.v[i], positions).reshape(t_, nh * dh)  # [T, H, Dh] -> [T, D]
    return gemm(o, wts[p + "out_proj.weight"])


def shortconv_block(wts: dict, cfg: LFM2Config, i: int, h: np.ndarray, cache: ReferenceCache) -> np.ndarray:
    p = f"model.layers.{i}.conv."
    bcx = gemm(h, wts[p + "in_proj.weight"])  # [T, 3D]
    conv_w = wts[p + "conv.weight"].reshape(cfg.hidden_size, cfg.conv_L_cache)  # [D, 1, L] -> [D, L]
    y, cache.conv[i] = shortconv(bcx, conv_w, cache.conv[i])
    return gemm(y, wts[p + "out_proj.weight"])


def dense_ffn(wts: dict, cfg: LFM2Config, i: int, h: np.ndarray) -> np.ndarray:
    p = f"model.layers.{i}.feed_forward."
    return gemm(swiglu(gemm(h, wts[p + "w1.weight"]), gemm(h, wts[p + "w3.weight"])), wts[p + "w2.weight"])


def stacked_experts(wts: dict, cfg: LFM2Config, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-expert HF tensors of layer i stacked to w1, w3 [E, Fe, D] and w2 [E, D, Fe]."""
    p = f"model.layers.{i}.feed_forward.experts."
    e_ = range(cfg.num_experts)
    return tuple(np.stack([wts[f"{p}{e}.{n}.weight"] for e in e_]) for n in ("w1", "w3", "w2"))


class RoutingLog:
    """What forward() records of each MoE layer's routing, and which decisions it flips.

    For layer i: margin[i] [T] = the gap between the k-th and (k+1)-th selection score of each
    token, and bound[i] [T] = how far two correct float32 computations of those two scores can
    differ: sigmoid' <= 1/4 times the worst-case error of a length-D float32 dot product in any
    summation order, gamma_D = D u / (1 - D u) (u = 2^-24) times sum_d |h_d g_ed|, for each of the
    two experts. A token with margin < bound sits on a near-tie: another correct implementation may
    pick the (k+1)-th expert. `flip` = {(layer, token)} makes forward() pick it (docs/validation.md)."""

    def __init__(self, flip=()):
        self.flip = set(flip)
        self.margin: dict[int, np.ndarray] = {}
        self.bound: dict[int, np.ndarray] = {}

    def record(self, i: int, h: np.ndarray, gate: np.ndarray, logits: np.ndarray, bias, k: int) -> None:
        s = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        sel = s + (bias.astype(np.float64)[None, :] if bias is not None else 0.0)
        order = np.argsort(-sel, axis=-1, kind="stable")
        if order.shape[1] <= k:  # every expert is selected: no decision to tie on
            return
        a, b = order[:, k - 1], order[:, k]
        t = np.arange(h.shape[0])
        self.margin[i] = sel[t, a] - sel[t, b]
        u = 2.0**-24
        n = h.shape[1]
        gamma = n * u / (1 - n * u)
        mag = np.abs(h.astype(np.float64)) @ np.abs(gate.astype(np.float64)).T  # [T, E]: sum_d |h_d g_ed|
        self.bound[i] = 0.25 * gamma * (mag[t, a] + mag[t, b])

    def near_ties(self) -> list[tuple[int, int, float, float]]:
        """(layer, token, margin, bound) of every decision with margin < bound, smallest margin first."""
        out = [(i, int(t), float(self.margin[i][t]), float(self.bound[i][t]))
               for i in self.margin for t in np.nonzero(self.margin[i] < self.bound[i])[0]]
        return sorted(out, key=lambda x: x[2])


def moe_block(wts: dict, cfg: LFM2Config, i: int, h: np.ndarray, routing: RoutingLog | None = None) -> np.ndarray:
    p = f"model.layers.{i}.feed_forward."
    logits = gemm(h, wts[p + "gate.weight"])  # [T, E]
    bias = wts.get(p + "expert_bias") if cfg.use_expert_bias else None
    k = cfg.num_experts_per_tok
    flip = ()
    if routing is not None:
        routing.record(i, h, wts[p + "gate.weight"], logits, bias, k)
        flip = [t for (li, t) in routing.flip if li == i]
    ids, w = moe_route(logits, bias, k, cfg.norm_topk_prob, cfg.routed_scaling_factor, flip)
    w1, w3, w2 = stacked_experts(wts, cfg, i)
    return moe_experts(h, ids, w, w1, w3, w2)


def lm_head_weight(wts: dict) -> np.ndarray:
    return wts.get("lm_head.weight", wts["model.embed_tokens.weight"])


def forward(wts: dict, cfg: LFM2Config, ids, cache: ReferenceCache | None = None,
            all_logits: bool = False, routing: RoutingLog | None = None) -> np.ndarray:
    """Run one sequence's new tokens `ids` [T] through the model, appending to `cache`.

    Returns logits [T, V] if all_logits else the last position's [V]. `routing` records every
    MoE routing decision's margin (and flips the decisions it lists)."""
    if cache is None:
        cache = ReferenceCache(cfg, wts["model.embed_tokens.weight"].dtype)
    ids = np.asarray(ids, dtype=np.int64)
    positions = np.arange(cache.length, cache.length + len(ids))
    x = embedding(wts["model.embed_tokens.weight"], ids)  # [T, D]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = rmsnorm(x, wts[p + "operator_norm.weight"], cfg.norm_eps)
        if cfg.is_attention_layer(i):
            x = x + attention_block(wts, cfg, i, h, cache, positions)
        else:
            x = x + shortconv_block(wts, cfg, i, h, cache)
        h2 = rmsnorm(x, wts[p + "ffn_norm.weight"], cfg.norm_eps)
        x = x + (moe_block(wts, cfg, i, h2, routing) if cfg.is_moe_layer(i) else dense_ffn(wts, cfg, i, h2))
    cache.length += len(ids)
    x = rmsnorm(x if all_logits else x[-1:], wts["model.embedding_norm.weight"], cfg.norm_eps)
    logits = gemm(x, lm_head_weight(wts))  # [T, V]
    return logits if all_logits else logits[0]


def greedy(wts: dict, cfg: LFM2Config, prompt, max_new_tokens: int) -> list[int]:
    """Greedy continuation of one prompt (prefill, then one token per step)."""
    cache = ReferenceCache(cfg, wts["model.embed_tokens.weight"].dtype)
    logits = forward(wts, cfg, prompt, cache)
    out = []
    for _ in range(max_new_tokens):
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = forward(wts, cfg, [tok], cache)
    return out
