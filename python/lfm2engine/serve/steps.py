"""One scheduled step on every rank: the batch composition that rank 0 decides, run where the
slots live, logits back on rank 0.

A step is (released slots, [(slot, token ids)]): slots to empty first, then one ragged forward
pass in which each listed slot appends its tokens (a prefill chunk or one decode token). Rank 0
(the scheduler) calls `StepExecutor.step`; the other ranks sit in `StepExecutor.serve_forever`
and receive the same composition by broadcast, so every rank steps the same batch.

Where the slots live, by plan (the parallel executors of lfm2engine.parallel do the MoE work):
  dp  R replicas; global slot g lives on rank g // slots_per_rank; a rank runs only its slots
      and makes no collective inside the pass.
  ep  slots split as in dp; experts sharded over ranks, so every rank joins every MoE
      collective: a rank with no slot in this step makes an idle pass.
  tp  every rank holds every slot and runs the whole batch (each expert's FFN width sharded).
Rows of logits of dp/ep ranks are gathered to rank 0 in rank order (one Gatherv per step);
under tp rank 0 already has them. Results do not depend on which rank ran a slot (the
kernels are row-batch invariant and the plans are split-invariant).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from ..cli import at_least
from ..errors import InputError
from ..parallel.comm import gather_rows
from ..parallel.executors import idle_pass
from ..parallel.plan import ParallelPlan

_STOP = "stop"


class StepExecutor:
    """The sessions of one rank and the step protocol. `slots_per_rank` sequence slots of
    `capacity` tokens each per rank (dp/ep: R × that many slots in all; tp: that many)."""

    def __init__(self, engine, comm, plan: ParallelPlan, slots_per_rank: int, capacity: int):
        self.engine, self.comm, self.plan = engine, comm, plan
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.slots_per_rank, self.capacity = int(slots_per_rank), int(capacity)
        self.session = engine.session(self.slots_per_rank, self.capacity)
        self.vocab = engine.config.vocab_size
        self.closed = False

    @property
    def num_slots(self) -> int:
        """Global sequence slots (the scheduler's KV budget is num_slots × capacity)."""
        return self.slots_per_rank * (self.size if self.plan.splits_requests else 1)

    def slot_rank(self, slot: int) -> int:
        return slot // self.slots_per_rank if self.plan.splits_requests else 0

    def slots_of_rank(self, rank: int) -> range:
        if not self.plan.splits_requests:
            return range(self.num_slots)
        return range(rank * self.slots_per_rank, (rank + 1) * self.slots_per_rank)

    # ------------------------------------------------------------------ rank 0
    def step(self, seqs, tokens, released=()) -> np.ndarray:
        """Rank 0: run one step on every rank -> last-position logits [len(seqs), V] in `seqs` order."""
        msg = (list(map(int, released)), list(map(int, seqs)), [list(map(int, t)) for t in tokens])
        self._send(msg)
        return self._run(*msg)

    def release(self, slots) -> None:
        """Rank 0: empty slots with no pass (when nothing else is left to run)."""
        if slots:
            self._send((list(map(int, slots)), [], []))
            self._run(list(map(int, slots)), [], [])

    def close(self) -> None:
        """Rank 0: tell the other ranks to leave serve_forever."""
        if not self.closed:
            self.closed = True
            self._send(_STOP)

    def abort(self, message: str) -> None:
        """A step failed on rank 0: under MPI the other ranks may wait in a collective of that
        step forever, so the whole job ends (as run_guarded does for any rank's error)."""
        if self.size > 1:
            print(f"[rank 0/{self.size}] {message}", file=sys.stderr, flush=True)
            self.comm.Abort(1)

    def _send(self, msg) -> None:
        if self.size > 1:
            self.comm.Ibarrier().Wait()  # wakes ranks that sleep between steps (see _wait)
            self.comm.bcast(msg, root=0)

    # ------------------------------------------------------------------ other ranks
    def serve_forever(self) -> None:
        """Ranks > 0: run every step rank 0 sends until it closes."""
        while True:
            self._wait()
            msg = self.comm.bcast(None, root=0)
            if msg == _STOP:
                return
            self._run(*msg)

    def _wait(self) -> None:
        """Sleep until rank 0 starts a step (a blocking bcast would spin a core while idle)."""
        req = self.comm.Ibarrier()
        pause = 0.0
        while not req.Test():
            time.sleep(pause)
            pause = min(0.002, pause + 0.0001)

    # ------------------------------------------------------------------ every rank
    def _run(self, released, seqs, tokens) -> np.ndarray | None:
        mine = self.slots_of_rank(self.rank)
        base = mine.start
        for g in released:
            if g in mine:
                self.session.release(g - base)
        if not seqs:
            return np.empty((0, self.vocab), np.float32) if self.rank == 0 else None
        idx = [j for j, g in enumerate(seqs) if g in mine]
        if idx:
            logits = self.session.forward([seqs[j] - base for j in idx], [tokens[j] for j in idx])
        else:
            logits = np.empty((0, self.vocab), np.float32)
            if self.plan.kind == "ep":
                idle_pass(self.engine)  # meet the other ranks in every MoE collective
        if not self.plan.splits_requests or self.size == 1:
            return logits if self.rank == 0 else None
        counts = [sum(1 for g in seqs if self.slot_rank(g) == r) for r in range(self.size)]
        rows = gather_rows(self.comm, np.ascontiguousarray(logits, np.float32), counts)
        if self.rank != 0:
            return None
        order = sorted(range(len(seqs)), key=lambda j: (self.slot_rank(seqs[j]), j))  # rank order of rows
        out = np.empty_like(rows)
        out[order] = rows
        return out


def check_slots(slots_per_rank: int, capacity: int, engine) -> None:
    """InputError for a KV budget the engine cannot hold."""
    at_least("--max-batch", slots_per_rank, 1)
    ctx = engine.config.max_position_embeddings
    if not 2 <= capacity <= ctx:
        raise InputError(f"--max-context must be in [2, {ctx}] (the model's context), found {capacity}")
