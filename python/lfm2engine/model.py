"""The engine model: LFM2 / LFM2-MoE forward composed from `_core` ops, in reference order.

Reads like reference.py (same block names, same loop: norm, operator, residual, ffn norm, dense
or MoE FFN, residual) but runs a flattened, ragged batch of tokens from many sequences at once
over device-resident weights and per-session caches. Not the place for parallel logic: the MoE
block goes through `Engine.moe_impl`, which the parallel executors replace (parallel/).
User input is validated here, before any C++ call (STYLE.md §7).
"""

from __future__ import annotations

import os
import time

import numpy as np

from .checkpoint import Checkpoint
from .config import LFM2Config
from .errors import BackendError, InputError

DTYPES = ("float32", "bfloat16", "float16")


def _core_cpu():
    try:
        from . import _core
    except ImportError as e:  # pragma: no cover - depends on the build
        raise BackendError(
            f"the compiled extension lfm2engine._core is not available ({e}); "
            "hint: install the package with `pip install -e .` so CMake builds it"
        ) from None
    return _core


class LayerWeights:
    """One layer's weights, prepared for the kernels (fused and stacked where it saves calls)."""

    __slots__ = ("op_norm", "ffn_norm", "wqkv", "wo", "q_norm", "k_norm", "in_proj", "conv_w", "out_proj",
                 "w13", "w2", "gate", "expert_bias", "ew13", "ew2")

    def __init__(self):
        for s in self.__slots__:
            setattr(self, s, None)


class Weights:
    """All weights in the engine's storage dtype: projections f32, bf16 bits (uint16) or f16;
    norms, conv taps, router and expert_bias always f32 (selection must not change with dtype)."""

    def __init__(self, ck: Checkpoint, dtype: str, verbose: bool = False):
        cfg = ck.config
        self.dtype = dtype
        if dtype == "float32":
            proj = lambda n: np.ascontiguousarray(ck.f32(n))  # noqa: E731
        elif dtype == "bfloat16":
            proj = lambda n: np.ascontiguousarray(ck.bf16(n))  # noqa: E731
        else:
            proj = lambda n: np.ascontiguousarray(ck.f32(n).astype(np.float16))  # noqa: E731
        f32 = lambda n: np.ascontiguousarray(ck.f32(n), dtype=np.float32)  # noqa: E731
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
                lw.wqkv = np.concatenate([proj(a + "q_proj.weight"), proj(a + "k_proj.weight"),
                                          proj(a + "v_proj.weight")])  # [(H + 2 Hkv) Dh, D]
                lw.wo = proj(a + "out_proj.weight")
                lw.q_norm, lw.k_norm = f32(a + "q_layernorm.weight"), f32(a + "k_layernorm.weight")
            else:
                c = p + "conv."
                lw.in_proj, lw.out_proj = proj(c + "in_proj.weight"), proj(c + "out_proj.weight")
                lw.conv_w = np.ascontiguousarray(f32(c + "conv.weight").reshape(cfg.hidden_size, cfg.conv_L_cache))
            f = p + "feed_forward."
            if cfg.is_moe_layer(i):
                lw.gate = f32(f + "gate.weight")  # [E, D]
                lw.expert_bias = f32(f + "expert_bias") if cfg.use_expert_bias else None
                e_ = range(cfg.num_experts)
                lw.ew13 = np.stack([np.concatenate([proj(f"{f}experts.{e}.w1.weight"),
                                                    proj(f"{f}experts.{e}.w3.weight")]) for e in e_])  # [E, 2Fe, D]
                lw.ew2 = np.stack([proj(f"{f}experts.{e}.w2.weight") for e in e_])  # [E, D, Fe]
            else:
                lw.w13 = np.concatenate([proj(f + "w1.weight"), proj(f + "w3.weight")])  # [2F, D]
                lw.w2 = proj(f + "w2.weight")
            self.layers.append(lw)
            pct = 100 * (i + 1) // cfg.num_hidden_layers
            if verbose and pct >= last + 25:
                last = pct
                print(f"[lfm2engine] loading weights: {pct}% ({time.time() - t0:.1f} s)",
                      file=__import__("sys").stderr, flush=True)


