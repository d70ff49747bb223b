"""The quant-dot numerics mode for block-quantized weights, in NumPy: the definition the C++ kernels
(csrc/cpu/gemm_qdot.h, `_core.set_quant_dot` / LFM2_QUANT_DOT=1) reproduce bit for bit.

1. `quantize_activations(x)`: per block of 32 activations, amax = max |x|; d = amax / 127 and
   q = round-half-even(x · (127 / amax)) (fp32 operations); a block with NaN or Inf has d = NaN and
   q = 0; a block with amax < 2^-120 (zero, or too small for 127 / amax) has d = 0 and q = 0.
2. Per 32-weight span b of a weight row, an exact integer dot product I of q with the weights'
   integer codes and one fp32 value v_b (each operation rounded to fp32, no fused multiply-add):
   q8_0 / q4_0: v = (d_x · d) · I (q4_0 codes nibble − 8); q4_k: v = d_x · ((d · sc_j) · I −
   (dmin · m_j) · Σq); q6_k: v = d_x · ((d · sc_lo) · I_lo + (d · sc_hi) · I_hi) over its two
   16-weight halves (codes c − 32).
3. Sixteen fp32 lane sums (lane b mod 16, increasing b, from +0), then the fixed tree
   (a[l] + a[l + 8]) → (t[l] + t[l + 4]) → (u0 + u2) + (u1 + u3).
"""

from __future__ import annotations

import numpy as np

from . import quant
from .errors import InputError

TINY_AMAX = np.float32(2.0 ** -120)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 [..., K], d float32 [..., K / 32]) of float32 activations x [..., K], K a multiple of 32."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % 32:
        raise InputError(f"quantize_activations: x needs a last axis that is a multiple of 32, got shape {x.shape}")
    xb = x.reshape(-1, 32)
    bad = ~np.isfinite(xb).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        amax = np.where(bad, np.float32(0), np.abs(np.where(np.isfinite(xb), xb, 0)).max(axis=1)).astype(np.float32)
        zero = bad | (amax < TINY_AMAX)
        safe = np.where(zero, np.float32(1), amax).astype(np.float32)
        inv = (np.float32(127) / safe).astype(np.float32)
        q = np.rint(xb * inv[:, None]).astype(np.float32)
        d = (safe / np.float32(127)).astype(np.float32)
    q[zero] = 0
    d = np.where(bad, np.float32(np.nan), np.where(zero, np.float32(0), d)).astype(np.float32)
    return q.astype(np.int8).reshape(x.shape), d.reshape(x.shape[:-1] + (x.shape[-1] // 32,))


def _spans(w: np.ndarray, q: quant.QType):
    """Per 32-weight span of each row: integer codes [N, nb, 32] (offset removed) and fp32 scales."""
    n = w.shape[0]
    b = w.reshape(-1)
    f16 = lambda a: np.asarray(a).astype(np.float32)  # noqa: E731 (exact widening)
    if q.name == "q8_0":
        return b["qs"].astype(np.int64).reshape(n, -1, 32), (f16(b["d"]).reshape(n, -1),)
    if q.name == "q4_0":
        nib = np.concatenate([b["qs"] & 0x0F, b["qs"] >> 4], axis=1).astype(np.int64) - 8
        return nib.reshape(n, -1, 32), (f16(b["d"]).reshape(n, -1),)
    if q.name == "q4_k":
        sc, m = quant._k4_scale_min(b["scales"])
        ds = f16(b["d"])[:, None] * sc.astype(np.float32)
        dm = f16(b["dmin"])[:, None] * m.astype(np.float32)
        qs = b["qs"].reshape(-1, 4, 32)
        nib = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, -1, 32).astype(np.int64)
        return nib, (ds.reshape(n, -1), dm.reshape(n, -1))
    codes = quant._q6_values(b).astype(np.int64).reshape(n, -1, 32) - 32
    ds = (f16(b["d"])[:, None] * b["scales"].astype(np.float32)).reshape(n, -1, 2)
    return codes, (ds[:, :, 0], ds[:, :, 1])


def qdot_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """out [M, N] = the quant-dot product of float32 x [M, K] and quantized weights w [N, K / block]."""
    q = quant.qtype_of(w)
    if q is None:
        raise InputError("qdot_reference: w must be a quantized block array (lfm2engine.quant)")
    x = np.asarray(x, dtype=np.float32)
    K = w.shape[-1] * q.block
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != K:
        raise InputError(f"qdot_reference: x [M, {K}] and w [N, {w.shape[-1]}] of {q.name} expected, "
                         f"got {x.shape} and {w.shape}")
    M, N, nb = x.shape[0], w.shape[0], K // 32
    xq, dx = quantize_activations(x)
    xq = xq.astype(np.int64).reshape(M, nb, 32)
    codes, scales = _spans(w, q)
    dx = dx[:, None, :]                                                       # [M, 1, nb]
    with np.errstate(invalid="ignore", over="ignore"):
        if q.name == "q6_k":
            lo = np.einsum("mbk,nbk->mnb", xq[:, :, :16], codes[:, :, :16]).astype(np.float32)
            hi = np.einsum("mbk,nbk->mnb", xq[:, :, 16:], codes[:, :, 16:]).astype(np.float32)
            v = dx * (scales[0][None] * lo + scales[1][None] * hi)
        else:
            isum = np.einsum("mbk,nbk->mnb", xq, codes).astype(np.float32)  # |I| < 2^20: exact
            if q.name == "q4_k":
                xs = xq.sum(axis=2).astype(np.float32)[:, None, :]
                v = dx * (scales[0][None] * isum - scales[1][None] * xs)
            else:
                v = (dx * scales[0][None]) * isum
        v = v.astype(np.float32)
        lanes = np.zeros((M, N, 16), np.float32)
        for g in range(0, nb, 16):
            part = v[:, :, g:g + 16]
            lanes[:, :, :part.shape[2]] += part
        t = lanes[:, :, :8] + lanes[:, :, 8:]
        u = t[:, :, :4] + t[:, :, 4:]
        return ((u[:, :, 0] + u[:, :, 2]) + (u[:, :, 1] + u[:, :, 3])).astype(np.float32)


__all__ = ["TINY_AMAX", "qdot_reference", "quantize_activations"]
