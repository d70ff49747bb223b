"""MoE TP vs EP (and DP) under MPI: MoE-layer time split into compute and communication, bytes
exchanged (measured beside the formula), and full-model decode throughput per plan, against the
single-rank engine timed in the same job.

    python benchmarks/bench_parallel.py                      # driver: mpirun -np 1, 2, 4 of itself
    python benchmarks/bench_parallel.py --ranks 1,2 --batches 1,8,64 --json /tmp/b.json
    python benchmarks/bench_parallel.py --report analysis/out/bench_parallel.json   # tables only
    scripts/sim_cluster.sh up 4 && scripts/sim_cluster.sh shape all rate 25gbit     # over TCP, 4 hosts
    python benchmarks/bench_parallel.py --mpirun /tmp/lfm2h-sim/mpirun --wire-iface eth0 \
        --network "4 simulated hosts, TCP, 25 Gbit/s" --json analysis/out/bench_parallel_tcp.json

The driver starts one `mpirun -np R` job per rank count (worker mode), merges their JSON and
writes it atomically (default analysis/out/bench_parallel.json), and prints tables;
analysis/moe_parallel_figures.py draws analysis/figures/moe_parallel_*.png from that JSON.
In each job, every plan is first checked against the unsharded engine (dp/ep bitwise, tp to
1e-4), then timed. The baseline (the unsharded engine, `local_moe` / a plain decode step) runs on
rank 0 while the other ranks wait at a barrier. Times are medians over --repeat runs of the
slowest rank (a layer is done when its last rank is). Communication time is what the
executor spends inside collectives, which includes waiting for slower peers.
On a 2-core machine, 2 and 4 ranks share 2 cores (4 are oversubscribed): rank scaling cannot
show a speed-up here, only the relative cost of the plans' communication and redundant work.
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

ROOT = os.path.dirname(HERE)
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
PLANS = ("dp", "ep", "tp")


# ---------------------------------------------------------------------------------------- formulas
def formula_bytes(kind: str, cfg, world: int, rank: int, batch: int) -> float:
    """Expected bytes one rank sends in one MoE layer call (f32 rows of D floats), if routing
    were uniform over the E experts; it receives the same amount in expectation.

    ep: dispatch sends its T_r tokens' K rows whose expert lives elsewhere,
            T_r · K · (1 − E_r / E) rows,
        combine sends back the rows it computed for the other ranks' tokens,
            Σ_{s≠r} T_s · K · E_r / E rows,
        plus the El_max int32 counts to each peer. Balanced (T_s = T/R, E_r = E/R):
            2 · T · K · D · 4 · (R − 1) / R² bytes.
    tp: its tree-summed [T, D] block goes to each of the R − 1 peers: (R − 1) · T · D · 4.
    dp: nothing."""
    from lfm2engine.parallel.plan import batch_counts, expert_range, max_local_experts

    d, k, e = cfg.hidden_size, cfg.num_experts_per_tok, cfg.num_experts
    if kind == "ep":
        t = batch_counts(batch, world)
        ea, eb = expert_range(e, world, rank)
        share = (eb - ea) / e
        rows = t[rank] * k * (1 - share) + sum(t[s] for s in range(world) if s != rank) * k * share
        return rows * d * 4 + 4 * max_local_experts(e, world) * (world - 1)
    if kind == "tp":
        return (world - 1) * batch * d * 4
    return 0.0


# ---------------------------------------------------------------------------------------- worker
def grouped_numpy_backend():
    """Timing stand-in while the compiled core is unavailable: the numpy backend with BLAS gemms
    that do not copy f32 weights, and grouped experts (one gemm pair per expert over its rows)
    like the C++ kernel, instead of numpy_ops' row-by-row loops. Not row-invariant, so the plan
    checks hold to a tolerance, not bitwise."""
    import types

    from lfm2engine.backends.cpu import NumpyBackend
    from lfm2engine.backends.numpy_ops import w_f32

    def f32(w):
        return w if w.dtype == np.float32 else w_f32(w)

    def gemm(out, x, w):
        np.matmul(x, f32(w).T, out=out)

    def moe_expert_rows(out, x, eids, w13, w2):
        fe = w2.shape[2]
        out[:] = 0
        for e in np.unique(eids[eids >= 0]):
            idx = np.nonzero(eids == e)[0]
            gu = x[idx] @ f32(w13[e]).T  # [n, 2Fe]
            g = gu[:, :fe]
            out[idx] = ((g / (1 + np.exp(-g))) * gu[:, fe:]) @ f32(w2[e]).T

    def moe_experts(out, x, ids, w, w13, w2):
        t_, k = ids.shape
        rows = np.empty((t_ * k, x.shape[1]), np.float32)
        moe_expert_rows(rows, np.repeat(x, k, axis=0), ids.reshape(-1), w13, w2)
        rows = rows.reshape(t_, k, x.shape[1])
        acc = np.zeros_like(x)
        for j in range(k):
            acc += np.where(ids[:, j : j + 1] >= 0, w[:, j : j + 1] * rows[:, j], np.float32(0))
        out[:] = acc

    backend = NumpyBackend()
    ops = types.SimpleNamespace(**{n: getattr(backend.ops, n) for n in dir(backend.ops) if not n.startswith("_")})
    for f in (gemm, moe_expert_rows, moe_experts):
        setattr(ops, f.__name__, f)
    backend.ops = ops
    return backend


def worker(a) -> None:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import mpi_worker

    core = "cpp" if a.core == "auto" and mpi_worker.use_core() == "cpp" else "numpy-grouped"
    from lfm2engine import Engine
    from lfm2engine.parallel import executors, get_comm
    from lfm2engine.parallel.data_parallel import plan_logits
    from lfm2engine.parallel.plan import TP_SLICES, ParallelPlan
    from lfm2engine.synthetic import default_model_dir

    comm = get_comm()
    rank, world = comm.Get_rank(), comm.Get_size()
    if a.model:
        model_dir = a.model
    else:
        if rank == 0:
            default_model_dir()
        comm.Barrier()
        model_dir = default_model_dir(create=False)
    threads = a.threads or max(1, (os.cpu_count() or 1) // world)
    base = Engine.from_pretrained(model_dir, num_threads=threads,
                                  device="cpu" if core == "cpp" else grouped_numpy_backend())
    cfg = base.config
    moe_layer = next(i for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i))
    kinds = [k for k in PLANS if k != "tp" or TP_SLICES % world == 0]
    engines = {k: executors.sharded_copy(base, ParallelPlan(k, world, rank), comm) for k in kinds}
    plans = {k: ParallelPlan(k, world, rank) for k in kinds}

    # correctness first: every plan against the unsharded engine on the same prompts
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (3, 9, 1, 5, 7)]
    ref = base.logits(prompts)
    checks = {}
    for k in kinds:
        got = plan_logits(engines[k], plans[k], comm, prompts, batch_size=2)
        if rank == 0:
            diff = float(np.abs(got - ref).max())
            checks[k] = {"max_abs_diff": diff, "bitwise": bool(np.array_equal(got, ref))}
            if diff > 1e-4 * float(np.abs(ref).max()):
                raise RuntimeError(f"plan {k} on {world} ranks disagrees with the single-rank engine by {diff}")

    def timed(fn, reps):
        """fn() -> extra dict, run reps times on every rank from a barrier. Returns the median and
        the min over reps of the slowest rank's time, and the per-rank extras of every rep."""
        walls, extras = [], []
        for _ in range(reps):
            comm.Barrier()
            t0 = time.perf_counter()
            extra = fn()
            wall = time.perf_counter() - t0
            quiet_barrier()  # ranks done early sleep instead of spinning on the cores of the others
            got = comm.allgather((wall, extra))
            walls.append(max(w for w, _ in got))
            extras.append([x for _, x in got])
        return statistics.median(walls), min(walls), extras, int(np.argmin(walls))

    def baseline(fn, reps):
        """The unsharded engine on rank 0 alone (fn is not called elsewhere). The others wait
        sleeping on a non-blocking barrier: MPI's blocking wait spins and would steal the
        oversubscribed cores from rank 0."""
        t = (None, None)
        if rank == 0:
            fn()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            t = (statistics.median(ts), min(ts))
        quiet_barrier()
        return t

    def quiet_barrier():
        if world == 1:
            return
        req = comm.Ibarrier()
        while not req.Test():
            time.sleep(0.002)

    def wire_tx() -> int:
        """Bytes sent so far by this rank's host on --wire-iface (Ethernet frames: payload, TCP/IP
        and Open MPI headers, ACKs for what it receives; a heartbeat every 0.5 s). 0 without."""
        if not a.wire_iface:
            return 0
        with open(f"/sys/class/net/{a.wire_iface}/statistics/tx_bytes") as fh:
            return int(fh.read())

    rows = []
    lw = base.w.layers[moe_layer]
    for batch in a.batches:
        hrng = np.random.default_rng(batch)
        h_all = hrng.standard_normal((batch, cfg.hidden_size)).astype(np.float32)
        base.ops.rmsnorm(h_all, h_all, lw.ffn_norm, cfg.norm_eps)  # the MoE input is an ffn_norm output
        row = {"ranks": world, "batch": batch, "moe": {}, "decode": {}}
        row["moe"]["single"], row["moe"]["single_min"] = baseline(lambda h_all=h_all: base.local_moe(moe_layer, h_all),
                                                                  a.repeat)
        for k in kinds:
            eng, plan = engines[k], plans[k]
            lo, hi = plan.request_range(batch)
            h = np.ascontiguousarray(h_all[lo:hi])
            ex = executors.executor_of(eng)

            def moe_call(eng=eng, h=h, ex=ex):
                wire0 = wire_tx()
                if ex is None:  # dp: the local fused kernel on this rank's tokens
                    t0 = time.perf_counter()
                    if h.shape[0]:
                        eng.local_moe(moe_layer, h)
                    return {"compute_s": time.perf_counter() - t0, "comm_s": 0.0, "bytes": 0,
                            "wire": wire_tx() - wire0}
                ex.reset_stats()
                ex(moe_layer, h)
                st = ex.stats
                return {"compute_s": st["route_s"] + st["experts_s"] + st["combine_s"], "comm_s": st["comm_s"],
                        "bytes": st["bytes_sent"], "wire": wire_tx() - wire0}

            moe_call()  # warm-up
            wall, wall_min, extras, best = timed(moe_call, a.repeat)
            comm_med = statistics.median(statistics.mean(x["comm_s"] for x in e) for e in extras)
            comp_med = statistics.median(statistics.mean(x["compute_s"] for x in e) for e in extras)
            comm_best = statistics.mean(x["comm_s"] for x in extras[best])  # split of the fastest rep
            comp_best = statistics.mean(x["compute_s"] for x in extras[best])
            measured = [x["bytes"] for x in extras[0]]
            if a.wire_iface:  # per rank, the median over reps of what left its host's interface
                row["moe"].setdefault("wire", {})[k] = [int(statistics.median(e[r]["wire"] for e in extras))
                                                        for r in range(world)]
            row["moe"][k] = {"wall_s": wall, "wall_min_s": wall_min, "compute_s": comp_med, "comm_s": comm_med,
                             "compute_best_s": comp_best, "comm_best_s": comm_best,
                             "bytes_per_rank": measured,
                             "formula_bytes_per_rank": [formula_bytes(k, cfg, world, r, batch) for r in range(world)]}
        # full model: one decode step of `batch` sequences after a 2-token prefill (short context)
        prm = [hrng.integers(0, cfg.vocab_size, 2).tolist() for _ in range(batch)]

        def decoder(eng, mine):
            """Prefill once (untimed), then step() = one decode pass; a rank without sequences makes
            idle passes instead, so EP ranks meet in every collective."""
            if mine:
                s = eng.session(len(mine), 2 + a.repeat + 2)
                s.prefill(mine)
            else:
                executors.idle_pass(eng)

            def step():
                if mine:
                    s.decode([1 + (j % 50) for j in range(len(mine))])
                else:
                    executors.idle_pass(eng)
                return {}

            step()  # warm-up
            return step

        t_single, t_single_min = baseline(decoder(base, prm) if rank == 0 else None, a.repeat)
        row["decode"]["single"], row["decode"]["single_min"] = t_single, t_single_min
        if rank == 0:
            row["decode"]["single_tok_s"] = batch / t_single
            row["decode"]["single_best_tok_s"] = batch / t_single_min
        for k in kinds:
            lo, hi = plans[k].request_range(batch)
            stepper = decoder(engines[k], prm[lo:hi])
            wall, wall_min, _, _ = timed(stepper, a.repeat)
            row["decode"][k] = wall
            row["decode"][k + "_min"] = wall_min
            row["decode"][k + "_tok_s"] = batch / wall
            row["decode"][k + "_best_tok_s"] = batch / wall_min
        rows.append(row)
        if rank == 0:
            print(f"[bench_parallel] R={world} B={batch} done", file=sys.stderr, flush=True)
    if rank == 0:
        out = {"ranks": world, "threads_per_rank": threads, "core": core, "model": model_dir,
               "config": {k: getattr(cfg, k) for k in ("hidden_size", "num_experts", "num_experts_per_tok",
                                                        "moe_intermediate_size", "num_hidden_layers", "vocab_size")},
               "moe_layer": moe_layer, "checks": checks, "rows": rows}
        with open(a.out, "w") as f:
            json.dump(out, f)