class Engine:
    """Single-process LFM2 engine on the CPU (CUDA: see the cuda backend issue)."""

    def __init__(self, cfg: LFM2Config, weights: Weights, device: str = "cpu", fingerprint: str = ""):
        self.config = cfg
        self.w = weights
        self.device = device
        self.dtype = weights.dtype
        self.fingerprint = fingerprint
        self._core = _core_cpu()
        self.ops = self._core.cpu
        self.moe_impl = self.local_moe  # replaced by parallel executors
        self.skip_layers: frozenset[int] = frozenset()

    def derive(self, top_k: int | None = None, skip_layers=()) -> "Engine":
        """A cheaper view sharing this engine's weights, for self-speculative drafts: fewer active
        experts per token (top_k) and/or whole layers skipped (residual passes through)."""
        import copy
        import dataclasses

        e = copy.copy(self)
        if top_k is not None:
            if not self.config.is_moe or not 1 <= top_k <= self.config.num_experts:
                raise InputError(f"derive: top_k={top_k} needs an MoE model with >= {top_k} experts")
            e.config = dataclasses.replace(self.config, num_experts_per_tok=int(top_k))
        bad = [i for i in skip_layers if not 0 <= int(i) < self.config.num_hidden_layers]
        if bad:
            raise InputError(f"derive: skip_layers {bad} are not layer indices of a "
                             f"{self.config.num_hidden_layers}-layer model")
        e.skip_layers = frozenset(int(i) for i in skip_layers)
        e.moe_impl = e.local_moe
        return e

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: str = "float32", device: str = "cpu",
                        num_threads: int | None = None, verbose: bool = False) -> "Engine":
        if dtype not in DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported; choose from {', '.join(DTYPES)}")
        if device != "cpu":
            if device == "cuda":
                from .cuda_model import from_pretrained as cuda_from_pretrained

                return cuda_from_pretrained(path, dtype, verbose=verbose)
            raise InputError(f"device {device!r} is not supported; choose 'cpu' or 'cuda'")
        ck = Checkpoint(path)
        core = _core_cpu()
        if num_threads:
            core.set_num_threads(int(num_threads))
        w = Weights(ck, dtype, verbose=verbose)
        return cls(ck.config, w, device, ck.fingerprint())

    # ------------------------------------------------------------------ validation
    def check_prompts(self, batch, max_new_tokens: int = 0) -> list[np.ndarray]:
        cfg = self.config
        if isinstance(batch, np.ndarray) and batch.ndim == 1:
            batch = [batch]
        if not isinstance(batch, (list, tuple, np.ndarray)) or len(batch) == 0:
            raise InputError("batch must be a non-empty list of token-id lists")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be an integer >= 0, found {max_new_tokens!r}")
        out = []
        for b, p in enumerate(batch):
            try:
                a = np.asarray(p)
            except (TypeError, ValueError):
                raise InputError(f"prompt {b} is not a list of token ids") from None
            if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
                raise InputError(f"prompt {b} must be a 1-D list of integer token ids, found {a.dtype} {a.shape}")
            if a.size == 0:
                raise InputError(f"prompt {b} is empty; at least one token id is needed")
            bad = np.nonzero((a < 0) | (a >= cfg.vocab_size))[0]
            if bad.size:
                raise InputError(f"prompt {b}: token id {int(a[bad[0]])} at position {int(bad[0])} is outside the "
                                 f"vocabulary [0, {cfg.vocab_size})")
            if a.size + max_new_tokens > cfg.max_position_embeddings:
                raise InputError(f"prompt {b}: {a.size} prompt tokens + {max_new_tokens} new tokens exceed the "
                                 f"context of {cfg.max_position_embeddings} (max_position_embeddings)")
            out.append(a.astype(np.int32))
        return out

    # ------------------------------------------------------------------ public API
    def session(self, batch_size: int, capacity: int, rollback: int = 0) -> "Session":
        return Session(self, batch_size, capacity, rollback)

    def logits(self, batch) -> np.ndarray:
        """Last-position logits [B, V] f32 of each prompt (different lengths allowed)."""
        prompts = self.check_prompts(batch)
        s = self.session(len(prompts), max(len(p) for p in prompts))
        return s.prefill(prompts)

    def generate(self, batch, max_new_tokens: int = 16, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = False,
                 request_ids=None, on_step=None) -> list[list[int]]:
        """Continue every prompt; greedy unless temperature > 0. Sampling draws from a generator per
        request (seeded by (seed, request id)), so the tokens do not depend on the batch split."""
        from .sampling import Sampler

        prompts = self.check_prompts(batch, max_new_tokens)
        sampler = Sampler(temperature, top_k, top_p, seed,
                          request_ids if request_ids is not None else range(len(prompts)))
        n = len(prompts)
        out: list[list[int]] = [[] for _ in range(n)]
        if max_new_tokens == 0:
            return out
        s = self.session(n, max(len(p) for p in prompts) + max_new_tokens)
        logits = s.prefill(prompts)
        live = list(range(n))
        eos = set(self.config.eos_ids) if stop_at_eos else set()
        for step in range(max_new_tokens):
            toks = sampler.pick(logits, live)
            nxt = []
            for j, b in enumerate(live):
                out[b].append(int(toks[j]))
                if int(toks[j]) not in eos and step + 1 < max_new_tokens:
                    nxt.append((b, int(toks[j])))
            if on_step is not None:
                on_step(step + 1, len(live))
            if not nxt:
                break
            live = [b for b, _ in nxt]
            logits = s.forward(live, [[t] for _, t in nxt])
        return out

    # ------------------------------------------------------------------ profiling
    def fused_model(self):
        """The fused C++ layer loop (`_core.cpu.Model`) serving this engine's plain forward passes,
        built on first use (keyed on the config, so derive(top_k=...) gets its own)."""
        fused = getattr(self, "_fused", None)
        if fused is None or fused[0] is not self.config:
            fused = self._fused = (self.config, self.ops.Model(self.config, self.w))
        return fused[1]

    def set_profiling(self, on: bool) -> None:
        """Start (zeroing the sums) or stop (keeping them) the per-stage wall-clock profile."""
        self.fused_model().set_profiling(bool(on))

    def profile(self) -> dict:
        """{stage: seconds summed over the profiled forward calls, 'calls': count}."""
        return self.fused_model().profile()

    # ------------------------------------------------------------------ blocks (reference order)
    def local_moe(self, i: int, h: np.ndarray) -> np.ndarray:
        """MoE FFN of layer i on this process: route -> grouped experts -> combine. h [T, D]."""
        cfg, lw, ops = self.config, self.w.layers[i], self.ops
        ids, wts = self.route(i, h)
        y = np.empty_like(h)
        ops.moe_experts(y, h, ids, wts, lw.ew13, lw.ew2)
        return y

    def route(self, i: int, h: np.ndarray):
        cfg, lw, ops = self.config, self.w.layers[i], self.ops
        t_ = h.shape[0]
        logits = np.empty((t_, cfg.num_experts), np.float32)
        ops.gemm(logits, h, lw.gate)
        ids = np.empty((t_, cfg.num_experts_per_tok), np.int32)
        wts = np.empty((t_, cfg.num_experts_per_tok), np.float32)
        ops.moe_route(ids, wts, logits, lw.expert_bias, cfg.norm_topk_prob, cfg.routed_scaling_factor)
        return ids, wts

    def dense_ffn(self, i: int, h: np.ndarray) -> np.ndarray:
        lw, ops = self.w.layers[i], self.ops
        f = lw.w2.shape[1]
        gu = np.empty((h.shape[0], 2 * f), np.float32)
        ops.gemm(gu, h, lw.w13)  # [T, 2F]
        a = np.empty((h.shape[0], f), np.float32)
        ops.swiglu(a, gu)
        y = np.empty_like(h)
        ops.gemm(y, a, lw.w2)
        return y

    def attention_block(self, i: int, h: np.ndarray, st: "Session", seq, pos, mask=None,
                        rope_pos=None) -> np.ndarray:
        """pos: cache slot of each token; rope_pos: its RoPE position (differs only inside a tree)."""
        cfg, lw, ops = self.config, self.w.layers[i], self.ops
        t_, nh, nkv, dh = h.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qkv = np.empty((t_, (nh + 2 * nkv) * dh), np.float32)
        ops.gemm(qkv, h, lw.wqkv)
        q = np.ascontiguousarray(qkv[:, : nh * dh]).reshape(t_, nh, dh)  # [T, (H+2Hkv)Dh] -> [T, H, Dh]
        k = np.ascontiguousarray(qkv[:, nh * dh : (nh + nkv) * dh]).reshape(t_, nkv, dh)
        v = np.ascontiguousarray(qkv[:, (nh + nkv) * dh :]).reshape(t_, nkv, dh)
        ops.rmsnorm(q.reshape(t_ * nh, dh), q.reshape(t_ * nh, dh), lw.q_norm, cfg.norm_eps)
        ops.rmsnorm(k.reshape(t_ * nkv, dh), k.reshape(t_ * nkv, dh), lw.k_norm, cfg.norm_eps)
        rp = pos if rope_pos is None else rope_pos
        ops.rope(q, rp, cfg.rope_theta)
        ops.rope(k, rp, cfg.rope_theta)
        ops.kv_write(st.k[i], st.v[i], k, v, seq, pos)
        o = np.empty_like(q)
        ops.attention(o, q, st.k[i], st.v[i], seq, pos, mask)
        y = np.empty_like(h)
        ops.gemm(y, o.reshape(t_, nh * dh), lw.wo)
        return y

    def shortconv_block(self, i: int, h: np.ndarray, st: "Session", seq, u_out=None, parents=None) -> np.ndarray:
        cfg, lw, ops = self.config, self.w.layers[i], self.ops
        t_, d = h.shape
        bcx = np.empty((t_, 3 * d), np.float32)
        ops.gemm(bcx, h, lw.in_proj)
        if parents is None:
            z = np.empty_like(h)
            ops.shortconv(z, bcx, lw.conv_w, st.conv[i], seq, u_out)
        else:
            z = tree_shortconv(bcx, lw.conv_w, st.conv[i][int(seq[0])], parents, u_out)
        y = np.empty_like(h)
        ops.gemm(y, z, lw.out_proj)
        return y

    def forward_tokens(self, st: "Session", ids: np.ndarray, seq: np.ndarray, pos: np.ndarray,
                       out_rows: np.ndarray, mask=None, u_hist=None, rope_pos=None, parents=None) -> np.ndarray:
        """The layer loop over a flattened ragged batch. ids, seq, pos [T] int32 -> logits of the
        rows `out_rows` [R, V]. Tree mode (one sequence): `parents` [T], `rope_pos` [T] and `mask`
        [T, capacity] describe a token tree whose nodes occupy cache slots `pos`."""
        cfg, w, ops = self.config, self.w, self.ops
        if self.moe_impl == self.local_moe and not self.skip_layers and parents is None and mask is None:
            # Fused C++ layer loop (bit-identical to the loop below); keyed on the config (derive()).
            return self.fused_model().forward(ids, seq, pos, st.k, st.v, st.conv, u_hist, np.asarray(out_rows, np.int32))
        t_, d = len(ids), cfg.hidden_size
        x = np.empty((t_, d), np.float32)
        ops.embedding(x, w.embed, ids)
        h = np.empty_like(x)
        for i, lw in enumerate(w.layers):
            if i in self.skip_layers:
                continue
            ops.rmsnorm(h, x, lw.op_norm, cfg.norm_eps)
            if cfg.is_attention_layer(i):
                x += self.attention_block(i, h, st, seq, pos, mask, rope_pos)
            else:
                u = u_hist[i] if u_hist is not None else None
                x += self.shortconv_block(i, h, st, seq, u, parents)
            ops.rmsnorm(h, x, lw.ffn_norm, cfg.norm_eps)
            x += self.moe_impl(i, h) if cfg.is_moe_layer(i) else self.dense_ffn(i, h)
        xl = np.ascontiguousarray(x[out_rows])
        ops.rmsnorm(xl, xl, w.final_norm, cfg.norm_eps)
        logits = np.empty((len(out_rows), cfg.vocab_size), np.float32)
        ops.gemm(logits, xl, w.head)
        return logits


