"""Parallel execution over mpi4py: plans, guard, collectives (see ARCHITECTURE.md)."""

from .comm import check_same_model, gather_rows, get_comm, run_guarded

__all__ = ["get_comm", "run_guarded", "check_same_model", "gather_rows"]
