"""Block-quantized weight types, bit-compatible with GGUF's (GGML's) block layouts.

A quantized matrix [N, K] is a NumPy array of shape [N, K / block] whose dtype is the type's
structured block dtype below (one element = one block of `block` consecutive weights of a row,
laid out byte for byte as in a GGUF file). A GGUF tensor is therefore used as it lies in the
file: `raw_bytes.view(block_dtype)`; the C++ core recognizes the block dtypes by their item size
(csrc/core/dtype.h) and sees the logical shape [N, K].

| type | block | bytes | bits/weight | weight value (fp32) |
|---|---|---|---|---|
| q8_0 | 32 | 34 | 8.5 | d · q, q int8 |
| q4_0 | 32 | 18 | 4.5 | d · (q − 8), q a nibble |
| q4_k | 256 | 144 | 4.5 | (d · sc_j) · q − (dmin · m_j), 8 sub-blocks j of 32, 6-bit sc/m |
| q6_k | 256 | 210 | 6.5625 | (d · sc_j) · (q − 32), 16 sub-blocks j of 16, int8 sc, q 6 bits |

`dequantize` is the definition of each type's values (the exact numerics mode's reference: the
engine's kernels must equal a float32 product with these weights within fp32 rounding); it is
written here independently of the `gguf` package, whose NumPy dequantizers the tests use as an
oracle. Products such as d · sc_j are formed in float32 first, as GGML does.
`quantize` writes valid blocks: q8_0 and q4_0 with GGML's reference rounding (the tests check
them bit for bit against `gguf.quants.quantize`); q4_k and q6_k with a simple one-pass
min/max fit of our own (GGML's reference uses an iterative search; any valid block is a valid
file, only the error differs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class QType:
    name: str        # the engine's dtype name (--dtype), lower case
    ggml: str        # GGML's name (GGUF tensor type), e.g. "Q4_K"
    ggml_id: int     # GGMLQuantizationType value
    block: int       # weights per block
    nbytes: int      # bytes per block
    dtype: np.dtype  # structured NumPy dtype of one block

    def row_bytes(self, k: int) -> int:
        return k // self.block * self.nbytes


_F16 = "<f2"
QTYPES: dict[str, QType] = {
    q.name: q for q in (
        QType("q8_0", "Q8_0", 8, 32, 34, np.dtype([("d", _F16), ("qs", "i1", (32,))])),
        QType("q4_0", "Q4_0", 2, 32, 18, np.dtype([("d", _F16), ("qs", "u1", (16,))])),
        QType("q4_k", "Q4_K", 12, 256, 144,
              np.dtype([("d", _F16), ("dmin", _F16), ("scales", "u1", (12,)), ("qs", "u1", (128,))])),
        QType("q6_k", "Q6_K", 14, 256, 210,
              np.dtype([("ql", "u1", (128,)), ("qh", "u1", (64,)), ("scales", "i1", (16,)), ("d", _F16)])),
    )
}
for _q in QTYPES.values():
    assert _q.dtype.itemsize == _q.nbytes, _q
BY_GGML = {q.ggml: q for q in QTYPES.values()}
BY_GGML_ID = {q.ggml_id: q for q in QTYPES.values()}
# What `--dtype` may ask to quantize to on load (q6_k is read from files but not offered: no user asked).
QUANT_DTYPES = ("q8_0", "q4_0", "q4_k")


def qtype_of(a) -> QType | None:
    """The block type of array `a`, or None for a plain (float) array."""
    dt = getattr(a, "dtype", None)
    if dt is None or dt.names is None:
        return None
    for q in QTYPES.values():
        if dt == q.dtype:
            return q
    return None


def is_quantized(a) -> bool:
    return qtype_of(a) is not None


def logical_shape(a) -> tuple[int, ...]:
    """The weight shape an array stands for: [..., K] for a block array [..., K / block]."""
    q = qtype_of(a)
    return tuple(a.shape) if q is None else tuple(a.shape[:-1]) + (a.shape[-1] * q.block,)


def get(name: str) -> QType:
    try:
        return QTYPES[name]
    except KeyError:
        raise InputError(f"unknown quantized type {name!r}; known: {', '.join(QTYPES)}") from None


def check_width(q: QType, k: int, what: str) -> None:
    if k % q.block:
        raise InputError(f"{what}: a {q.name} row needs a multiple of {q.block} weights, this one has {k}")


# ----------------------------------------------------------------------------- dequantize

def _f16(a) -> np.ndarray:
    return np.asarray(a).astype(np.float32)


def dequantize(a: np.ndarray) -> np.ndarray:
    """float32 [..., K] values of block array `a` [..., K / block] (a plain array is returned as float32)."""
    q = qtype_of(a)
    if q is None:
        return np.asarray(a, dtype=np.float32)
    b = a.reshape(-1)
    if q.name == "q8_0":
        out = _f16(b["d"])[:, None] * b["qs"].astype(np.float32)
    elif q.name == "q4_0":
        qs = b["qs"]
        nib = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0  # [n, 32]
        out = _f16(b["d"])[:, None] * nib
    elif q.name == "q4_k":
        sc, m = _k4_scale_min(b["scales"])                                          # [n, 8] each
        ds = _f16(b["d"])[:, None] * sc.astype(np.float32)                          # [n, 8]
        dm = _f16(b["dmin"])[:, None] * m.astype(np.float32)
        qs = b["qs"].reshape(-1, 4, 32)                                             # 4 chunks of 64 weights
        nib = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.float32)  # sub-block j = 2c + hi
        out = ds[:, :, None] * nib - dm[:, :, None]
    else:  # q6_k
        out = (_f16(b["d"])[:, None, None] * b["scales"].astype(np.float32).reshape(-1, 16, 1)) \
            * (_q6_values(b).reshape(-1, 16, 16).astype(np.float32) - 32.0)
    return out.reshape(a.shape[:-1] + (a.shape[-1] * q.block,)).astype(np.float32, copy=False)


def _k4_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins of q4_k blocks from their 12 packed bytes: bytes 0-3 hold sc[0..3]
    (low 6 bits) and sc[4..7]'s top 2 bits; bytes 4-7 likewise for the mins; bytes 8-11 the low
    nibbles of sc[4..7] (low) and m[4..7] (high)."""
    s = scales.astype(np.uint8)
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    m = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, m


