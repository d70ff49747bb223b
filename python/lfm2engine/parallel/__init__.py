"""Parallel execution over mpi4py: plans (dp, ep, tp), guard, collectives, simulator (ARCHITECTURE.md).

plan.py holds the pure ownership tables; comm.py the MPI set-up, abort guard and buffer
collective helpers; heartbeat.py names a lost peer (killed, host or link down) in one line;
moe_parallel.py the route -> dispatch -> experts -> combine stages;
executors.py installs a plan on an Engine; data_parallel.py splits requests and keeps EP ranks
in step; simulate.py runs any plan on virtual ranks in one process.
"""

from .comm import StartupFailure, agree, check_same_model, gather_rows, get_comm, run_guarded
from .plan import KINDS, ParallelPlan

__all__ = ["get_comm", "run_guarded", "agree", "StartupFailure", "check_same_model",
           "gather_rows", "ParallelPlan", "KINDS"]
