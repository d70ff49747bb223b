"""MoE across ranks, written as the four stages route -> dispatch -> experts -> combine.

Shape legend (STYLE.md §3): T tokens on this rank, K top-k, D hidden, E experts, El experts on
this rank (El_max the most any rank holds), Fe expert width, Fs one TP slice of it, P = T·K
(token, slot) pairs, N rows received by this rank, R ranks.

Only `dispatch`, `combine_rows` and `tp_allgather` communicate (STYLE.md §12). Everything
else is local and deterministic:
  * weighted_sum adds a token's K expert rows in top-k slot order in fp32, on the token's home
    rank (acc = 0; acc += w[:, j] * row[:, j] for j = 0..K-1): the order of the fused
    single-rank `moe_experts` kernel, so EP reproduces the single-rank engine bit for bit
    (the expert kernels are row-batch invariant);
  * tree_sum adds TP slice partials in the canonical pairwise tree ((s0+s1)+(s2+s3)), the same
    whether the 4 slices live on 1, 2 or 4 ranks (STYLE.md §13).
Not here: which rank holds what (plan.py) and weight slicing / timing (executors.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .comm import allgather_rows, alltoall_counts, alltoallv_rows


@dataclass
class DispatchHandle:
    """What combine needs to send rows back: the pair index of every sent row and the row counts."""

    order: np.ndarray  # [P] int64: flat pair index t*K + j of the sent rows, in send order
    send_rows: np.ndarray  # [R] rows sent to each rank
    recv_rows: np.ndarray  # [R] rows received from each rank
    tokens: int  # T
    top_k: int  # K


def dispatch_layout(ids: np.ndarray, owner: np.ndarray, local_index: np.ndarray, world_size: int,
                    el_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Send order and count matrix for ids [T, K] -> (order [P] int64, counts [R, El_max] int32).
    owner [E]: rank holding each expert; local_index [E]: its index there (plan.py tables).

    Rows are sent grouped by destination rank, then by the expert's local index there, and in
    (token, slot) order inside a group (a stable sort), so a receiver knows each row's expert
    from the counts alone and the layout does not depend on timing."""
    flat = ids.reshape(-1).astype(np.int64)  # [T, K] -> [P]
    key = owner[flat].astype(np.int64) * el_max + local_index[flat]
    order = np.argsort(key, kind="stable")
    counts = np.bincount(key, minlength=world_size * el_max).astype(np.int32).reshape(world_size, el_max)
    return order, counts


def dispatch(comm, x: np.ndarray, ids: np.ndarray, owner: np.ndarray, local_index: np.ndarray,
             el_max: int) -> tuple[np.ndarray, np.ndarray, DispatchHandle]:
    """x [T, D] f32, ids [T, K] -> rows to compute here [N, D] f32, their local expert ids [N]
    int32 (grouped by source rank, then expert), and the handle for combine_rows.

    Two collectives: Alltoall of the [R, El_max] count matrix, Alltoallv of the rows."""
    t_, k = ids.shape
    r_ = comm.Get_size()
    order, counts = dispatch_layout(ids, owner, local_index, r_, el_max)
    recv_counts = alltoall_counts(comm, counts)  # [R (source), El_max]
    send_x = x[order // k] if t_ else np.empty((0, x.shape[1]), np.float32)  # [P, D]
    send_rows, recv_rows = counts.sum(axis=1), recv_counts.sum(axis=1)
    recv_x = alltoallv_rows(comm, send_x, send_rows, recv_rows)  # [N, D]
    recv_eids = np.repeat(np.tile(np.arange(el_max, dtype=np.int32), r_), recv_counts.reshape(-1))  # [N]
    return recv_x, recv_eids, DispatchHandle(order, send_rows, recv_rows, t_, k)


def expert_rows(ops, x: np.ndarray, eids: np.ndarray, w13: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """Unweighted expert outputs of each row: x [N, D] f32, eids [N] int32 (local ids, <0 gives
    zeros), w13 [El, 2Fs, D] (gate | up), w2 [El, D, Fs] -> [N, D] f32. Skips the kernel when
    there is nothing to compute (no rows, or an empty FFN slice)."""
    out = np.zeros((x.shape[0], x.shape[1]), np.float32)
    if x.shape[0] and w2.shape[0] and w2.shape[2]:
        ops.moe_expert_rows(out, np.ascontiguousarray(x), eids, w13, w2)
    return out


def combine_rows(comm, y_recv: np.ndarray, h: DispatchHandle) -> np.ndarray:
    """Send computed rows back to their home ranks: y_recv [N, D] -> rows [T, K, D] (row t, j =
    expert ids[t, j] applied to token t). One Alltoallv, the reverse of dispatch's."""
    back = alltoallv_rows(comm, y_recv, h.recv_rows, h.send_rows)  # [P, D] in send order
    rows = np.empty((h.tokens * h.top_k, y_recv.shape[1]), np.float32)
    rows[h.order] = back
    return rows.reshape(h.tokens, h.top_k, y_recv.shape[1])  # [P, D] -> [T, K, D]


def weighted_sum(rows: np.ndarray, ids: np.ndarray, wts: np.ndarray) -> np.ndarray:
    """rows [T, K, D] f32, ids [T, K], wts [T, K] f32 -> [T, D] f32: sum over slots in slot
    order, fp32, slots with ids < 0 skipped (the combine of the fused moe_experts kernel)."""
    acc = np.zeros((rows.shape[0], rows.shape[2]), np.float32)
    term = np.empty_like(acc)
    for j in range(rows.shape[1]):
        np.multiply(wts[:, j : j + 1], rows[:, j], out=term)  # rounded to f32, then added: two roundings
        skip = ids[:, j] < 0
        if skip.any():
            term[skip] = 0
        acc += term
    return acc


def tree_sum(parts) -> np.ndarray:
    """Pairwise sum in a fixed tree: [a, b, c, d] -> (a + b) + (c + d). For aligned blocks of a
    power-of-two count, summing each block's tree first and then the blocks' sums gives the
    same bits as the tree over all leaves; that is what makes TP split-independent."""
    level = list(parts)
    while len(level) > 1:
        level = [level[i] + level[i + 1] if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


def tp_slice_partial(ops, x: np.ndarray, ids: np.ndarray, wts: np.ndarray, w13_s: np.ndarray,
                     w2_s: np.ndarray) -> np.ndarray:
    """One canonical Fe slice of the whole MoE layer: x [T, D], ids/wts [T, K], w13_s [E, 2Fs, D],
    w2_s [E, D, Fs] -> [T, D] = Σ_j wts[:, j] · expert_{ids[:, j]}, restricted to the slice."""
    t_, k = ids.shape
    xr = np.repeat(x, k, axis=0)  # [T, D] -> [P, D]: one row per (token, slot)
    rows = expert_rows(ops, xr, ids.reshape(-1).astype(np.int32), w13_s, w2_s)
    return weighted_sum(rows.reshape(t_, k, x.shape[1]), ids, wts)  # [P, D] -> [T, K, D] -> [T, D]


def tp_allgather(comm, local: np.ndarray) -> np.ndarray:
    """Every rank's tree-summed slice block [T, D] -> [R, T, D] in rank (= slice) order."""
    return allgather_rows(comm, local)
