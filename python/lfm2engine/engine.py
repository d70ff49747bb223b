"""The engine: LFM2 / LFM2-MoE forward over a backend value, written once for every device.

Reads like reference.py (same block names, same loop: norm, operator, residual, ffn norm, dense
or MoE FFN, residual) but runs a flattened, ragged batch of tokens from many sequences at once
over backend-resident weights and per-session caches (session.py). The backend (backends/)
supplies the ops and the few primitives that differ by device; a plain pass may take the
backend's fast path (the fused C++ loop on the CPU, a CUDA Graph on the GPU), which gives the
same results as the loop here. Not the place for parallel logic: the MoE block goes through
`Engine.moe_impl`, which the parallel executors replace (parallel/). User input is validated
here, before any backend call.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np

from .backends import Backend, get_backend
from .checkpoint import all_finite, open_checkpoint
from .config import LFM2Config
from .errors import BackendError, CheckpointError, InputError, NumericsError
from .models import resolve_name
from .tree import TreePass, tree_shortconv
from .weights import DTYPES, Weights, check_dtype, stores_own_types


def check_prompts(cfg: LFM2Config, batch, max_new_tokens: int = 0) -> list[np.ndarray]:
    """Token-id prompts -> int32 arrays, or an InputError naming the prompt and position: ids in
    [0, vocab), non-empty, prompt + max_new_tokens within the context. Needs only the config, so
    command lines check their prompts before loading any weights."""
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


def default_dtype(path) -> str:
    """The dtype a model loads with when none is asked: float32 for a checkpoint directory (or a
    shipped model), auto (every tensor as stored) for a file (GGUF)."""
    return "auto" if os.path.isfile(resolve_name(path)) else "float32"


def read_config(path) -> tuple[LFM2Config, object]:
    """(config, checkpoint) of a model without loading any weight. A checkpoint directory (or a
    shipped model): its config.json alone, checkpoint None (the safetensors are validated when
    loaded, after the caller has checked its arguments). A GGUF file: its config comes from parsing
    and validating the file's header, so that open GGUFCheckpoint is returned too, for
    `Engine.from_checkpoint` to load without parsing the file again."""
    p = resolve_name(path)
    if os.path.isfile(p):
        ck = open_checkpoint(p)
        return ck.config, ck
    return LFM2Config.from_hf(p), None


def _file_ids(ck) -> dict:
    """(device, inode, size, mtime) of each file of a checkpoint: what a replacement or truncation changes."""
    out = {}
    for f in ck.files():
        try:
            st = os.stat(f)
            out[f] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            out[f] = None
    return out


class Engine:
    """An LFM2 model on one backend ('cpu', 'cuda' or 'numpy'): validation, the public API
    (logits, generate, session), the blocks and the layer loop."""

    def __init__(self, cfg: LFM2Config, weights: Weights, backend: Backend | str = "cpu", fingerprint: str = ""):
        self.config = cfg
        self.w = weights
        self.backend = get_backend(backend)
        self.ops = self.backend.ops
        self.device = self.backend.name
        self.dtype = weights.dtype
        self.fingerprint = fingerprint
        self.moe_impl = self.local_moe  # replaced by parallel executors
        self.skip_layers: frozenset[int] = frozenset()
        self._fused = None  # (config, weights, the backend's fused model), built on first use

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: str | None = None, device: str = "cpu",
                        num_threads: int | None = None, verbose: bool = False) -> "Engine":
        """Load a Hugging Face LFM2 / LFM2-MoE checkpoint (directory, or a shipped model's name) or a
        GGUF file onto device 'cpu', 'cuda' or 'numpy'. dtype (weights.DTYPES): None = the default,
        float32 for safetensors and 'auto' (every tensor as it lies) for a GGUF file."""
        if dtype is not None and dtype not in DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported; choose from {', '.join(DTYPES)}")
        backend = get_backend(device)  # no GPU, no build: fails here, before reading the checkpoint
        _check_threads(num_threads)
        return cls.from_checkpoint(open_checkpoint(resolve_name(path)), dtype, backend, num_threads, verbose)

    @classmethod
    def from_checkpoint(cls, ck, dtype: str | None = None, device: Backend | str = "cpu",
                        num_threads: int | None = None, verbose: bool = False) -> "Engine":
        """An engine on the weights of an open checkpoint (checkpoint.Checkpoint or a reader with its
        interface: config, path, dtype_of, raw, f32, bf16, names, files, fingerprint)."""
        if dtype is None:
            dtype = "auto" if stores_own_types(ck) else "float32"
        check_dtype(ck, dtype)  # unknown names, re-quantizing a GGUF file, widths not in whole blocks
        backend = get_backend(device)
        _check_threads(num_threads)
        if num_threads:
            backend.set_num_threads(int(num_threads))
        before = _file_ids(ck)
        w = Weights(ck, dtype, backend, verbose=verbose)  # copies: no view of the files remains
        changed = [f for f, st in _file_ids(ck).items() if st != before[f]]
        if changed:
            raise CheckpointError(f"{changed[0]}: the file was replaced or changed while the engine loaded it; "
                                  "load again once it is complete")
        return cls(ck.config, w, backend, f"{ck.fingerprint()}-{w.digest}")

    @property
    def dtype_description(self) -> str:
        """The dtype as asked, with the storage types found where they differ: "auto (q4_k, q6_k)"."""
        return self.w.describe()

    def derive(self, top_k: int | None = None, skip_layers=()) -> "Engine":
        """A cheaper view sharing this engine's weights, for self-speculative drafts: fewer active
        experts per token (top_k) and/or whole layers skipped (residual passes through)."""
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

    # ------------------------------------------------------------------ validation
    def check_prompts(self, batch, max_new_tokens: int = 0) -> list[np.ndarray]:
        return check_prompts(self.config, batch, max_new_tokens)

    # ------------------------------------------------------------------ public API
    def session(self, batch_size: int, capacity: int, rollback: int = 0):
        from .session import Session

        return Session(self, batch_size, capacity, rollback)

    def logits(self, batch) -> np.ndarray:
        """Last-position logits [B, V] f32 of each prompt (different lengths allowed)."""
        prompts = self.check_prompts(batch)
        s = self.session(len(prompts), max(len(p) for p in prompts))
        return s.prefill(prompts)

    def generate(self, batch, max_new_tokens: int = 16, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = False,
                 request_ids=None, on_step=None, on_token=None) -> list[list[int]]:
        """Continue every prompt; greedy unless temperature > 0. Sampling draws from a generator per
        request (seeded by (seed, request id)), so the tokens do not depend on the batch split.
        on_step(step, live) after each step; on_token(i, token) as prompt i gets a token (streaming)."""
        from .generation import decode_loop
        from .sampling import Sampler

        prompts = self.check_prompts(batch, max_new_tokens)
        sampler = Sampler(temperature, top_k, top_p, seed,
                          request_ids if request_ids is not None else range(len(prompts)))
        return decode_loop(self, prompts, max_new_tokens, sampler, stop_at_eos, on_step, on_token=on_token)

    # ------------------------------------------------------------------ the backend's fast path
    def fused_model(self):
        """The backend's whole-model forward serving this engine's plain passes (on the CPU the
        fused C++ layer loop `_core.cpu.Model`), built on first use and rebuilt when the config
        (derive(top_k=...)) or the weights change; None where the backend has none."""
        f = self._fused
        if f is None or f[0] is not self.config or f[1] is not self.w:
            # the fused model reads the arrays in place: it owns a frozen snapshot that pins them all,
            # and our weights freeze too, so the Python path and it cannot diverge
            self.w.freeze()
            f = self._fused = (self.config, self.w, self.backend.fused_model(self.config, self.w.snapshot()))
        return f[2]

    def _profiled(self):
        if not self.backend.has_profile:
            raise BackendError(f"the stage profile needs the fused CPU loop; the {self.device} backend has none")
        return self.fused_model()

    def set_profiling(self, on: bool) -> None:
        """Start (zeroing the sums) or stop (keeping them) the per-stage wall-clock profile."""
        self._profiled().set_profiling(bool(on))

    def profile(self) -> dict:
        """{stage: seconds summed over the profiled forward calls, 'calls': count}."""
        return self._profiled().profile()

    # ------------------------------------------------------------------ blocks (reference order)
    def local_moe(self, i: int, h):
        """MoE FFN of layer i on this process: route -> grouped experts -> combine. h [T, D]."""
        lw = self.w.layers[i]
        ids, wts = self.route(i, h)
        y = self.backend.empty(h.shape)
        self.ops.moe_experts(y, h, ids, wts, lw.ew13, lw.ew2)
        return y

    def route(self, i: int, h):
        cfg, lw, ops, b = self.config, self.w.layers[i], self.ops, self.backend
        t_ = h.shape[0]
        logits = b.empty((t_, cfg.num_experts))
        ops.gemm(logits, h, lw.gate)
        ids = b.empty((t_, cfg.num_experts_per_tok), "int32")
        wts = b.empty((t_, cfg.num_experts_per_tok))
        ops.moe_route(ids, wts, logits, lw.expert_bias, cfg.norm_topk_prob, cfg.routed_scaling_factor)
        return ids, wts

    def dense_ffn(self, i: int, h):
        lw, ops, b = self.w.layers[i], self.ops, self.backend
        t_, f = h.shape[0], self.config.ffn_dim
        gu = b.empty((t_, 2 * f))
        ops.gemm(gu, h, lw.w13)  # [T, 2F] = gate | up
        a = b.empty((t_, f))
        ops.swiglu(a, gu)
        y = b.empty(h.shape)
        ops.gemm(y, a, lw.w2)
        return y

    def attention_block(self, i: int, h, st, seq, pos, mask=None, rope_pos=None):
        """pos: cache slot of each token; rope_pos: its RoPE position (differs only inside a tree)."""
        cfg, lw, ops, b = self.config, self.w.layers[i], self.ops, self.backend
        t_, nh, nkv, dh = h.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q, k, v = self.qkv_heads(i, h)
        qn, kn = q.reshape(t_ * nh, dh), k.reshape(t_ * nkv, dh)  # per-head norms: [T, H, Dh] -> [T H, Dh]
        ops.rmsnorm(qn, qn, lw.q_norm, cfg.norm_eps)
        ops.rmsnorm(kn, kn, lw.k_norm, cfg.norm_eps)
        rp = pos if rope_pos is None else rope_pos
        ops.rope(q, rp, cfg.rope_theta)
        ops.rope(k, rp, cfg.rope_theta)
        ops.kv_write(st.k[i], st.v[i], k, v, seq, pos)
        o = b.empty((t_, nh, dh))
        ops.attention(o, q, st.k[i], st.v[i], seq, pos, mask)
        y = b.empty(h.shape)
        ops.gemm(y, o.reshape(t_, nh * dh), lw.wo)
        return y

    def qkv_heads(self, i: int, h):
        """q [T, H, Dh], k, v [T, Hkv, Dh] of layer i: one GEMM for q | k | v, then the split op; or,
        where v is stored apart (`LayerWeights.wv`, a mixed file), one GEMM per projection written
        straight into q, k and v (wqkv's q and k rows are views of it). Each element is computed as
        by the single GEMM: gemm's values do not depend on the output width."""
        cfg, lw, ops, b = self.config, self.w.layers[i], self.ops, self.backend
        t_, nh, nkv, dh = h.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q, k, v = b.empty((t_, nh, dh)), b.empty((t_, nkv, dh)), b.empty((t_, nkv, dh))
        if lw.wv is None:
            qkv = b.empty((t_, (nh + 2 * nkv) * dh))
            ops.gemm(qkv, h, lw.wqkv)
            ops.qkv_split(q, k, v, qkv)
        else:
            nq = nh * dh
            ops.gemm(q.reshape(t_, nq), h, lw.wqkv[:nq])
            ops.gemm(k.reshape(t_, nkv * dh), h, lw.wqkv[nq:])
            ops.gemm(v.reshape(t_, nkv * dh), h, lw.wv)
        return q, k, v

    def shortconv_block(self, i: int, h, st, seq, u_out=None, tree: TreePass | None = None):
        """Gated short conv; in a tree pass it runs along each node's ancestors (tree.py, host)."""
        cfg, lw, ops, b = self.config, self.w.layers[i], self.ops, self.backend
        t_, d = h.shape[0], cfg.hidden_size
        bcx = b.empty((t_, 3 * d))
        ops.gemm(bcx, h, lw.in_proj)  # [T, 3D] = B | C | x
        if tree is None:
            z = b.empty((t_, d))
            ops.shortconv(z, bcx, lw.conv_w, st.conv[i], seq, u_out)
        else:
            u_host = None if u_out is None else b.download(u_out)
            z = b.upload(tree_shortconv(b.download(bcx), b.download(lw.conv_w), b.download(st.conv[i][tree.seq]),
                                        tree.parents, u_host))
            if u_out is not None:
                b.write(u_out, u_host)
        y = b.empty((t_, d))
        ops.gemm(y, z, lw.out_proj)
        return y

    def layer_loop(self, st, ids, seq, pos, rows=None, mask=None, u_out=None, rope_pos=None,
                   tree: TreePass | None = None):
        """The layer loop on backend arrays: ids, seq, pos [T] int32 -> logits [R, V] f32 of the
        rows `rows` [R] int32 (None: every row). u_out {conv layer: [T, D]} receives u = B ⊙ x.
        Only enqueues work on an asynchronous backend (CUDA-Graph capturable without a tree)."""
        cfg, w, ops, b = self.config, self.w, self.ops, self.backend
        t_, d = ids.shape[0], cfg.hidden_size
        x = b.empty((t_, d))
        ops.embedding(x, w.embed, ids)
        h = b.empty((t_, d))
        for i, lw in enumerate(w.layers):
            if i in self.skip_layers:
                continue
            ops.rmsnorm(h, x, lw.op_norm, cfg.norm_eps)
            if cfg.is_attention_layer(i):
                b.add_(x, self.attention_block(i, h, st, seq, pos, mask, rope_pos))
            else:
                b.add_(x, self.shortconv_block(i, h, st, seq, None if u_out is None else u_out[i], tree))
            ops.rmsnorm(h, x, lw.ffn_norm, cfg.norm_eps)
            b.add_(x, self.moe_impl(i, h) if cfg.is_moe_layer(i) else self.dense_ffn(i, h))
        xl = x if rows is None else b.gather_rows(x, rows)
        ops.rmsnorm(xl, xl, w.final_norm, cfg.norm_eps)
        logits = b.empty((xl.shape[0], cfg.vocab_size))
        ops.gemm(logits, xl, w.head)
        return logits

    def forward_tokens(self, st, ids: np.ndarray, seq: np.ndarray, pos: np.ndarray, out_rows, mask=None,
                       u_hist=None, rope_pos=None, tree: TreePass | None = None, argmax: bool = False) -> np.ndarray:
        """One pass over a flattened ragged batch (called by Session): host int arrays ids, seq,
        pos [T] in; host logits [R, V] of the rows `out_rows` out, or their argmax ids [R] int32.
        u_hist {conv layer: host [T, D]} (optional) receives u = B ⊙ x. A tree pass gives `tree`,
        `rope_pos` [T] and `mask` [T, capacity] (tree.py)."""
        b, t_ = self.backend, len(ids)
        rows = np.asarray(out_rows, np.int32)
        u_out = u_hist
        if u_hist is not None and not b.host_memory:
            u_out = {i: b.empty((t_, self.config.hidden_size)) for i in u_hist}
        plain = (mask is None and tree is None and rope_pos is None and not self.skip_layers
                 and self.moe_impl == self.local_moe)
        logits = b.fast_forward(self, st, ids, seq, pos, rows, u_out) if plain else None
        if logits is None:
            rp = pos if rope_pos is None else rope_pos
            packed = b.upload(np.concatenate([ids, seq, pos, rp, rows]).astype(np.int32))  # one upload
            d_ids, d_seq, d_pos, d_rp = (packed[j * t_ : (j + 1) * t_] for j in range(4))
            d_rows = None if np.array_equal(rows, np.arange(t_)) else packed[4 * t_ :]
            d_mask = None if mask is None else b.upload(np.asarray(mask, np.uint8))
            logits = self.layer_loop(st, d_ids, d_seq, d_pos, d_rows, d_mask, u_out,
                                     None if rope_pos is None else d_rp, tree)
        if u_out is not u_hist:
            for i, a in u_out.items():
                u_hist[i][:] = b.download(a)
        if argmax:
            ids_out = b.empty((logits.shape[0],), "int32")
            self.ops.argmax(ids_out, logits)
            picked = b.download(ids_out)
            # argmax counts NaN as the maximum and +Inf is one: a row with either shows at its pick
            self._check_finite(b.picked_values(logits, picked).reshape(-1, 1), seq, pos, rows)
            return picked
        host = b.download(logits)
        self._check_finite(host, seq, pos, rows)
        return host

    @staticmethod
    def _check_finite(values: np.ndarray, seq, pos, rows) -> None:
        """NumericsError naming the sequences and positions whose logits hold NaN/Inf."""
        if all_finite(values):
            return
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        at = [f"sequence {int(seq[rows[r]])} position {int(pos[rows[r]])}" for r in bad[:8]]
        raise NumericsError(f"non-finite logits (NaN/Inf) for {len(bad)} row(s): {', '.join(at)}"
                            f"{' ...' if len(bad) > 8 else ''} (an activation overflowed)")


def _check_threads(num_threads) -> None:
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer))
                                    or num_threads < 1):
        raise InputError(f"num_threads must be an integer >= 1 (or None: the default), found {num_threads!r}")


def load_model(path, dtype: str | None = None, device: str = "cpu", **kw) -> Engine:
    return Engine.from_pretrained(path, dtype=dtype, device=device, **kw)


__all__ = ["DTYPES", "Engine", "load_model"]