def _q6_values(b) -> np.ndarray:
    """The 256 six-bit codes (0..63) of each q6_k block, in weight order. Each half of 128 weights
    uses 64 ql bytes and 32 qh bytes: weight 32·g + l (g < 4, l < 32) takes the low (g even) or
    high (g odd) nibble of ql[l + 32·(g & 1)] and bits 2g, 2g + 1 of qh[l]."""
    ql = b["ql"].reshape(-1, 2, 2, 32)   # [n, half, g & 1, l]
    qh = b["qh"].reshape(-1, 2, 1, 32)   # [n, half, ., l]
    out = np.empty((ql.shape[0], 2, 4, 32), dtype=np.uint8)
    for g in range(4):
        low = (ql[:, :, g & 1] >> (4 * (g >> 1))) & 0x0F
        high = (qh[:, :, 0] >> (2 * g)) & 0x03
        out[:, :, g] = low | (high << 4)
    return out.reshape(-1, 256)


# ----------------------------------------------------------------------------- quantize

def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: halves away from zero (GGML's reference quantizers use it)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _to_f16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16)


def quantize(x: np.ndarray, name: str) -> np.ndarray:
    """Block array of type `name` [..., K / block] holding float array `x` [..., K]."""
    q = get(name)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise InputError("quantize: a scalar has no rows")
    check_width(q, x.shape[-1], f"quantize to {name}")
    if not np.isfinite(x).all():
        raise InputError(f"quantize to {name}: the input holds NaN or Inf")
    xb = x.reshape(-1, q.block)
    out = np.zeros(xb.shape[0], dtype=q.dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if name == "q8_0":
            amax = np.abs(xb).max(axis=1)
            d = amax / 127.0
            inv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0).astype(np.float32)
            out["d"] = _to_f16(d)
            out["qs"] = _roundf(xb * inv[:, None]).astype(np.int8)
        elif name == "q4_0":
            idx = np.argmax(np.abs(xb), axis=1)          # first of the largest |x|, signed value kept
            mx = xb[np.arange(xb.shape[0]), idx]
            d = mx / -8.0
            inv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0).astype(np.float32)
            qv = np.minimum(15, np.trunc(xb * inv[:, None] + np.float32(8.5))).astype(np.uint8)
            out["d"] = _to_f16(d)
            out["qs"] = qv[:, :16] | (qv[:, 16:] << 4)
        elif name == "q4_k":
            _quantize_q4_k(xb, out)
        else:
            _quantize_q6_k(xb, out)
    return out.reshape(x.shape[:-1] + (x.shape[-1] // q.block,))


def _quantize_q4_k(xb: np.ndarray, out: np.ndarray) -> None:
    sub = xb.reshape(-1, 8, 32)
    mn = np.minimum(sub.min(axis=2), 0.0)                    # w = s·q − m with m = −mn ≥ 0
    scale = (sub.max(axis=2) - mn) / 15.0
    d = _to_f16(scale.max(axis=1) / 63.0)
    dmin = _to_f16((-mn).max(axis=1) / 63.0)
    df, dminf = d.astype(np.float32), dmin.astype(np.float32)
    sc = np.clip(_roundf(np.where(df[:, None] > 0, scale / np.where(df > 0, df, 1)[:, None], 0)), 0, 63).astype(np.uint8)
    m = np.clip(_roundf(np.where(dminf[:, None] > 0, -mn / np.where(dminf > 0, dminf, 1)[:, None], 0)), 0, 63
                ).astype(np.uint8)
    s_eff = df[:, None] * sc.astype(np.float32)
    m_eff = dminf[:, None] * m.astype(np.float32)
    qv = np.where(s_eff[:, :, None] > 0, _roundf((sub + m_eff[:, :, None]) / np.where(s_eff > 0, s_eff, 1)[:, :, None]), 0)
    qv = np.clip(qv, 0, 15).astype(np.uint8).reshape(-1, 4, 2, 32)  # [n, chunk, lo/hi, 32]
    out["d"], out["dmin"] = d, dmin
    packed = np.empty((xb.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = (m[:, 0:4] & 0x3F) | ((m[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    out["scales"] = packed
    out["qs"] = (qv[:, :, 0] | (qv[:, :, 1] << 4)).reshape(-1, 128)


def _quantize_q6_k(xb: np.ndarray, out: np.ndarray) -> None:
    sub = xb.reshape(-1, 16, 16)
    s = np.abs(sub).max(axis=2) / 31.0                        # q − 32 in [−31, 31] covers ±amax
    d = _to_f16(s.max(axis=1) / 127.0)
    df = d.astype(np.float32)
    sc = np.clip(_roundf(np.where(df[:, None] > 0, s / np.where(df > 0, df, 1)[:, None], 0)), -128, 127).astype(np.int8)
    eff = df[:, None] * sc.astype(np.float32)
    qv = np.where(eff[:, :, None] != 0, _roundf(sub / np.where(eff != 0, eff, 1)[:, :, None]), 0)
    codes = (np.clip(qv, -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # [n, half, g, l]
    ql = np.empty((xb.shape[0], 2, 2, 32), dtype=np.uint8)
    ql[:, :, 0] = (codes[:, :, 0] & 0x0F) | ((codes[:, :, 2] & 0x0F) << 4)
    ql[:, :, 1] = (codes[:, :, 1] & 0x0F) | ((codes[:, :, 3] & 0x0F) << 4)
    qh = np.zeros((xb.shape[0], 2, 32), dtype=np.uint8)
    for g in range(4):
        qh |= (codes[:, :, g] >> 4) << (2 * g)
    out["ql"], out["qh"] = ql.reshape(-1, 128), qh.reshape(-1, 64)
    out["scales"], out["d"] = sc, d


__all__ = ["BY_GGML", "BY_GGML_ID", "QTYPES", "QUANT_DTYPES", "QType", "check_width", "dequantize", "get",
           "is_quantized", "logical_shape", "qtype_of", "quantize"]
