"""Executors: replace an Engine's MoE block (`engine.moe_impl`) with its EP or TP version.

`install(engine, plan, comm)` gives the engine a private copy of its weights in which this
rank keeps only its share of the experts (EP: its expert range, E/R of them; TP: its canonical
Fe slices of every expert, 1/R of each), and sets `engine.moe_impl` to an executor. Executors
read the plan's tables and call moe_parallel's stages; they contain no ownership logic.
Each executor times its stages (compute vs communication) and counts the bytes it exchanges
with other ranks, for benchmarks/bench_parallel.py.
Not here: request splitting and idle passes (data_parallel.py), plan tables (plan.py).
"""

from __future__ import annotations

import time

import numpy as np

from .. import quant
from ..errors import ParallelError
from ..weights import k_slice
from . import moe_parallel as mp
from .plan import ParallelPlan, ffn_slice_bounds, max_local_experts


def _stats() -> dict:
    return dict(calls=0, tokens=0, route_s=0.0, experts_s=0.0, combine_s=0.0, comm_s=0.0,
                bytes_sent=0, bytes_recv=0)


class _Executor:
    """Shared parts: the plan, the comm, the engine's ops and config, per-stage timers."""

    def __init__(self, engine, plan: ParallelPlan, comm):
        self.engine, self.plan, self.comm = engine, plan, comm
        self.ops, self.config = engine.ops, engine.config
        self.stats = _stats()

    def reset_stats(self) -> None:
        self.stats = _stats()

    def weight_bytes(self) -> int:
        raise NotImplementedError

    def _route(self, i: int, h: np.ndarray):
        k = self.config.num_experts_per_tok
        if h.shape[0] == 0:
            return np.empty((0, k), np.int32), np.empty((0, k), np.float32)
        return self.engine.route(i, h)

    def idle_pass(self) -> None:
        """Take part in every MoE layer of one forward pass with no tokens of our own, so that
        ranks that ran out of requests still meet their peers in each collective."""
        empty = np.empty((0, self.config.hidden_size), np.float32)
        for i in range(self.config.num_hidden_layers):
            if self.config.is_moe_layer(i) and i not in self.engine.skip_layers:
                self(i, empty)


class ExpertParallelMoE(_Executor):
    """EP: route locally, dispatch rows to the experts' owners, run local experts, send the
    rows back, weighted sum on the home rank in slot order."""

    def __init__(self, engine, plan: ParallelPlan, comm, experts: dict):
        super().__init__(engine, plan, comm)
        e = self.config.num_experts
        self.experts = experts  # layer -> (w13 [El, 2Fe, D], w2 [El, D, Fe])
        self.owner = plan.expert_owner(e)
        self.local_index = plan.expert_local_index(e)
        self.el_max = max_local_experts(e, plan.world_size)

    def weight_bytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.experts.values())

    def __call__(self, i: int, h: np.ndarray) -> np.ndarray:
        st, comm, me = self.stats, self.comm, self.plan.rank
        t0 = time.perf_counter()
        ids, wts = self._route(i, h)
        t1 = time.perf_counter()
        x_recv, eids, hd = mp.dispatch(comm, h, ids, self.owner, self.local_index, self.el_max)
        t2 = time.perf_counter()
        w13, w2 = self.experts[i]
        y_recv = mp.expert_rows(self.ops, x_recv, eids, w13, w2)
        t3 = time.perf_counter()
        rows = mp.combine_rows(comm, y_recv, hd)
        t4 = time.perf_counter()
        y = mp.weighted_sum(rows, ids, wts)
        t5 = time.perf_counter()
        row_bytes = h.shape[1] * 4
        remote_sent = int(hd.send_rows.sum() - hd.send_rows[me])
        remote_recv = int(hd.recv_rows.sum() - hd.recv_rows[me])
        st["calls"] += 1
        st["tokens"] += h.shape[0]
        st["route_s"] += t1 - t0
        st["experts_s"] += t3 - t2
        st["combine_s"] += t5 - t4
        st["comm_s"] += (t2 - t1) + (t4 - t3)
        counts_bytes = 2 * 4 * self.el_max * (self.plan.world_size - 1)  # count matrix, both ways
        st["bytes_sent"] += (remote_sent + remote_recv) * row_bytes + counts_bytes // 2
        st["bytes_recv"] += (remote_recv + remote_sent) * row_bytes + counts_bytes // 2
        return y


class TensorParallelMoE(_Executor):
    """TP: every rank routes all tokens, computes its canonical Fe slices of every expert,
    tree-sums them, Allgathers the per-rank sums and finishes the same tree."""

    def __init__(self, engine, plan: ParallelPlan, comm, slices: dict):
        super().__init__(engine, plan, comm)
        self.slices = slices  # layer -> [(w13_s [E, 2Fs, D], w2_s [E, D, Fs]) per owned slice]

    def weight_bytes(self) -> int:
        return sum(a.nbytes + b.nbytes for sl in self.slices.values() for a, b in sl)

    def __call__(self, i: int, h: np.ndarray) -> np.ndarray:
        st = self.stats
        t0 = time.perf_counter()
        ids, wts = self._route(i, h)
        t1 = time.perf_counter()
        local = mp.tree_sum([mp.tp_slice_partial(self.ops, h, ids, wts, w13, w2) for w13, w2 in self.slices[i]])
        t2 = time.perf_counter()
        blocks = mp.tp_allgather(self.comm, local)  # [R, T, D]
        t3 = time.perf_counter()
        y = mp.tree_sum(list(blocks))
        t4 = time.perf_counter()
        peers = self.plan.world_size - 1
        st["calls"] += 1
        st["tokens"] += h.shape[0]
        st["route_s"] += t1 - t0
        st["experts_s"] += t2 - t1
        st["combine_s"] += t4 - t3
        st["comm_s"] += t3 - t2
        st["bytes_sent"] += peers * local.nbytes
        st["bytes_recv"] += peers * local.nbytes
        return y


