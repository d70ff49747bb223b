"""The op cases: one shape list and one input builder per op, shared by the op test harness
(tests/test_ops.py runs every case on every backend against the NumPy reference) and the per-op
benchmark (benchmarks/bench_op_cases.py times the same builders at LFM2-8B-A1B's sizes).

A builder returns a `Call`: the op's name, its arguments in the binding's order (NumPy arrays and
scalars; outputs pre-filled with NaN so an unwritten element cannot pass), and the indices of the
arguments the op writes. A backend runs a Call by uploading the arrays, calling its op and
downloading the written ones (tests/test_ops.py::OpBackend), so one test body serves numpy, cpu
and cuda.

Shapes are tiny, awkward (not multiples of any SIMD width or tile, T = 1, prime T, odd head
counts, T around the CUDA kernels' kind thresholds) and LFM2-8B-A1B's real sizes (`REAL`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from .. import quant
from ..checkpoint import f32_to_bf16

# LFM2-8B-A1B: hidden, query heads, KV heads, head dim, dense FFN, expert FFN, experts, top-k,
# conv kernel, vocab.
LFM2_8B = SimpleNamespace(D=2048, H=32, HKV=8, DH=64, F=7168, FE=1792, E=32, K=4, L=3, V=65536)
_M = LFM2_8B

WDTYPES = ("float32", "bfloat16", "float16")
QDTYPES = ("q8_0", "q4_0", "q4_k", "q6_k")  # block-quantized weights (lfm2engine.quant, GGUF layouts)


class Call(NamedTuple):
    op: str
    args: tuple
    outs: tuple  # indices into args of the arrays the op writes


def rand(rng, *shape, scale=1.0) -> np.ndarray:
    """The one random stream of the op cases: float32 normals times `scale`."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)


def i32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int32)


def nan_out(*shape) -> np.ndarray:
    return np.full(shape, np.nan, np.float32)


def as_weight(w32: np.ndarray, wdtype: str) -> np.ndarray:
    """float32 weights stored as 'float32', 'bfloat16' (uint16 bits), 'float16' or a quantized type of
    QDTYPES (a block array [..., K / block], quant.quantize)."""
    if wdtype in QDTYPES:
        return quant.quantize(w32, wdtype)
    if wdtype == "float32":
        return np.ascontiguousarray(w32, dtype=np.float32)
    if wdtype == "bfloat16":
        return f32_to_bf16(w32)
    if wdtype == "float16":
        return np.ascontiguousarray(w32.astype(np.float16))
    raise ValueError(f"unknown weight dtype {wdtype!r}")


# ----------------------------------------------------------------------------- shape lists

SHAPES = {
    # (T, N, K): T around the CUDA kinds (16 skinny, 64 Tensor Core skinny), odd K (no vector
    # loads), K > 512 (the CPU's K-blocked tiles, with a tail)
    "gemm": [(1, 1, 1), (1, 7, 5), (3, 17, 33), (13, 31, 47), (2, 16, 16), (16, 16, 16), (5, 9, 100), (17, 9, 100),
             (31, 45, 129), (37, 45, 129), (64, 40, 64), (65, 33, 64), (131, 130, 72), (1, 64, 2048),
             (13, 21, 1037), (8, 12, 1536)],
    "embedding": [(1, 1, 1), (97, 40, 7), (131, 33, 13), (64, 2048, 3)],  # (V, D, T)
    "rmsnorm": [(1, 1), (3, 5), (7, 33), (13 * 32, _M.DH), (1, _M.D), (5, _M.D), (600, _M.D), (1, _M.F)],  # (R, D)
    "rope": [(1, 1, 2), (5, 3, 6), (7, 5, 40), (13, _M.H, _M.DH), (3, _M.HKV, _M.DH)],  # (T, H, Dh)
    "swiglu": [(1, 1), (3, 7), (17, 33), (2, _M.F), (5, _M.FE)],  # (T, F)
    "qkv_split": [(1, 1, 1, 2), (5, 6, 2, 8), (7, 5, 5, 6), (0, 2, 1, 4), (13, _M.H, _M.HKV, _M.DH),
                  (300, _M.H, _M.HKV, _M.DH)],  # (T, H, Hkv, Dh)
    # (T, H, Hkv, Dh, B, Smax); the last ones decode-like (few queries, long cache)
    "attention": [(1, 1, 1, 1, 1, 1), (7, 6, 3, 20, 2, 37), (5, 5, 1, 24, 3, 19), (11, 3, 3, 8, 1, 50),
                  (3, _M.H, _M.HKV, _M.DH, 2, 300), (2, 11, 1, 44, 2, 97), (1, _M.H, _M.HKV, _M.DH, 1, 4096),
                  (4, _M.H, _M.HKV, _M.DH, 4, 2000), (2, 8, 1, 128, 1, 777), (1, 64, 2, 256, 1, 300)],
    # (D, conv kernel, seq ids): runs of one sequence = prefill, distinct ids = batched decode
    "shortconv": [(1, 1, [0]), (5, 3, [0]), (40, 3, [0] * 7), (33, 3, [2, 2, 2, 0, 1, 1, 3]),
                  (300, 4, [1, 0, 0, 0, 0, 0, 2, 2]), (_M.D, _M.L, [0, 1, 2, 3, 4]), (_M.D, _M.L, [3] * 13 + [1] * 2),
                  (_M.D, _M.L, [0] * 100)],
    # (T, E, K, normalize, scale)
    "moe_route": [(1, 6, 3, True, 1.0), (17, _M.E, _M.K, True, 1.0), (5, 7, 2, False, 1.5), (13, 5, 1, True, 2.0),
                  (3, 4, 4, True, 1.0), (9, 100, 8, True, 1.0), (300, _M.E, _M.K, True, 1.0)],
    "moe_expert_rows": [(5, 24, 20, 11), (3, 33, 17, 2), (6, 64, 40, 300), (4, 96, 64, 1500)],  # (E, D, Fe, rows)
    # (T, E, K, D, Fe); E = 32 cases fill only the routed experts
    "moe_experts": [(1, 6, 3, 40, 24), (7, 5, 1, 48, 20), (13, 7, 2, 36, 28), (1, _M.E, _M.K, _M.D, _M.FE),
                    (16, _M.E, _M.K, _M.D, _M.FE), (200, 8, 2, 64, 32)],
    "argmax": [(1, 1), (3, 17), (5, 100), (2, _M.V), (70, 1000)],  # (T, V)
}

