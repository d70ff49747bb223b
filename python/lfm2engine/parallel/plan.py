"""ParallelPlan and its pure ownership tables (no MPI here; see ARCHITECTURE.md, STYLE.md §11)."""

from __future__ import annotations


def batch_slice(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Contiguous, balanced split of n requests: rank r gets [start, stop) (earlier ranks take the remainder)."""
    q, r = divmod(n, world_size)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)