def install(engine, plan, comm):
    """Make `engine` run its MoE layers under `plan` ("ep"/"tp" or a ParallelPlan) over `comm`.
    Returns the executor (also `engine.moe_impl`). The rank's copy of the weights keeps only its
    experts or slices; the layer's full `ew13`/`ew2` become None there, so the single-rank
    `local_moe` can no longer run on this engine by mistake."""
    if isinstance(plan, str):
        plan = ParallelPlan(plan, comm.Get_size(), comm.Get_rank())
    if plan.world_size != comm.Get_size() or plan.rank != comm.Get_rank():
        raise ParallelError(f"plan for rank {plan.rank}/{plan.world_size} installed on rank "
                            f"{comm.Get_rank()}/{comm.Get_size()}")
    cfg = engine.config
    if plan.kind == "dp":
        return None
    if not engine.backend.host_memory:
        raise ParallelError(f"plan {plan.kind} exchanges rows through host memory; the {engine.device} backend "
                            "keeps them on the device: use --plan dp (one model per rank)")
    if not cfg.is_moe:
        raise ParallelError(f"plan {plan.kind} shards experts, but this {cfg.model_type} model has none; "
                            "hint: use --plan dp")
    if plan.kind == "tp":
        check_tp_blocks(engine, plan)
    # the rank's own layer objects: the simulator installs several ranks from one loaded engine
    w = engine.w.with_layers([lw.copy() for lw in engine.w.layers])
    fe = cfg.moe_intermediate_size
    per_layer: dict = {}
    for i, lw in enumerate(w.layers):
        if not cfg.is_moe_layer(i):
            continue
        if plan.kind == "ep":
            a, b = plan.expert_range(cfg.num_experts)
            per_layer[i] = (np.ascontiguousarray(lw.ew13[a:b]), np.ascontiguousarray(lw.ew2[a:b]))
        else:
            sl = []
            for a, b in plan.ffn_slices(fe):
                w13_s = np.concatenate([lw.ew13[:, a:b], lw.ew13[:, fe + a : fe + b]], axis=1)  # [E, 2Fs, D]
                sl.append((np.ascontiguousarray(w13_s), np.ascontiguousarray(k_slice(lw.ew2, a, b))))  # w2: [E, D, Fs]
            per_layer[i] = sl
        lw.ew13 = lw.ew2 = None
    engine.w = w
    ex = (ExpertParallelMoE if plan.kind == "ep" else TensorParallelMoE)(engine, plan, comm, per_layer)
    engine.moe_impl = ex
    engine.parallel_plan = plan
    return ex


def check_tp_blocks(engine, plan: ParallelPlan) -> None:
    """TP cuts every expert's down projection w2 [E, D, Fe] along Fe, its K axis: with block-quantized
    experts every canonical slice bound must fall on a block edge (Fe / 4 a multiple of the block),
    else a ParallelError naming the type and the widths (the gate | up rows are whole rows: fine)."""
    cfg = engine.config
    fe = cfg.moe_intermediate_size
    for i, lw in enumerate(engine.w.layers):
        q = quant.qtype_of(lw.ew2) if cfg.is_moe_layer(i) else None
        if q is None:
            continue
        bounds = ffn_slice_bounds(fe, plan.tp_slices)
        if any(a % q.block or b % q.block for a, b in bounds):
            raise ParallelError(
                f"plan tp: layer {i}'s experts are {q.name}: their down projection (w2, K = Fe = {fe}) is cut into "
                f"{plan.tp_slices} slices of {', '.join(str(b - a) for a, b in bounds)} weights, which do not fall on "
                f"{q.name}'s {q.block}-weight blocks (Fe / {plan.tp_slices} must be a multiple of {q.block}); "
                "hint: use --plan ep or dp, or a dtype with smaller blocks (q8_0, q4_0: 32)")


def sharded_copy(engine, plan, comm):
    """A new engine sharing `engine`'s loaded weights, with `plan` installed over `comm` (the
    simulator's virtual ranks, tests and benchmarks compare plans from one loaded model)."""
    e = engine.derive(skip_layers=engine.skip_layers)
    install(e, plan, comm)
    return e


def expert_bytes(engine) -> int:
    """Bytes of expert weights this rank holds (installed executor's shards, or the full stacks)."""
    ex = executor_of(engine)
    if ex is not None:
        return ex.weight_bytes()
    return sum(lw.ew13.nbytes + lw.ew2.nbytes for lw in engine.w.layers if lw.ew13 is not None)


def idle_pass(engine) -> None:
    """One forward pass with no tokens (EP ranks without requests); nothing to do for other plans."""
    ex = getattr(engine, "moe_impl", None)
    if hasattr(ex, "idle_pass"):
        ex.idle_pass()


def executor_of(engine):
    ex = getattr(engine, "moe_impl", None)
    return ex if isinstance(ex, _Executor) else None