def tree_shortconv(bcx: np.ndarray, conv_w: np.ndarray, state: np.ndarray, parents: np.ndarray,
                   u_out=None) -> np.ndarray:
    """Gated short conv over a token tree: node t's causal window is its ancestor chain (then the
    sequence's conv state [L-1, D]), not the rows before it. bcx [T, 3D] -> C ⊙ z [T, D].
    Trees are small (speculative drafts), so this runs in NumPy; the state is not changed."""
    t_, d = bcx.shape[0], bcx.shape[1] // 3
    b, c, xs = bcx[:, :d], bcx[:, d : 2 * d], bcx[:, 2 * d :]  # [T, 3D] -> 3 × [T, D]
    u = b * xs
    lm1 = conv_w.shape[1] - 1
    z = np.empty_like(u)
    for t in range(t_):
        prev, node = [], int(parents[t])  # the lm1 values before node t, most recent first
        while len(prev) < lm1 and node >= 0:
            prev.append(u[node])
            node = int(parents[node])
        k = lm1 - 1
        while len(prev) < lm1:  # past the root: the sequence's conv state, newest row last
            prev.append(state[k])
            k -= 1
        z[t] = conv_w[:, lm1] * u[t]
        for back in range(1, lm1 + 1):
            z[t] += conv_w[:, lm1 - back] * prev[back - 1]
    if u_out is not None:
        u_out[:] = u
    return c * z


