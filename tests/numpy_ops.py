"""The `_core.cpu` op contract implemented on top of reference.py (tests only).

Lets the engine's Python logic (sessions, ragged batches, trees, rollback, parallel plans) be
tested against the same op signatures without the compiled extension, and documents the
contract executable-ly. Weights may be f32, f16 or bf16 bits (uint16).
"""

import numpy as np

from lfm2engine import reference as ref
from lfm2engine.checkpoint import bf16_to_f32


def _w(a):
    return bf16_to_f32(a) if a.dtype == np.uint16 else a.astype(np.float32)


def gemm(out, x, w):
    out[:] = ref.gemm(x, _w(w))


def embedding(out, table, ids):
    if np.any((ids < 0) | (ids >= table.shape[0])):
        raise IndexError("token id out of range")
    out[:] = _w(table)[ids]


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
    out[:] = ref.swiglu(gu[:, :f], gu[:, f:])


def moe_route(ids_out, w_out, logits, bias, norm_topk, scale):
    ids, w = ref.moe_route(logits, bias, ids_out.shape[1], norm_topk, scale)
    ids_out[:] = ids
    w_out[:] = w


def moe_expert_rows(out, x, eids, w13, w2):
    fe = w2.shape[2]
    for n in range(x.shape[0]):
        e = eids[n]
        if e < 0:
            out[n] = 0
            continue
        gu = _w(w13[e]) @ x[n]
        out[n] = _w(w2[e]) @ ref.swiglu(gu[:fe], gu[fe:])


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


class _Core:
    """Stands in for the lfm2engine._core module."""

    class cpu:  # noqa: N801 - mirrors the extension's submodule name
        pass

    @staticmethod
    def set_num_threads(n):
        pass


for _n in ("gemm", "embedding", "rmsnorm", "rope", "kv_write", "attention", "shortconv", "swiglu", "moe_route",
           "moe_expert_rows", "moe_experts", "argmax"):
    setattr(_Core.cpu, _n, staticmethod(globals()[_n]))

core = _Core()