# The quantized weight cases (QDTYPES): weight widths are whole blocks, 32 weights for q8_0 / q4_0 and
# 256 for q4_k / q6_k (`params` drops the shapes a type cannot hold). gemm: T across the in-register
# driver's limits (16; 4 for the k-quants on AVX-512) and its MR = 4 tiles, N across the
# NR = 4 tiles, K = 1280 (the fp32 panel's K-blocked tiles, with a tail), real widths.
QSHAPES = {
    "gemm": [(1, 1, 32), (2, 5, 96), (7, 13, 160), (1, 7, 256), (3, 17, 256), (13, 31, 768), (16, 9, 512),
             (17, 9, 512), (37, 45, 1280), (64, 40, 256), (1, 64, _M.D), (5, 6, _M.FE)],
    "embedding": [(1, 32, 1), (97, 256, 7), (131, 512, 13)],  # (V, D, T)
    "moe_expert_rows": [(5, 64, 32, 11), (3, 256, 256, 2), (4, 512, 256, 40)],  # (E, D, Fe, rows)
    "moe_experts": [(1, 6, 3, 64, 96), (13, 7, 2, 256, 256), (17, 5, 2, 256, 512), (1, _M.E, _M.K, _M.D, _M.FE)],
}

# Where each op's shape holds its weight widths: (index of D, index of Fe) or (index of K,).
_WIDTHS = {"gemm": (2,), "embedding": (1,), "moe_expert_rows": (1, 2), "moe_experts": (3, 4)}


def params(op: str) -> list[tuple]:
    """(wdtype, *shape) for op: every float weight dtype with SHAPES[op], then every quantized type
    with the QSHAPES[op] shapes whose weight widths are whole blocks of that type."""
    out = [(wd, *shape) for wd in WDTYPES for shape in SHAPES[op]]
    for q in QDTYPES:
        block = quant.get(q).block
        out += [(q, *shape) for shape in QSHAPES[op] if all(shape[i] % block == 0 for i in _WIDTHS[op])]
    return out