def tree_layout(parents) -> tuple[np.ndarray, list[list[int]]]:
    """Validate a parent array (parents[t] < t, -1 for roots) -> (depth [T], ancestors-or-self per node)."""
    parents = np.asarray(parents, dtype=np.int64)
    depth = np.zeros(len(parents), np.int64)
    anc: list[list[int]] = []
    for t, p in enumerate(parents):
        if not -1 <= p < t:
            raise InputError(f"tree: node {t} has parent {int(p)}; parents must come before their children "
                             "(-1 for a root)")
        depth[t] = 0 if p < 0 else depth[p] + 1
        anc.append(([] if p < 0 else anc[p]) + [t])
    return depth, anc


class Session:
    """Caches of `batch_size` sequences: KV [B, Hkv, S, Dh] per attention layer, conv state
    [B, L-1, D] per conv layer, and (when rollback > 0) the last rollback + L-1 values of u per
    conv layer, so that truncate() can restore the conv state exactly (speculative decoding)."""

    def __init__(self, engine: Engine, batch_size: int, capacity: int, rollback: int = 0):
        cfg = engine.config
        if batch_size < 1 or capacity < 1:
            raise InputError(f"a session needs batch_size >= 1 and capacity >= 1, got {batch_size}, {capacity}")
        if capacity > cfg.max_position_embeddings:
            raise InputError(f"capacity {capacity} exceeds the context of {cfg.max_position_embeddings} tokens")
        self.engine, self.cfg = engine, cfg
        self.batch_size, self.capacity, self.rollback = batch_size, capacity, rollback
        kv = (batch_size, cfg.num_key_value_heads, capacity, cfg.head_dim)
        self.k = {i: np.zeros(kv, np.float32) for i in cfg.attention_layers}
        self.v = {i: np.zeros(kv, np.float32) for i in cfg.attention_layers}
        lm1 = cfg.conv_L_cache - 1
        self.conv = {i: np.zeros((batch_size, lm1, cfg.hidden_size), np.float32) for i in cfg.conv_layers}
        self.window = rollback + lm1
        # u of the last `window` positions per sequence, oldest first: [B, window, D]
        self.uwin = ({i: np.zeros((batch_size, self.window, cfg.hidden_size), np.float32) for i in cfg.conv_layers}
                     if rollback > 0 else None)
        self.lengths = np.zeros(batch_size, np.int64)
        # trailing window entries that are known (positions before 0 are known zeros)
        self.uvalid = np.full(batch_size, self.window, np.int64)

    def reset(self):
        self.lengths[:] = 0
        self.uvalid[:] = self.window
        for a in self.conv.values():
            a[:] = 0
        if self.uwin is not None:
            for a in self.uwin.values():
                a[:] = 0

    def forward(self, seqs, tokens, all_logits: bool = False, mask=None) -> np.ndarray:
        """Append tokens[j] to sequence seqs[j]; returns last-position logits [len(seqs), V], or
        every new position's logits [sum(len), V] when all_logits. `mask` (optional, uint8
        [T, capacity]) replaces the causal rule for tree attention."""
        eng, cfg = self.engine, self.cfg
        seqs = [int(s) for s in seqs]
        if len(set(seqs)) != len(seqs):
            raise InputError("a sequence may appear only once per forward call")
        ids_l, seq_l, pos_l, last = [], [], [], []
        for s, toks in zip(seqs, tokens):
            if not 0 <= s < self.batch_size:
                raise InputError(f"sequence {s} is outside this session's batch of {self.batch_size}")
            toks = np.asarray(toks, dtype=np.int64).reshape(-1)
            n0 = int(self.lengths[s])
            if toks.size == 0:
                raise InputError(f"sequence {s}: no tokens to append")
            if n0 + toks.size > self.capacity:
                raise InputError(f"sequence {s}: {n0} cached + {toks.size} new tokens exceed the session capacity "
                                 f"{self.capacity}")
            bad = np.nonzero((toks < 0) | (toks >= cfg.vocab_size))[0]
            if bad.size:
                raise InputError(f"sequence {s}: token id {int(toks[bad[0]])} is outside the vocabulary "
                                 f"[0, {cfg.vocab_size})")
            ids_l.append(toks)
            seq_l.append(np.full(toks.size, s))
            pos_l.append(np.arange(n0, n0 + toks.size))
            last.append(sum(len(a) for a in ids_l) - 1)
        ids = np.concatenate(ids_l).astype(np.int32)
        seq = np.concatenate(seq_l).astype(np.int32)
        pos = np.concatenate(pos_l).astype(np.int32)
        rows = np.arange(len(ids)) if all_logits else np.asarray(last)
        u_hist = None
        if self.uwin is not None:
            u_hist = {i: np.empty((len(ids), cfg.hidden_size), np.float32) for i in cfg.conv_layers}
        logits = eng.forward_tokens(self, ids, seq, pos, rows, mask, u_hist)
        if self.uwin is not None:
            off = 0
            for s, toks in zip(seqs, ids_l):
                n = len(toks)
                for i in cfg.conv_layers:
                    win = self.uwin[i][s]
                    both = np.concatenate([win, u_hist[i][off : off + n]])  # [window + n, D]
                    win[:] = both[both.shape[0] - self.window :]
                off += n
        for s, toks in zip(seqs, ids_l):
            self.lengths[s] += len(toks)
            self.uvalid[s] = min(self.window, self.uvalid[s] + len(toks))
        return logits

    def forward_tree(self, seq: int, tokens, parents) -> np.ndarray:
        """Verify a token tree for sequence `seq` in one pass: node t (token tokens[t], parent
        parents[t], -1 = child of the cached prefix) sees the prefix and its own ancestors only;
        its RoPE position is prefix length + depth. Returns logits [T, V] for every node. The
        cache is not advanced: call commit_tree(path) with the accepted root-to-node path."""
        cfg = self.cfg
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        t_ = toks.size
        depth, anc = tree_layout(parents)
        if len(depth) != t_:
            raise InputError(f"tree: {t_} tokens but {len(depth)} parents")
        n0 = int(self.lengths[seq])
        if n0 + t_ > self.capacity:
            raise InputError(f"tree: {n0} cached + {t_} nodes exceed the session capacity {self.capacity}")
        bad = np.nonzero((toks < 0) | (toks >= cfg.vocab_size))[0]
        if bad.size:
            raise InputError(f"tree: token id {int(toks[bad[0]])} is outside the vocabulary [0, {cfg.vocab_size})")
        mask = np.zeros((t_, self.capacity), np.uint8)
        mask[:, :n0] = 1
        for t in range(t_):
            mask[t, [n0 + a for a in anc[t]]] = 1
        u_hist = {i: np.empty((t_, cfg.hidden_size), np.float32) for i in cfg.conv_layers}
        logits = self.engine.forward_tokens(
            self, toks.astype(np.int32), np.full(t_, seq, np.int32), (n0 + np.arange(t_)).astype(np.int32),
            np.arange(t_), mask, u_hist, rope_pos=(n0 + depth).astype(np.int32),
            parents=np.asarray(parents, np.int64))
        self._tree = (seq, n0, np.asarray(parents, np.int64), u_hist)
        return logits

    def commit_tree(self, path) -> None:
        """Keep the tree nodes `path` (a root-to-node chain, in order) as the sequence's next tokens."""
        if getattr(self, "_tree", None) is None:
            raise InputError("commit_tree: no pending tree (call forward_tree first)")
        seq, n0, parents, u_hist = self._tree
        path = [int(p) for p in path]
        for j, node in enumerate(path):
            want = -1 if j == 0 else path[j - 1]
            if not 0 <= node < len(parents) or parents[node] != want:
                raise InputError(f"commit_tree: {path} is not a root-to-node path of the tree")
        for i in self.cfg.attention_layers:  # compact accepted nodes to consecutive slots (path[j] >= j)
            for j, node in enumerate(path):
                if node != j:
                    self.k[i][seq, :, n0 + j] = self.k[i][seq, :, n0 + node]
                    self.v[i][seq, :, n0 + j] = self.v[i][seq, :, n0 + node]
        lm1 = self.cfg.conv_L_cache - 1
        for i in self.cfg.conv_layers:
            u = u_hist[i][path]  # [m, D]
            both = np.concatenate([self.conv[i][seq], u])
            self.conv[i][seq] = both[both.shape[0] - lm1 :]
            if self.uwin is not None:
                w = np.concatenate([self.uwin[i][seq], u])
                self.uwin[i][seq] = w[w.shape[0] - self.window :]
        m = len(path)
        self.lengths[seq] = n0 + m
        if self.uwin is not None:
            self.uvalid[seq] = min(self.window, self.uvalid[seq] + m)
        self._tree = None

    def prefill(self, prompts) -> np.ndarray:
        """Reset and run every prompt (sequence b = prompts[b]); last-position logits [B, V]."""
        if len(prompts) > self.batch_size:
            raise InputError(f"{len(prompts)} prompts for a session of {self.batch_size} sequences")
        self.reset()
        return self.forward(range(len(prompts)), prompts)

    def decode(self, tokens) -> np.ndarray:
        """One token for each of the first len(tokens) sequences; logits [B, V]."""
        return self.forward(range(len(tokens)), [[t] for t in tokens])

    def truncate(self, seq: int, n: int) -> None:
        """Forget everything of sequence `seq` after its first n tokens (KV and conv state)."""
        cur = int(self.lengths[seq])
        if not 0 <= n <= cur:
            raise InputError(f"truncate: sequence {seq} has {cur} tokens, cannot truncate to {n}")
        if n == cur:
            return
        lm1 = self.cfg.conv_L_cache - 1
        back = cur - n
        if self.uwin is None or back > self.uvalid[seq] - lm1:
            known = 0 if self.uwin is None else int(self.uvalid[seq] - lm1)
            raise InputError(f"truncate: rolling back {back} tokens of sequence {seq}, but only the last {known} "
                             f"can be restored (session rollback={self.rollback})")
        for i in self.cfg.conv_layers:
            win = self.uwin[i][seq]  # positions cur-window .. cur-1
            keep = win[: self.window - back]  # positions cur-window .. n-1
            self.conv[i][seq] = keep[keep.shape[0] - lm1 :] if lm1 else keep[:0]
            win[:] = np.concatenate([np.zeros((back, win.shape[1]), np.float32), keep])
        self.uvalid[seq] -= back
        self.lengths[seq] = n


def load_model(path, dtype: str = "float32", device: str = "cpu", **kw) -> Engine:
    return Engine.from_pretrained(path, dtype=dtype, device=device, **kw)
