"""The engine's weights: read from a checkpoint once, laid out for the kernels, on a backend.

One builder for every backend: each tensor (or fused stack) is prepared on the host in the
storage type, then handed to `backend.upload` (no copy on host backends; one upload per tensor
on the GPU, so at most one layer's expert stack is held twice at a time).
Every tensor is checked for NaN/Inf in the storage type as it is loaded (`finite`; about
10 GB/s, see checkpoint.all_finite; for a block-quantized array its f16 scales: all_finite_blocks).

Storage types (`dtype`, DTYPES): float32, bfloat16 (bits as uint16), float16; the block types
q8_0, q4_0, q4_k (lfm2engine.quant: quantized on load from a safetensors checkpoint with
quant.quantize); and "auto": every tensor as it lies in the file, never re-quantized (the
default for a GGUF file, which may mix types: a Q4_K_M file keeps attn_v, some ffn_down and the
embedding in q6_k). A GGUF file may also be loaded as float32 (dequantized: the exact reference).
Only the projections, the expert stacks and the embedding / head take the storage type; norms,
conv taps, the router and expert_bias are always float32 (expert selection must not change with
the dtype).

Layout: attention q | k | v projections fused into one [(H + 2 Hkv) Dh, D] matrix (one GEMM,
then the qkv_split op); where v is stored in another type than q and k (mixed files), `wqkv`
holds q | k and `wv` holds v (every consumer goes through Engine.qkv_heads or computes the same
GEMMs); dense gate | up fused [2F, D] (gate and up must share a type); experts stacked
[E, 2Fe, D] (gate | up) and [E, D, Fe]. A block-quantized matrix [N, K] is a block array
[N, K / block] (quant.py); `logical_shape` gives [N, K].

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

from . import quant
from .checkpoint import Checkpoint, all_finite_blocks, expected_tensors
from .errors import CheckpointError, InputError

FLOAT_DTYPES = ("float32", "bfloat16", "float16")
DTYPES = FLOAT_DTYPES + quant.QUANT_DTYPES + ("auto",)
# What a file that stores its own types (GGUF) may be loaded as: as it lies, or dequantized.
STORED_DTYPES = ("auto", "float32")


class LayerWeights:
    """One layer's weights, prepared for the kernels (fused and stacked where it saves calls)."""

    NAMES = ("op_norm", "ffn_norm", "wqkv", "wv", "wo", "q_norm", "k_norm", "in_proj", "conv_w", "out_proj",
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


def storage_type(a) -> str:
    """The storage type name of a weight array: a DTYPES name (bf16 bits are uint16)."""
    q = quant.qtype_of(a)
    if q is not None:
        return q.name
    return {np.dtype(np.float32): "float32", np.dtype(np.uint16): "bfloat16",
            np.dtype(np.float16): "float16"}.get(np.dtype(a.dtype), str(a.dtype))


def is_projection(name: str) -> bool:
    """True for the tensors that take the storage type (projections, experts, embedding, head);
    norms, conv taps, the router and expert_bias stay float32."""
    return not (name.endswith("norm.weight") or name.endswith("conv.conv.weight")
                or name.endswith("feed_forward.gate.weight") or name.endswith("expert_bias"))


def stores_own_types(ck) -> bool:
    """True for a checkpoint whose tensors carry their own storage types (a GGUF file), False for a
    safetensors checkpoint (float tensors any dtype may be made from)."""
    return not isinstance(ck, Checkpoint)


def check_dtype(ck, dtype: str) -> None:
    """InputError unless `dtype` can be loaded from checkpoint `ck`; for a block type, every
    projection's rows must split into whole blocks (checked on the config, before loading)."""
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; choose from {', '.join(DTYPES)}")
    if stores_own_types(ck) and dtype not in STORED_DTYPES:
        raise InputError(f"dtype {dtype!r} cannot be asked of {ck.path}: its tensors are used as they lie in the file "
                         "(dtype 'auto', the default) or dequantized ('float32'); it is never re-quantized: choose "
                         f"from {', '.join(STORED_DTYPES)}")
    if dtype in quant.QTYPES:
        check_widths(ck.config, dtype)


def check_widths(cfg, dtype: str) -> None:
    """InputError naming the tensors whose rows do not split into whole `dtype` blocks."""
    q = quant.get(dtype)
    bad = [f"{n} {list(s)}" for n, s in expected_tensors(cfg).items() if is_projection(n) and s[-1] % q.block]
    if bad:
        raise InputError(f"dtype {dtype}: rows must split into whole blocks of {q.block} weights, but {len(bad)} "
                         f"weight tensor(s) do not: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} (widths "
                         f"not multiples of {q.block}); choose another dtype"
                         + (" (q8_0 or q4_0: blocks of 32)" if q.block > 32 else ""))


def finite(ck, name: str, a: np.ndarray, dtype: str) -> np.ndarray:
    """`a` (tensor `name` of `ck` in the engine's storage type), after checking that it holds no
    NaN or Inf: a non-finite weight makes every logit it reaches NaN, so it is refused at load
    (CheckpointError naming the tensor) instead of producing wrong tokens."""
    if all_finite_blocks(a):  # a float array's values, a block array's f16 scales
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


def _converter(ck, dtype: str):
    """name -> host array of that tensor in storage type `dtype` (not yet checked for NaN/Inf)."""
    if dtype == "float32":
        return lambda n: np.ascontiguousarray(ck.f32(n))
    if dtype == "bfloat16":
        return lambda n: np.ascontiguousarray(ck.bf16(n))
    if dtype == "auto":
        return lambda n: np.ascontiguousarray(ck.raw(n))
    if dtype == "float16":
        def conv(n):  # an overflow to Inf is reported by `finite`, naming the tensor
            with np.errstate(over="ignore"):
                return np.ascontiguousarray(ck.f32(n).astype(np.float16))
        return conv

    def quantized(n):  # the source must be finite first (quantize refuses NaN/Inf without a tensor name)
        return quant.quantize(finite(ck, n, np.ascontiguousarray(ck.f32(n)), "float32"), dtype)
    return quantized


class Weights:
    """All weights of a model in the engine's storage type(s), on `backend`."""

    _frozen = False

    def __init__(self, ck, dtype: str, backend, verbose: bool = False):
        check_dtype(ck, dtype)
        cfg = ck.config
        self.dtype = dtype
        conv = _converter(ck, dtype)
        host = lambda n: finite(ck, n, conv(n), dtype if dtype != "auto" else ck.dtype_of(n))  # noqa: E731
        crcs, types = [], set()

        def up(a):  # own the bytes, fingerprint them as the engine will use them, hand them to the backend
            a = _own(a)
            q = quant.qtype_of(a)
            tag = a.dtype.str if q is None else q.name
            crcs.append(f"{tag}{a.shape}:{zlib.crc32(a.reshape(-1).view(np.uint8)):08x}")
            return backend.upload(a)

        def proj(n):
            a = host(n)
            types.add(storage_type(a))
            return up(a)

        def fused(names: list[str], what: str) -> np.ndarray:  # row-concatenation of tensors of one type
            parts = [host(n) for n in names]
            kinds = [storage_type(a) for a in parts]
            if len(set(kinds)) > 1:
                desc = ", ".join(f"{n} is {k}" for n, k in zip(names, kinds) if k != kinds[0])
                raise CheckpointError(f"{ck.path}: {what} are fused into one matrix, which needs one storage type; "
                                      f"{names[0]} is {kinds[0]} but {desc}")
            types.add(kinds[0])
            return np.concatenate(parts) if len(parts) > 1 else parts[0]

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
                qk = fused([a + "q_proj.weight", a + "k_proj.weight"], f"layer {i}'s q and k projections")
                v = host(a + "v_proj.weight")
                types.add(storage_type(v))
                if storage_type(v) == storage_type(qk):
                    lw.wqkv = up(np.concatenate([qk, v]))  # [(H + 2 Hkv) Dh, D]
                else:  # mixed file: q | k [(H + Hkv) Dh, D] and v [Hkv Dh, D] apart (two GEMMs)
                    lw.wqkv, lw.wv = up(qk), up(v)
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
                w13 = [fused([f"{f}experts.{e}.w1.weight", f"{f}experts.{e}.w3.weight"],
                             f"layer {i} expert {e}'s gate (w1) and up (w3) projections") for e in e_]
                w2 = [host(f"{f}experts.{e}.w2.weight") for e in e_]
                types.add(storage_type(w2[0]))
                lw.ew13 = up(_stack(ck, w13, f"{f}experts.*.w1|w3"))  # [E, 2Fe, D]
                lw.ew2 = up(_stack(ck, w2, f"{f}experts.*.w2.weight"))  # [E, D, Fe]
            else:
                lw.w13 = up(fused([f + "w1.weight", f + "w3.weight"], f"layer {i}'s gate (w1) and up (w3) projections"))
                lw.w2 = proj(f + "w2.weight")  # [2F, D], [D, F]
            self.layers.append(lw)
            pct = 100 * (i + 1) // cfg.num_hidden_layers
            if verbose and pct >= last + 25:
                last = pct
                print(f"[lfm2engine] loading weights ({backend.name}): {pct}% ({time.time() - t0:.1f} s)",
                      file=sys.stderr, flush=True)
        # CRC-32 of each array in load order (names are implied by the order, which the config fixes)
        self.digest = hashlib.sha256(";".join(crcs).encode()).hexdigest()[:16]
        self.types = tuple(sorted(types))  # storage types of the projections (several for a mixed file)

    def __setattr__(self, name, value):
        if self._frozen:
            _refuse(f"weights.{name}")
        object.__setattr__(self, name, value)

    def describe(self) -> str:
        """The dtype as asked and, where it differs, the storage types found: "auto (q4_k, q6_k)"."""
        return self.dtype if self.types == (self.dtype,) else f"{self.dtype} ({', '.join(self.types)})"

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


def _stack(ck, parts: list[np.ndarray], what: str) -> np.ndarray:
    kinds = [storage_type(a) for a in parts]
    if len(set(kinds)) > 1:
        e = next(j for j, k in enumerate(kinds) if k != kinds[0])
        raise CheckpointError(f"{ck.path}: the experts of {what} are stacked into one array, which needs one storage "
                              f"type; expert 0 is {kinds[0]} but expert {e} is {kinds[e]}")
    return np.stack(parts)


def k_slice(a: np.ndarray, k0: int, k1: int) -> np.ndarray:
    """Columns [k0, k1) of the last (K) axis of a weight array, in weights: for a block array
    the block range [k0 / block, k1 / block) (InputError when a bound is not on a block edge)."""
    q = quant.qtype_of(a)
    if q is None:
        return a[..., k0:k1]
    if k0 % q.block or k1 % q.block:
        raise InputError(f"columns [{k0}, {k1}) of a {q.name} array do not fall on its {q.block}-weight blocks")
    return a[..., k0 // q.block : k1 // q.block]


__all__ = ["DTYPES", "FLOAT_DTYPES", "LayerWeights", "STORED_DTYPES", "Weights", "check_dtype",
           "check_widths", "is_projection", "k_slice", "storage_type", "stores_own_types"]
