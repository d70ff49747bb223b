"""Benchmark helpers: timing (warm-up, median/min/max), machine roofs measured in the same run, table + JSON.

Roofs: memory bandwidth from a NumPy triad-like copy (a = b + s*c on arrays far larger than the
caches) and FLOP/s from NumPy's BLAS sgemm. Never used by tests (STYLE.md §16).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))


# Seconds to sleep before a timed run that follows another library's work. OpenBLAS, torch and our
# OpenMP runtime each keep their worker threads spinning for a while after a call (OpenBLAS ~0.1 s);
# on a 2-core machine a spinning neighbour takes a core from whatever is timed next.
SETTLE = 0.12


def timeit(fn, repeat: int = 7, warmup: int = 2, min_time: float = 0.0, settle: float = 0.0) -> dict:
    """Run fn() warmup times, then `repeat` timed runs (each repeated until min_time, each after
    `settle` seconds of sleep). Seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if settle:
            time.sleep(settle)
            t0 = time.perf_counter()
            while True:  # wake our own threads again (a woken OpenMP worker may first wait a tick)
                fn()
                if time.perf_counter() - t0 >= 0.01:
                    break
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if el >= min_time:
                break
        times.append(el / n)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": repeat}


def paired(fns: dict, repeat: int = 7, warmup: int = 1, min_time: float = 0.0, settle: float = SETTLE) -> dict:
    """Time several implementations of the same work in interleaved rounds (a, b, c, a, b, c, ...),
    each run after `settle` seconds of sleep, so that load changes on a shared machine hit all of
    them alike. Returns {name: timeit-style dict}; medians over the rounds."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            times[k].append(timeit(f, repeat=1, warmup=0, min_time=min_time, settle=settle)["median"])
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": repeat}
            for k, v in times.items()}


def alternating(cases: dict, rounds: int, settle: float = SETTLE, reverse: bool = True) -> dict:
    """Run every case (a callable returning its own measurements) once per round, each after
    `settle` seconds of sleep, in the dict's order, reversed every other round when `reverse`, so
    that load changes on a shared machine hit all of them alike. {name: [result of each round]}."""
    out = {k: [] for k in cases}
    names = list(cases)
    for r in range(rounds):
        print(f"[bench] round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        for k in (names[::-1] if reverse and r % 2 else names):
            time.sleep(settle)
            out[k].append(cases[k]())
    return out


def bandwidth_roof(mb: int = 512, repeat: int = 5) -> float:
    """Sustained read+write bandwidth in GB/s: triad a = b + s*c (3 arrays streamed)."""
    n = mb * 2**20 // 4
    b = np.ones(n, np.float32)
    c = np.ones(n, np.float32)
    a = np.empty_like(b)

    def triad():
        np.multiply(c, np.float32(1.5), out=a)
        np.add(a, b, out=a)

    t = timeit(triad, repeat=repeat, warmup=1)["min"]
    # multiply: read c, write a; add: read a, b, write a -> 5 array passes
    return 5 * n * 4 / t / 1e9


def bandwidth_roofs(repeat: int = 5) -> dict:
    """Triad bandwidth (GB/s) at a DRAM-sized working set (3 × 512 MiB, beyond any L3) and at a
    cache-resident one (3 × 8 MiB). With a large L3 (this VM reports 480 MB) a small model's weights
    may sit in cache, so both roofs are reported."""
    return {"dram": bandwidth_roof(512, repeat), "cache": bandwidth_roof(8, max(repeat, 20))}


def set_blas_threads(n: int) -> None:
    """Limit NumPy's BLAS to n threads (threadpoolctl), so baselines use our thread count."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        print("[bench] threadpoolctl is not installed: NumPy's BLAS keeps its own thread count "
              "(pip install threadpoolctl, or set OPENBLAS_NUM_THREADS)", file=sys.stderr)


def flops_roof(n: int = 2048, repeat: int = 5) -> float:
    """fp32 GFLOP/s of NumPy's BLAS sgemm (OpenBLAS) at n×n×n."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    t = timeit(lambda: a @ b, repeat=repeat, warmup=1)["min"]
    return 2 * n**3 / t / 1e9


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' where there is none; platform.processor() is
    often just 'x86_64')."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_info() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "numpy": np.__version__}
    cpu = cpu_model()
    if cpu:
        info["cpu"] = cpu
    try:
        from lfm2engine import _core

        info["simd"] = _core.simd_level()
        info["threads"] = _core.get_num_threads()
    except Exception as e:  # noqa: BLE001 - informational only
        info["simd"] = f"unavailable ({e})"
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for d in threadpool_info()]
    except ImportError:
        pass
    return info


def print_table(rows: list[dict], cols: list[str]) -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, widths)))


def write_json(path: str, payload: dict) -> None:
    from lfm2engine.checkpoint import atomic_writer

    payload = dict(payload, machine=machine_info(), time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # the benchmark's own output folder
    with atomic_writer(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {path}", file=sys.stderr)
