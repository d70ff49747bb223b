"""Point-to-point latency and bandwidth between rank 0 and rank 1 (mpi4py ping-pong): the α and β
of the link the parallel plans run over, to read analysis/moe_parallel.md's TCP section against.

    python benchmarks/bench_link.py                                   # one host, shared memory
    scripts/sim_cluster.sh up 4 && scripts/sim_cluster.sh shape all rate 25gbit
    python benchmarks/bench_link.py --mpirun /tmp/lfm2h-sim/mpirun \\
        --network "2 simulated hosts, TCP, 25 Gbit/s" --json analysis/out/bench_link_tcp.json

Half the round-trip time per message size (best and median of --repeat round trips) and the
bandwidth it implies; written atomically as JSON and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import machine_info, print_table, write_json  # noqa: E402

SIZES = [8, 1024, 16384, 131072, 1048576, 4194304]


def worker(a) -> None:
    from lfm2engine.parallel import get_comm

    comm = get_comm()
    rank = comm.Get_rank()
    rows = []
    for size in a.sizes:
        buf = np.zeros(max(size, 1), np.uint8)
        reps = a.repeat if size <= 131072 else max(5, a.repeat // 20)
        times = []
        for it in range(reps + 2):
            comm.Barrier()
            t0 = time.perf_counter()
            if rank == 0:
                comm.Send(buf, dest=1)
                comm.Recv(buf, source=1)
            elif rank == 1:
                comm.Recv(buf, source=0)
                comm.Send(buf, dest=0)
            if it >= 2:  # two warm-up round trips
                times.append((time.perf_counter() - t0) / 2)
        if rank == 0:
            best, med = min(times), statistics.median(times)
            rows.append({"bytes": size, "half_rtt_best_us": best * 1e6, "half_rtt_median_us": med * 1e6,
                         "gbit_s_best": size * 8 / best / 1e9})
    if rank == 0:
        with open(a.out, "w") as fh:
            json.dump(rows, fh)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mpirun", default=None, help="launcher path (default: the venv's mpirun, shared memory)")
    ap.add_argument("--network", default="one host, shared memory")
    ap.add_argument("--repeat", type=int, default=400)
    ap.add_argument("--json", default=None, help="write the results here (atomically)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.sizes = SIZES
    if a.worker:
        from lfm2engine.parallel import run_guarded

        return run_guarded(lambda comm: worker(a) or 0)
    from bench_parallel import find_mpirun

    mpirun = a.mpirun or find_mpirun()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
        part = tf.name
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
    cmd = [mpirun, "--oversubscribe", "-np", "2", sys.executable, os.path.abspath(__file__), "--worker", "--out", part,
           "--repeat", str(a.repeat)]
    subprocess.run(cmd, check=True, env=env)
    with open(part) as fh:
        rows = json.load(fh)
    os.unlink(part)
    print(f"rank 0 <-> rank 1 over: {a.network}")
    print_table(rows, list(rows[0]))
    if a.json:
        write_json(a.json, {"network": a.network, "launcher": mpirun, "rows": rows, "machine_info": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
