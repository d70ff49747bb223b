"""Requests across ranks: each rank runs its share (plan.request_range), results gathered to the
root in request order; the loops that keep EP ranks in step.

EP needs every rank in every MoE collective, so a rank with fewer (or no) requests makes idle
passes: workload mode runs plan.num_passes() passes on every rank, and generation agrees after
each step, with one tiny Allgather, whether any rank still has a live sequence. Sampling uses
one generator per request, seeded by (seed, global request id), and the kernels are
row-batch invariant, so no result depends on which rank ran a request.
"""

from __future__ import annotations

import numpy as np

from ..generation import decode_loop
from ..sampling import Sampler
from .comm import allreduce_max, gather_rows
from .executors import idle_pass
from .plan import ParallelPlan


def local_logits(eng, plan: ParallelPlan, prompts, batch_size: int) -> np.ndarray:
    """Last-position logits [n_r, V] of this rank's requests (prompts holds all n requests),
    in batches of batch_size; idle passes keep the pass count equal on every rank."""
    n = len(prompts)
    a, b = plan.request_range(n)
    out = np.empty((b - a, eng.config.vocab_size), np.float32)
    for p in range(plan.num_passes(n, batch_size)):
        lo, hi = a + p * batch_size, min(b, a + (p + 1) * batch_size)
        if lo < hi:
            out[lo - a : hi - a] = eng.logits(list(prompts[lo:hi]))
        else:
            idle_pass(eng)
    return out


def gather_logits(comm, plan: ParallelPlan, local: np.ndarray, n: int) -> np.ndarray | None:
    """Rows of every rank's requests -> [n, V] on rank 0 in request order (None elsewhere)."""
    if not plan.splits_requests:
        return local if comm.Get_rank() == 0 else None
    return gather_rows(comm, local, plan.request_counts(n))


def plan_logits(eng, plan: ParallelPlan, comm, prompts, batch_size: int = 16) -> np.ndarray | None:
    return gather_logits(comm, plan, local_logits(eng, plan, prompts, batch_size), len(prompts))


def generate_in_step(eng, comm, prompts, request_ids, max_new_tokens: int, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = False,
                     on_step=None, on_token=None) -> list[list[int]]:
    """Engine.generate's loop for EP: the same tokens, but every rank makes the same number of
    forward passes (an idle pass where it has no live sequence) and stops only when no rank has
    a live sequence. prompts may be empty on some ranks."""
    sampler = Sampler(temperature, top_k, top_p, seed, request_ids)
    if prompts:
        prompts = eng.check_prompts(prompts, max_new_tokens)
    return decode_loop(eng, list(prompts), max_new_tokens, sampler, stop_at_eos, on_step,
                       agree=lambda n: allreduce_max(comm, n), idle=lambda: idle_pass(eng), on_token=on_token)


def plan_generate(eng, plan: ParallelPlan, comm, prompts, max_new_tokens: int, on_step=None,
                  on_token=None, **sampling) -> list[list[int]] | None:
    """Generate for all requests under `plan`: token lists on rank 0 in request order, None
    elsewhere. sampling: temperature, top_k, top_p, seed, stop_at_eos (as Engine.generate).
    on_token(i, token): called on the rank that runs request a + i of its share [a, b)."""
    n = len(prompts)
    a, b = plan.request_range(n)
    mine, rids = list(prompts[a:b]), list(range(a, b))
    if plan.kind == "ep":
        out = generate_in_step(eng, comm, mine, rids, max_new_tokens, on_step=on_step, on_token=on_token,
                               **sampling)
    elif mine:
        out = eng.generate(mine, max_new_tokens, request_ids=rids, on_step=on_step, on_token=on_token, **sampling)
    else:
        out = []
    if not plan.splits_requests:
        return out if comm.Get_rank() == 0 else None
    return gather_token_lists(comm, out, plan.request_counts(n))


def gather_token_lists(comm, lists: list[list[int]], counts: list[int]) -> list[list[int]] | None:
    """Variable-length token lists of every rank -> one list on rank 0 in rank order (buffer
    Gatherv of the lengths, then of the concatenated tokens)."""
    lens = np.array([len(x) for x in lists], np.int64)
    flat = np.array([t for x in lists for t in x], np.int64)
    all_lens = gather_rows(comm, lens, counts)
    tok_counts = None  # only the root needs the per-rank token counts
    if comm.Get_rank() == 0:
        tok_counts, off = [], 0
        for c in counts:
            tok_counts.append(int(all_lens[off : off + c].sum()))
            off += c
    all_flat = gather_rows(comm, flat, tok_counts)
    if comm.Get_rank() != 0:
        return None
    res, off = [], 0
    for ln in all_lens:
        res.append([int(t) for t in all_flat[off : off + int(ln)]])
        off += int(ln)
    return res