# LFM2-8B-A1B's own shapes at batch-1 decode (T = 1) and a 512-token prefill: what the per-op
# benchmark times. Each entry: (op, label, builder kwargs).
REAL = [
    *[("gemm", f"{name} T={t}", dict(t=t, n=n, k=k, wdtype="bfloat16", scale=0.02))
      for t in (1, 512)
      for name, n, k in (("in_proj", 3 * _M.D, _M.D), ("out_proj", _M.D, _M.D), ("qkv", (_M.H + 2 * _M.HKV) * _M.DH, _M.D),
                         ("dense_w13", 2 * _M.F, _M.D), ("dense_w2", _M.D, _M.F), ("lm_head", _M.V, _M.D))],
    *[("rmsnorm", f"T={t}", dict(r=t, d=_M.D)) for t in (1, 512)],
    *[("rope", f"q T={t}", dict(t=t, h=_M.H, dh=_M.DH)) for t in (1, 512)],
    *[("swiglu", f"dense T={t}", dict(t=t, f=_M.F)) for t in (1, 512)],
    *[("qkv_split", f"T={t}", dict(t=t, h=_M.H, hkv=_M.HKV, dh=_M.DH)) for t in (1, 512)],
    ("attention", "decode B=1 S=4096", dict(t=1, h=_M.H, hkv=_M.HKV, dh=_M.DH, b=1, smax=4096, last_sees_all=True)),
    ("attention", "decode B=16 S=1024", dict(t=16, h=_M.H, hkv=_M.HKV, dh=_M.DH, b=16, smax=1024, last_sees_all=True)),
    ("shortconv", "decode B=16", dict(d=_M.D, lk=_M.L, seq=list(range(16)))),
    ("shortconv", "prefill T=512", dict(d=_M.D, lk=_M.L, seq=[0] * 512)),
    *[("moe_route", f"T={t}", dict(t=t, e=_M.E, k=_M.K, norm=True, scale=1.0)) for t in (1, 512)],
    *[("moe_experts", f"T={t}", dict(t=t, e=_M.E, k=_M.K, d=_M.D, fe=_M.FE, wdtype="bfloat16")) for t in (1, 16)],
    # Quantized weights (exact mode) next to bf16 at the same shapes: the projections, one expert's
    # two GEMMs (w13 [2 Fe, D], w2 [D, Fe]) and the tied LM head; decode (T = 1, 16) and prefill
    # (bf16 only where the list above does not time it already; fp32 weights at T = 512).
    *[("gemm", f"{wd} {name} T={t}", dict(t=t, n=n, k=k, wdtype=wd, scale=0.02))
      for name, n, k in (("in_proj", 3 * _M.D, _M.D), ("out_proj", _M.D, _M.D), ("expert_w13", 2 * _M.FE, _M.D),
                         ("expert_w2", _M.D, _M.FE), ("lm_head", _M.V, _M.D))
      for t in (1, 16, 512)
      for wd in ("float32", "bfloat16") + QDTYPES
      if (wd != "bfloat16" or name.startswith("expert") or t == 16)
      and (wd != "float32" or (t == 512 and name != "lm_head"))],  # fp32 weights: the prefill rate to match
    *[("moe_experts", f"{wd} T={t}", dict(t=t, e=_M.E, k=_M.K, d=_M.D, fe=_M.FE, wdtype=wd))
      for t in (1, 16) for wd in QDTYPES],
    ("argmax", "T=16", dict(t=16, v=_M.V)),
]


# ----------------------------------------------------------------------------- builders


def gemm(rng, t, n, k, wdtype="float32", scale=1.0) -> Call:
    return Call("gemm", (nan_out(t, n), rand(rng, t, k), as_weight(rand(rng, n, k, scale=scale), wdtype)), (0,))


def embedding(rng, v, d, t, wdtype="float32") -> Call:
    ids = i32(rng.integers(0, v, t))
    ids[0] = v - 1
    return Call("embedding", (nan_out(t, d), as_weight(rand(rng, v, d), wdtype), ids), (0,))


def rmsnorm(rng, r, d, eps=1e-5) -> Call:
    return Call("rmsnorm", (nan_out(r, d), rand(rng, r, d, scale=3.0), rand(rng, d), eps), (0,))


def rope(rng, t, h, dh, theta=1e6) -> Call:
    pos = i32(rng.integers(0, 40000, t))
    pos[0] = 0  # position 0 is the identity
    return Call("rope", (rand(rng, t, h, dh), pos, theta), (0,))


def swiglu(rng, t, f) -> Call:
    gu = rand(rng, t, 2 * f, scale=4.0)
    gu[0, 0] = -100.0  # the exp-overflow side
    gu[-1, f - 1] = 90.0
    return Call("swiglu", (nan_out(t, f), gu), (0,))


def qkv_split(rng, t, h, hkv, dh) -> Call:
    return Call("qkv_split", (nan_out(t, h, dh), nan_out(t, hkv, dh), nan_out(t, hkv, dh),
                              rand(rng, t, (h + 2 * hkv) * dh)), (0, 1, 2))


def kv_write(rng, b=3, hkv=2, smax=11, dh=6, t=5) -> Call:
    seq, pos = i32(rng.integers(0, b, t)), i32(rng.integers(0, smax, t))
    return Call("kv_write", (rand(rng, b, hkv, smax, dh), rand(rng, b, hkv, smax, dh), rand(rng, t, hkv, dh),
                             rand(rng, t, hkv, dh), seq, pos), (0, 1))