# ---------------------------------------------------------------------------------------- driver
def find_mpirun():
    local = os.path.join(os.path.dirname(sys.executable), "mpirun")
    import shutil

    return local if os.access(local, os.X_OK) else shutil.which("mpirun")


def run_jobs(a) -> dict:
    mpirun = a.mpirun or find_mpirun()
    flags = ["--oversubscribe"] if "Open MPI" in subprocess.run([mpirun, "--version"], capture_output=True,
                                                                  text=True).stdout else []
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    jobs = []
    for world in a.ranks:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
            part = tf.name
        threads = a.threads or max(1, (os.cpu_count() or 1) // world)
        cmd = [mpirun, *flags, "-np", str(world), sys.executable, os.path.abspath(__file__), "--worker",
               "--out", part, "--batches", ",".join(map(str, a.batches)), "--repeat", str(a.repeat),
               "--core", a.core, "--threads", str(threads)] + (["--wire-iface", a.wire_iface] if a.wire_iface else [])
        if a.model:
            cmd += ["--model", a.model]
        print(f"[bench_parallel] {' '.join(cmd)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        # ranks × threads must not exceed the cores: spinning BLAS/OpenMP threads of one rank
        # otherwise starve the MPI progress of the others (10x slower collectives here)
        subprocess.run(cmd, check=True, cwd=ROOT, env=dict(env, OMP_NUM_THREADS=str(threads),
                                                          OPENBLAS_NUM_THREADS=str(threads)))
        with open(part) as f:
            res = json.load(f)
        os.unlink(part)
        res["job_seconds"] = time.perf_counter() - t0
        jobs.append(res)
    return {"jobs": jobs, "batches": a.batches, "network": a.network, "launcher": mpirun}


def stat_keys(stat: str) -> dict:
    """JSON keys of the statistic shown: 'median' over repeats, or 'min' (best of N)."""
    if stat == "median":
        return dict(wall="wall_s", single="single", comp="compute_s", comm="comm_s", tok="_tok_s",
                    single_tok="single_tok_s")
    return dict(wall="wall_min_s", single="single_min", comp="compute_best_s", comm="comm_best_s",
                tok="_best_tok_s", single_tok="single_best_tok_s")


def report(data: dict, stat: str = "min") -> None:
    ky = stat_keys(stat)
    for job in data["jobs"]:
        r = job["ranks"]
        print(f"\n== {r} rank(s), {job['threads_per_rank']} thread(s) each, core {job['core']}, {stat} of "
              f"{data.get('repeat', '?')} runs; plans vs the single-rank engine: {job['checks']}")
        rows = []
        for row in job["rows"]:
            m = row["moe"]
            out = {"B": row["batch"], "single ms": 1e3 * m[ky["single"]]}
            for k in PLANS:
                if k in m:
                    out[f"{k} ms"] = 1e3 * m[k][ky["wall"]]
                    out[f"{k} comm%"] = 100 * m[k][ky["comm"]] / max(m[k][ky["comm"]] + m[k][ky["comp"]], 1e-12)
                    if k != "dp":
                        out[f"{k} KB"] = max(m[k]["bytes_per_rank"]) / 1e3
                        out[f"{k} KB f."] = max(m[k]["formula_bytes_per_rank"]) / 1e3
                    if k in m.get("wire", {}) and r > 1:
                        out[f"{k} wire KB"] = max(m["wire"][k]) / 1e3
            rows.append(out)
        print("MoE layer, one call (ms: slowest rank; comm%: share of the executor's time inside collectives; "
              "KB: bytes the busiest rank sends, measured / formula; wire KB: what left the busiest host's "
              "interface during the call, headers and ACKs included)")
        print_table(rows, list(rows[0]))
        rows = []
        for row in job["rows"]:
            dcd = row["decode"]
            out = {"B": row["batch"], "single tok/s": dcd[ky["single_tok"]]}
            for k in PLANS:
                if k in dcd:
                    out[f"{k} tok/s"] = dcd[k + ky["tok"]]
                    out[f"{k}/single"] = dcd[k + ky["tok"]] / dcd[ky["single_tok"]]
            rows.append(out)
        print("Full model: one decode step of B sequences (single = the unsharded engine on rank 0 of this job)")
        print_table(rows, list(rows[0]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the built-in synthetic model)")
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="threads per rank (default cores / ranks)")
    ap.add_argument("--core", default="auto", choices=("auto", "numpy-grouped"),
                    help="auto: the compiled core when it imports, else the grouped NumPy stand-in")
    ap.add_argument("--json", default="analysis/out/bench_parallel.json")
    ap.add_argument("--report", metavar="JSON", help="only print the tables of an existing JSON")
    ap.add_argument("--stat", default="min", choices=("min", "median"),
                    help="statistic in the tables: min = best of --repeat runs (robust on a shared "
                         "machine; default), median")
    ap.add_argument("--mpirun", default=None,
                    help="launcher (a path, no flags; default the venv's mpirun), e.g. the simulated cluster's: "
                         "$LFM2_SIM_DIR/mpirun after scripts/sim_cluster.sh up 4")
    ap.add_argument("--wire-iface", default=None,
                    help="also count the bytes each rank's host sends on this interface per MoE call (eth0 on "
                         "the simulated cluster, where every rank has a host of its own)")
    ap.add_argument("--network", default="one host, shared memory", help="what the ranks talk over (stored in the JSON)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.batches = [int(x) for x in str(a.batches).split(",")]
    a.ranks = [int(x) for x in str(a.ranks).split(",")]
    if a.worker:
        from lfm2engine.parallel import run_guarded

        return run_guarded(lambda comm: worker(a) or 0)
    if a.report:
        with open(a.report) as f:
            data = json.load(f)
    else:
        data = run_jobs(a)
        data["repeat"] = a.repeat
        data["machine_info"] = machine_info()
        write_json(a.json, data)
    report(data, a.stat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
