"""The engine's weights: read from a checkpoint once, laid out for the kernels, on a backend.

One builder for every backend: each tensor (or fused stack) is prepared on the host in the
storage dtype, then handed to `backend.upload` (no copy on host backends; one upload per tensor
on the GPU, so at most one layer's expert stack is held twice at a time).
Every tensor is checked for NaN/Inf in the storage dtype as it is loaded (`finite`; about
10 GB/s, see checkpoint.all_finite).
Layout: attention q | k | v projections fused into one [(H + 2 Hkv) Dh, D] matrix (one GEMM,
then the qkv_split op); dense gate | up fused [2F, D]; experts stacked [E, 2Fe, D] (gate | up)
and [E, D, Fe]. Projections are float32, bf16 bits (uint16) or float16; norms, conv taps,
router and expert_bias always float32 (expert selection must not change with the dtype).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from .checkpoint import Checkpoint, all_finite
from .errors import CheckpointError

DTYPES = ("float32", "bfloat16", "float16")


class LayerWeights:
    """One layer's weights, prepared for the kernels (fused and stacked where it saves calls)."""

    __slots__ = ("op_norm", "ffn_norm", "wqkv", "wo", "q_norm", "k_norm", "in_proj", "conv_w", "out_proj",
                 "w13", "w2", "gate", "expert_bias", "ew13", "ew2")

    def __init__(self):
        for s in self.__slots__:
            setattr(self, s, None)

    def copy(self) -> "LayerWeights":
        """A new layer object holding the same arrays (to replace some of them privately)."""
        c = LayerWeights()
        for s in self.__slots__:
            setattr(c, s, getattr(self, s))
        return c


def finite(ck: Checkpoint, name: str, a: np.ndarray, dtype: str) -> np.ndarray:
    """`a` (tensor `name` of `ck` in the engine's storage dtype), after checking that it holds no
    NaN or Inf: a non-finite weight makes every logit it reaches NaN, so it is refused at load
    (CheckpointError naming the tensor) instead of producing wrong tokens."""
    if all_finite(a):
        return a
    src = np.asarray(ck.f32(name))
    bad = np.flatnonzero(~np.isfinite(src))
    if bad.size:
        i = np.unravel_index(bad[0], src.shape)
        raise CheckpointError(f"{ck.path}: tensor {name!r} holds {bad.size} non-finite value(s) (NaN/Inf), the "
                              f"first at index {list(map(int, i))}: {src[i]}")
    big = float(np.abs(src).max())
    raise CheckpointError(f"{ck.path}: tensor {name!r} does not fit {dtype} (its largest |value| {big:.4g} "
                          "overflows to Inf); load it with a wider dtype (float32, or bfloat16 instead of float16)")


class Weights:
    """All weights of a model in the engine's storage dtype, on `backend`."""

    def __init__(self, ck: Checkpoint, dtype: str, backend, verbose: bool = False):
        cfg = ck.config
        self.dtype = dtype
        if dtype == "float32":
            conv = lambda n: np.ascontiguousarray(ck.f32(n))  # noqa: E731
        elif dtype == "bfloat16":
            conv = lambda n: np.ascontiguousarray(ck.bf16(n))  # noqa: E731
        else:
            def conv(n):  # an overflow to Inf is reported by `finite`, naming the tensor
                with np.errstate(over="ignore"):
                    return np.ascontiguousarray(ck.f32(n).astype(np.float16))
        host = lambda n: finite(ck, n, conv(n), dtype)  # noqa: E731
        up = backend.upload
        proj = lambda n: up(host(n))  # noqa: E731
        f32 = lambda n: up(finite(ck, n, np.ascontiguousarray(ck.f32(n), dtype=np.float32), "float32"))  # noqa: E731
        self.embed = proj("model.embed_tokens.weight")  # [V, D]
        self.head = self.embed if cfg.tie_word_embeddings else proj("lm_head.weight")  # [V, D]
        self.final_norm = f32("model.embedding_norm.weight")
        self.layers: list[LayerWeights] = []
        t0, last = time.time(), 0
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            lw = LayerWeights()
            lw.op_norm, lw.ffn_norm = f32(p + "operator_norm.weight"), f32(p + "ffn_norm.weight")
            if cfg.is_attention_layer(i):
                a = p + "self_attn."
                lw.wqkv = up(np.concatenate([host(a + "q_proj.weight"), host(a + "k_proj.weight"),
                                             host(a + "v_proj.weight")]))  # [(H + 2 Hkv) Dh, D]
                lw.wo = proj(a + "out_proj.weight")
                lw.q_norm, lw.k_norm = f32(a + "q_layernorm.weight"), f32(a + "k_layernorm.weight")
            else:
                c = p + "conv."
                lw.in_proj, lw.out_proj = proj(c + "in_proj.weight"), proj(c + "out_proj.weight")
                taps = finite(ck, c + "conv.weight", np.ascontiguousarray(ck.f32(c + "conv.weight"), dtype=np.float32),
                              "float32")
                lw.conv_w = up(np.ascontiguousarray(taps.reshape(cfg.hidden_size, cfg.conv_L_cache)))  # [D, 1, L] -> [D, L]
            f = p + "feed_forward."
            if cfg.is_moe_layer(i):
                lw.gate = f32(f + "gate.weight")  # [E, D]
                lw.expert_bias = f32(f + "expert_bias") if cfg.use_expert_bias else None
                e_ = range(cfg.num_experts)
                lw.ew13 = up(np.stack([np.concatenate([host(f"{f}experts.{e}.w1.weight"),
                                                       host(f"{f}experts.{e}.w3.weight")]) for e in e_]))  # [E, 2Fe, D]
                lw.ew2 = up(np.stack([host(f"{f}experts.{e}.w2.weight") for e in e_]))  # [E, D, Fe]
            else:
                lw.w13 = up(np.concatenate([host(f + "w1.weight"), host(f + "w3.weight")]))  # [2F, D]
                lw.w2 = proj(f + "w2.weight")
            self.layers.append(lw)
            pct = 100 * (i + 1) // cfg.num_hidden_layers
            if verbose and pct >= last + 25:
                last = pct
                print(f"[lfm2engine] loading weights ({backend.name}): {pct}% ({time.time() - t0:.1f} s)",
                      file=sys.stderr, flush=True)

    def with_layers(self, layers: list[LayerWeights]) -> "Weights":
        """A copy of these weights whose layer list is `layers` (the other tensors shared)."""
        import copy

        w = copy.copy(self)
        w.layers = layers
        return w


__all__ = ["DTYPES", "LayerWeights", "Weights"]
