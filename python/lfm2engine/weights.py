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

Every host array is the engine's own memory (the checkpoint reader fills arrays of its own with
positioned reads; nothing maps the file): a checkpoint truncated or replaced while a job runs
cannot fault a later forward (SIGBUS), and one cut while loading is a CheckpointError.
`digest` fingerprints the bytes of every array as the engine holds them (CRC-32 per array, in
load order; MPI ranks compare it at start-up). Once the fused model of an engine reads the
arrays in place, it owns a frozen `snapshot()` of them (which pins every array it reads) and the
engine's own weights are frozen too, so that they cannot silently diverge from what the fused
model reads: attributes cannot be replaced, the layer list is a tuple, host arrays are read-only
(a change is an InputError, never a dangling pointer); `LayerWeights.copy()` and `with_layers()`
give mutable copies to build variants from.
"""

from __future__ import annotations

import hashlib
import sys
import time
import zlib

import numpy as np

from .checkpoint import Checkpoint, all_finite
from .errors import CheckpointError, InputError

DTYPES = ("float32", "bfloat16", "float16")


class LayerWeights:
    """One layer's weights, prepared for the kernels (fused and stacked where it saves calls)."""

    NAMES = ("op_norm", "ffn_norm", "wqkv", "wo", "q_norm", "k_norm", "in_proj", "conv_w", "out_proj",
             "w13", "w2", "gate", "expert_bias", "ew13", "ew2")
    __slots__ = NAMES + ("_frozen",)

    def __init__(self):
        object.__setattr__(self, "_frozen", False)
        for s in self.NAMES:
            setattr(self, s, None)

    def __setattr__(self, name, value):
        if self._frozen:
            _refuse(f"layer weight {name!r}")
        object.__setattr__(self, name, value)

    def copy(self) -> "LayerWeights":
        """A new, mutable layer object holding the same arrays (to replace some of them privately)."""
        c = LayerWeights()
        for s in self.NAMES:
            setattr(c, s, getattr(self, s))
        return c

    def freeze(self) -> None:
        for s in self.NAMES:
            _read_only(getattr(self, s))
        object.__setattr__(self, "_frozen", True)


def _refuse(what: str):
    raise InputError(f"cannot replace {what}: these weights are frozen (an engine's fused model reads them in "
                     "place); build a variant from copies: LayerWeights.copy(), Weights.with_layers()")


def _read_only(a) -> None:
    if isinstance(a, np.ndarray):
        a.flags.writeable = False


def _own(a: np.ndarray) -> np.ndarray:
    """`a` as a C-contiguous array that owns its memory (a copy only when it is a view, e.g. a reshape)."""
    return a if a.flags.owndata and a.flags.c_contiguous else np.array(a, order="C")


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

    _frozen = False

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
        crcs = []

        def up(a):  # own the bytes, fingerprint them as the engine will use them, hand them to the backend
            a = _own(a)
            crcs.append(f"{a.dtype.str}{a.shape}:{zlib.crc32(memoryview(a).cast('B')):08x}")
            return backend.upload(a)

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
        # CRC-32 of each array in load order (names are implied by the order, which the config fixes)
        self.digest = hashlib.sha256(";".join(crcs).encode()).hexdigest()[:16]

    def __setattr__(self, name, value):
        if self._frozen:
            _refuse(f"weights.{name}")
        object.__setattr__(self, name, value)

    def freeze(self) -> "Weights":
        """Make these weights immutable (see the module docstring); idempotent. -> self."""
        if not self._frozen:
            self.layers = tuple(self.layers)
            for lw in self.layers:
                lw.freeze()
            for a in (self.embed, self.head, self.final_norm):
                _read_only(a)
            object.__setattr__(self, "_frozen", True)
        return self

    def snapshot(self) -> "Weights":
        """A frozen copy of this object graph (new Weights and LayerWeights objects, the same
        arrays) for a fused model to own: nothing else can reach it, so none of its arrays can be
        dropped or replaced while the fused model lives."""
        return self.with_layers([lw.copy() for lw in self.layers]).freeze()

    def with_layers(self, layers: list[LayerWeights]) -> "Weights":
        """A mutable copy of these weights whose layer list is `layers` (the other tensors shared)."""
        w = object.__new__(Weights)
        w.__dict__.update(self.__dict__)
        w.__dict__.pop("_frozen", None)
        w.layers = list(layers)
        return w


__all__ = ["DTYPES", "LayerWeights", "Weights"]
