"""ParallelPlan and its pure ownership tables: who holds which request, expert and FFN slice.

No MPI and no arrays of activations here: plain functions of (sizes, world size, rank) that the
executors (executors.py, moe_parallel.py, data_parallel.py) read and tests check in
milliseconds (ARCHITECTURE.md "Parallel plans", STYLE.md §11, §13).

Plans (R = world_size):
  dp  every rank holds the whole model; requests are split (batch_slice), results gathered.
  ep  requests split as in dp; experts split into R contiguous, balanced ranges (expert_owner):
      E need not be divisible by R (E=7, R=4 -> 2,2,2,1 experts); with R > E some ranks own
      none and only route their own tokens.
  tp  every rank runs every request; each expert's intermediate dimension Fe is cut into
      TP_SLICES = 4 canonical slices (ffn_slice_bounds), rank r holds slices
      [r*4/R, (r+1)*4/R). The slice partials are always summed in the same pairwise tree
      ((s0+s1)+(s2+s3)), so TP is bitwise identical at 1, 2 and 4 ranks; R must divide 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ParallelError

KINDS = ("dp", "ep", "tp")
TP_SLICES = 4  # canonical number of Fe slices: the largest TP world size (STYLE.md §13)


def batch_slice(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Contiguous, balanced split of n requests: rank r gets [start, stop) (earlier ranks take the remainder)."""
    q, r = divmod(n, world_size)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def batch_counts(n: int, world_size: int) -> list[int]:
    """Requests per rank under batch_slice: [R]."""
    return [b - a for a, b in (batch_slice(n, world_size, r) for r in range(world_size))]


def expert_range(num_experts: int, world_size: int, rank: int) -> tuple[int, int]:
    """Experts [start, stop) held by `rank` under EP (contiguous, balanced; may be empty when R > E)."""
    return batch_slice(num_experts, world_size, rank)


def expert_owner(num_experts: int, world_size: int) -> np.ndarray:
    """[E] int32: the rank that holds each expert under EP."""
    own = np.empty(num_experts, np.int32)
    for r in range(world_size):
        a, b = expert_range(num_experts, world_size, r)
        own[a:b] = r
    return own


def local_expert_map(num_experts: int, world_size: int, rank: int) -> np.ndarray:
    """[E] int32: global expert id -> local index on `rank`, -1 where another rank holds it (vLLM's expert_map)."""
    m = np.full(num_experts, -1, np.int32)
    a, b = expert_range(num_experts, world_size, rank)
    m[a:b] = np.arange(b - a, dtype=np.int32)
    return m


def expert_local_index(num_experts: int, world_size: int) -> np.ndarray:
    """[E] int32: each expert's local index on the rank that holds it (the dispatch address)."""
    idx = np.empty(num_experts, np.int32)
    for r in range(world_size):
        a, b = expert_range(num_experts, world_size, r)
        idx[a:b] = np.arange(b - a, dtype=np.int32)
    return idx


def max_local_experts(num_experts: int, world_size: int) -> int:
    """The largest number of experts any rank holds (the width of the EP count matrix)."""
    return -(-num_experts // world_size)


def ffn_slice_bounds(fe: int, num_slices: int = TP_SLICES) -> list[tuple[int, int]]:
    """The canonical cut of an expert's intermediate dimension Fe: num_slices balanced ranges
    (Fe=10 -> (0,3),(3,6),(6,8),(8,10)); slices are empty when Fe < num_slices."""
    return [batch_slice(fe, num_slices, s) for s in range(num_slices)]


def tp_slices_of(world_size: int, rank: int, num_slices: int = TP_SLICES) -> range:
    """Canonical slice ids held by `rank` under TP: a contiguous, aligned block of num_slices/R."""
    check_tp_world(world_size, num_slices)
    per = num_slices // world_size
    return range(rank * per, (rank + 1) * per)


def ffn_slice(fe: int, world_size: int, rank: int, num_slices: int = TP_SLICES) -> tuple[int, int]:
    """Columns [start, stop) of Fe held by `rank` under TP (the union of its canonical slices)."""
    s = tp_slices_of(world_size, rank, num_slices)
    bounds = ffn_slice_bounds(fe, num_slices)
    return bounds[s.start][0], bounds[s.stop - 1][1]


def check_tp_world(world_size: int, num_slices: int = TP_SLICES) -> None:
    if world_size < 1 or num_slices % world_size or num_slices & (num_slices - 1):
        raise ParallelError(f"plan tp: {world_size} ranks cannot share the {num_slices} canonical FFN slices "
                            f"evenly; tp runs on a world size that divides {num_slices} (1, 2 or 4). "
                            "hint: use --plan ep or dp for other rank counts")


@dataclass(frozen=True)
class ParallelPlan:
    """Which plan this rank runs. Tables come from the pure functions above."""

    kind: str
    world_size: int
    rank: int
    tp_slices: int = TP_SLICES

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ParallelError(f"unknown parallel plan {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ParallelError(f"rank {self.rank} is not in a world of {self.world_size}")
        if self.kind == "tp":
            check_tp_world(self.world_size, self.tp_slices)

    @property
    def splits_requests(self) -> bool:
        """dp and ep give each rank its own requests; tp runs all of them on every rank."""
        return self.kind in ("dp", "ep")

    def request_range(self, n: int) -> tuple[int, int]:
        return batch_slice(n, self.world_size, self.rank) if self.splits_requests else (0, n)

    def request_counts(self, n: int) -> list[int]:
        """Requests per rank [R] (tp: every rank runs all n)."""
        return batch_counts(n, self.world_size) if self.splits_requests else [n] * self.world_size

    def num_passes(self, n: int, batch_size: int) -> int:
        """Forward passes every rank makes for n requests in batches of batch_size: the busiest
        rank's count, so that EP ranks meet in every MoE collective (idle ranks pass with 0 tokens)."""
        return max(-(-c // batch_size) for c in self.request_counts(n))

    def expert_range(self, num_experts: int) -> tuple[int, int]:
        return expert_range(num_experts, self.world_size, self.rank)

    def expert_owner(self, num_experts: int) -> np.ndarray:
        return expert_owner(num_experts, self.world_size)

    def local_expert_map(self, num_experts: int) -> np.ndarray:
        return local_expert_map(num_experts, self.world_size, self.rank)

    def expert_local_index(self, num_experts: int) -> np.ndarray:
        return expert_local_index(num_experts, self.world_size)

    def tp_slice_ids(self) -> range:
        return tp_slices_of(self.world_size, self.rank, self.tp_slices)

    def ffn_slices(self, fe: int) -> list[tuple[int, int]]:
        """Bounds of this rank's canonical slices of Fe, in slice order."""
        bounds = ffn_slice_bounds(fe, self.tp_slices)
        return [bounds[s] for s in self.tp_slice_ids()]
