"""The op contract of csrc/cpu/ops.h in plain NumPy, on top of reference.py: the `numpy` backend.

Lets the engine's shared logic (sessions, ragged batches, trees, rollback, parallel plans) run
and be tested without the compiled extension, and documents the contract executably. Weights
may be f32, f16, bf16 bits (uint16) or block-quantized (lfm2engine.quant: used as their
dequantized float32 values, the exact numerics mode's definition). Like the C++ kernels, every op
is row-batch invariant: gemm multiplies one row at a time (a BLAS call over several rows may pick
another kernel, and another summation order, for another row count). Slow; never on a hot path.
"""

import numpy as np

from .. import quant
from .. import reference as ref
from ..checkpoint import bf16_to_f32


def w_f32(a: np.ndarray) -> np.ndarray:
    """A weight array (f32, f16, bf16 bits or a quant block array [..., K / block]) as float32 [..., K]."""
    if quant.is_quantized(a):
        return quant.dequantize(a)
    return bf16_to_f32(a) if a.dtype == np.uint16 else a.astype(np.float32)


def gemm(out, x, w):
    wf = w_f32(w)
    for i in range(x.shape[0]):
        out[i] = wf @ x[i]


def qkv_split(q, k, v, qkv):
    """q [T, H, Dh], k, v [T, Hkv, Dh] = the column blocks of qkv [T, (H + 2 Hkv) Dh]."""
    nq, nk = q.shape[1] * q.shape[2], k.shape[1] * k.shape[2]
    q[...] = qkv[:, :nq].reshape(q.shape)
    k[...] = qkv[:, nq : nq + nk].reshape(k.shape)
    v[...] = qkv[:, nq + nk :].reshape(v.shape)


def embedding(out, table, ids):
    if np.any((ids < 0) | (ids >= table.shape[0])):
        raise IndexError("token id out of range")
    out[:] = w_f32(table)[ids]


def rmsnorm(out, x, w, eps):
    out[:] = ref.rmsnorm(x, w, eps)


def rope(x, positions, theta):
    x[:] = ref.rope(x, positions, theta)


def kv_write(kc, vc, k, v, seq, pos):
    for t in range(len(seq)):
        kc[seq[t], :, pos[t]] = k[t]
        vc[seq[t], :, pos[t]] = v[t]


def attention(out, q, kc, vc, seq, pos, mask=None):
    h, hkv = q.shape[1], kc.shape[1]
    for t in range(q.shape[0]):
        vis = np.nonzero(mask[t])[0] if mask is not None else np.arange(pos[t] + 1)
        if len(vis) == 0:  # the contract: a token that sees nothing gets zeros
            out[t] = 0.0
            continue
        k = kc[seq[t]][:, vis].transpose(1, 0, 2)  # [Hkv, S, Dh] -> [S, Hkv, Dh]
        v = vc[seq[t]][:, vis].transpose(1, 0, 2)
        out[t] = ref.attention(q[t : t + 1], k, v, np.array([len(vis) - 1]))[0]
    del h, hkv


def shortconv(out, bcx, conv_w, state, seq, u_out=None):
    t = 0
    d = out.shape[1]
    while t < len(seq):
        s = seq[t]
        e = t
        while e < len(seq) and seq[e] == s:
            e += 1
        y, state[s] = ref.shortconv(bcx[t:e], conv_w, state[s])
        out[t:e] = y
        if u_out is not None:
            u_out[t:e] = bcx[t:e, :d] * bcx[t:e, 2 * d :]
        t = e


def swiglu(out, gu):
    f = out.shape[1]
    with np.errstate(over="ignore"):  # exp(-gate) overflows to inf for gate << 0: silu -> -0, as in C++
        out[:] = ref.swiglu(gu[:, :f], gu[:, f:])


def moe_route(ids_out, w_out, logits, bias, norm_topk, scale):
    ids, w = ref.moe_route(logits, bias, ids_out.shape[1], norm_topk, scale)
    ids_out[:] = ids
    w_out[:] = w


def moe_expert_rows(out, x, eids, w13, w2):
    fe = quant.logical_shape(w2)[2]
    out[eids < 0] = 0
    for e in np.unique(eids[eids >= 0]):  # each expert's weights converted once, its rows one at a time
        a, b = w_f32(w13[e]), w_f32(w2[e])
        for n in np.nonzero(eids == e)[0]:
            gu = a @ x[n]
            out[n] = b @ ref.swiglu(gu[:fe], gu[fe:])


def moe_experts(out, x, ids, w, w13, w2):
    t_, k = ids.shape
    rows = np.empty((t_ * k, x.shape[1]), np.float32)
    moe_expert_rows(rows, np.repeat(x, k, axis=0), ids.reshape(-1), w13, w2)
    rows = rows.reshape(t_, k, -1)
    acc = np.zeros_like(x)
    for j in range(k):
        acc += np.where(ids[:, j : j + 1] >= 0, w[:, j : j + 1] * rows[:, j], 0)
    out[:] = acc


def argmax(out, logits):
    out[:] = np.argmax(logits, axis=-1)
