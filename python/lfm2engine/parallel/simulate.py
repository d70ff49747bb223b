"""Single-process simulator of any plan: R virtual ranks as threads over an in-memory comm.

`ThreadComm` implements the subset of mpi4py's Comm the engine uses (the capitalized buffer
collectives with `[buf, (counts, displs)]` specs, plus allgather/bcast/Barrier/Abort), with
MPI's semantics: every rank must call the same collectives in the same order, or the
simulation fails with a ParallelError after `timeout` seconds instead of hanging. The exact
same executor code runs here and under mpirun; only the comm differs. Used by
tests/test_parallel_plan.py to check EP/TP/DP == unsharded in seconds, without mpirun.
"""

from __future__ import annotations

import copy
import threading

import numpy as np

from ..errors import ParallelError
from .plan import ParallelPlan


class _World:
    def __init__(self, size: int, timeout: float):
        self.size, self.timeout = size, timeout
        self.barrier = threading.Barrier(size)
        self.slots: list = [None] * size
        self.aborted: list = []


class ThreadComm:
    """One virtual rank's view of a simulated world."""

    def __init__(self, world: _World, rank: int):
        self._w, self.rank, self.size = world, rank, world.size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def _wait(self):
        try:
            self._w.barrier.wait(self._w.timeout)
        except threading.BrokenBarrierError:
            why = (self._w.aborted[0] if self._w.aborted
                   else "a collective timed out (ranks called different collectives?)")
            raise ParallelError(f"simulated rank {self.rank}: {why}") from None

    def _exchange(self, value):
        """Every rank contributes `value`; returns all contributions in rank order."""
        self._w.slots[self.rank] = value
        self._wait()
        got = list(self._w.slots)
        self._wait()
        return got

    # -- pickled (start-up) collectives
    def Barrier(self):
        self._exchange(None)

    def allgather(self, x):
        return self._exchange(copy.deepcopy(x))

    def bcast(self, x, root=0):
        return copy.deepcopy(self._exchange(x)[root])

    # -- buffer collectives
    def Alltoall(self, send, recv):
        send = np.asarray(send).reshape(self.size, -1)
        got = self._exchange(send.copy())
        recv.reshape(self.size, -1)[:] = np.stack([g[self.rank] for g in got])

    def Alltoallv(self, send_spec, recv_spec):
        sbuf, (sc, sd) = send_spec
        rbuf, (rc, rd) = recv_spec
        sflat = np.asarray(sbuf).reshape(-1)
        got = self._exchange([sflat[sd[r] : sd[r] + sc[r]].copy() for r in range(self.size)])
        rflat = rbuf.reshape(-1)
        for src in range(self.size):
            piece = got[src][self.rank]
            if piece.size != rc[src]:
                raise ParallelError(f"simulated Alltoallv: rank {self.rank} expected {rc[src]} elements from rank "
                                    f"{src}, got {piece.size}")
            rflat[rd[src] : rd[src] + rc[src]] = piece

    def Allgather(self, send, recv):
        got = self._exchange(np.array(send, copy=True))
        recv.reshape(self.size, -1)[:] = np.stack([g.reshape(-1) for g in got])

    def Gatherv(self, send, recv_spec, root=0):
        got = self._exchange(np.array(send, copy=True).reshape(-1))
        if self.rank == root:
            rbuf, (rc, rd) = recv_spec
            rflat = rbuf.reshape(-1)
            for src in range(self.size):
                rflat[rd[src] : rd[src] + rc[src]] = got[src]

    def Abort(self, code=1):
        self._w.aborted.append(f"rank {self.rank} called Abort({code})")
        self._w.barrier.abort()
        raise ParallelError(f"simulated rank {self.rank} aborted the job (code {code})")


def run(world_size: int, fn, timeout: float = 60.0) -> list:
    """Run fn(comm) on `world_size` virtual ranks (threads); returns the results in rank order.
    An exception on any rank breaks every pending collective and is re-raised here."""
    world = _World(world_size, timeout)
    results: list = [None] * world_size
    errors: list = [None] * world_size

    def body(r):
        try:
            results[r] = fn(ThreadComm(world, r))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors[r] = e
            world.aborted.append(f"rank {r} failed: {type(e).__name__}: {e}")
            world.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * 4)
    if any(t.is_alive() for t in threads):
        raise ParallelError(f"simulation of {world_size} ranks did not finish in {timeout * 4:.0f} s")
    first = [e for e in errors if e is not None and not isinstance(e, ParallelError)] or [e for e in errors if e]
    if first:
        raise first[0]
    return results


def simulate_generate(engine, kind: str, world_size: int, prompts, max_new_tokens: int, **sampling):
    """Tokens generated for all prompts under plan `kind` on `world_size` virtual ranks."""
    from .data_parallel import plan_generate
    from .executors import sharded_copy

    def fn(comm):
        plan = ParallelPlan(kind, world_size, comm.Get_rank())
        return plan_generate(sharded_copy(engine, plan, comm), plan, comm, prompts, max_new_tokens, **sampling)

    return run(world_size, fn)[0]


def simulate_logits(engine, kind: str, world_size: int, prompts, batch_size: int = 16) -> np.ndarray:
    """Last-position logits [n, V] of all prompts under plan `kind` on `world_size` virtual ranks."""
    from .data_parallel import plan_logits
    from .executors import sharded_copy

    def fn(comm):
        plan = ParallelPlan(kind, world_size, comm.Get_rank())
        return plan_logits(sharded_copy(engine, plan, comm), plan, comm, prompts, batch_size)

    return run(world_size, fn)[0]