def attention(rng, t, h, hkv, dh, b, smax, mask=False, last_sees_all=False) -> Call:
    """Random slots and positions; with `mask`, a random visibility mask (each token sees its own
    position, the last token sees nothing: its output is zero)."""
    q = rand(rng, t, h, dh)
    kc, vc = rand(rng, b, hkv, smax, dh), rand(rng, b, hkv, smax, dh)
    seq, pos = i32(rng.integers(0, b, t)), i32(rng.integers(0, smax, t))
    pos[0] = 0
    if last_sees_all:
        pos[-1] = smax - 1
    m = None
    if mask:
        m = (rng.random((t, smax)) < 0.4).astype(np.uint8)
        m[np.arange(t), pos] = 1
        m[-1] = 0
    return Call("attention", (nan_out(t, h, dh), q, kc, vc, seq, pos, m), (0,))


def shortconv(rng, d, lk, seq) -> Call:
    seq = i32(seq)
    b = int(seq.max()) + 1
    bcx, conv_w, state = rand(rng, len(seq), 3 * d), rand(rng, d, lk), rand(rng, b, lk - 1, d)
    return Call("shortconv", (nan_out(len(seq), d), bcx, conv_w, state, seq, nan_out(len(seq), d)), (0, 3, 5))


def moe_route(rng, t, e, k, norm, scale, bias=True) -> Call:
    logits = rand(rng, t, e, scale=2.0)
    b = rand(rng, e, scale=0.5) if bias else None
    return Call("moe_route", (np.full((t, k), -7, np.int32), nan_out(t, k), logits, b, norm, scale), (0, 1))


def experts(rng, e, d, fe, wdtype, used=None):
    """w13 [E, 2Fe, D], w2 [E, D, Fe]. With `used`, only those experts are filled, with one random
    block rolled by a different amount per expert (distinct experts at the real E = 32 stride
    without a gigabyte of random numbers); the others are zero pages never touched."""
    if used is None:
        return as_weight(rand(rng, e, 2 * fe, d, scale=0.05), wdtype), as_weight(rand(rng, e, d, fe, scale=0.05), wdtype)
    b13, b2 = as_weight(rand(rng, 2 * fe, d, scale=0.05), wdtype), as_weight(rand(rng, d, fe, scale=0.05), wdtype)
    w13, w2 = np.zeros((e,) + b13.shape, b13.dtype), np.zeros((e,) + b2.shape, b2.dtype)
    for i in used:
        w13[i] = np.roll(b13, 7 * i + 1, axis=1)
        w2[i] = np.roll(b2, 5 * i + 1, axis=1)
    return w13, w2


def moe_expert_rows(rng, e, d, fe, n, wdtype="float32") -> Call:
    w13, w2 = experts(rng, e, d, fe, wdtype)
    eids = i32(rng.integers(-1, e, n))
    eids[: min(n, 2)] = [e - 1, -1][: min(n, 2)]
    return Call("moe_expert_rows", (nan_out(n, d), rand(rng, n, d), eids, w13, w2), (0,))


def route_ids(rng, t, e, k):
    """Top-k of random scores (distinct ids per row, as the router gives) and positive weights;
    slot k-1 of row 0 is skipped (-1). With E >= 32, rows choose among 2k experts (the first,
    the last and random others) so that real-size cases fill few experts."""
    pool = np.arange(e) if e < 32 else np.sort(np.concatenate([[0, e - 1], rng.choice(np.arange(1, e - 1), 2 * k - 2,
                                                                                          replace=False)]))
    ids = i32(pool[np.argsort(-rng.random((t, len(pool))), axis=1)[:, :k]])
    w = rng.random((t, k), dtype=np.float32) + np.float32(0.05)
    ids[0, -1] = -1
    return ids, w


def moe_experts(rng, t, e, k, d, fe, wdtype="float32") -> Call:
    ids, w = route_ids(rng, t, e, k)
    used = sorted(set(ids[ids >= 0].tolist())) if e >= 32 else None
    w13, w2 = experts(rng, e, d, fe, wdtype, used)
    return Call("moe_experts", (nan_out(t, d), rand(rng, t, d), ids, w, w13, w2), (0,))


def argmax(rng, t, v) -> Call:
    return Call("argmax", (np.full(t, -7, np.int32), rand(rng, t, v)), (0,))


def build(op: str, rng, **kw) -> Call:
    """The builder of `op` called with `kw` (what REAL's entries hold)."""
    return globals()[op](rng, **kw)
