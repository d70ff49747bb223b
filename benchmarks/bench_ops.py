"""GEMM / GEMV: lfm2engine._core.cpu.gemm vs NumPy's BLAS (OpenBLAS sgemm) at the model's shapes.

Shapes: every projection of the default synthetic model (D=256) and of LFM2-8B-A1B (D=2048), at
T = 1 (decode GEMV), 16 and 128 / 1024 rows (prefill). Correctness first (ours vs numpy within
fp32 rounding), then medians; ratio = numpy time / our time (> 1: we are faster). Weight bytes/s
and FLOP/s are given as % of the roofs measured in the same run: triad bandwidth at a DRAM-sized
and at a cache-resident working set, and OpenBLAS sgemm FLOP/s. bf16 weights (no NumPy twin) are
timed against our own fp32 run of the same shape.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_ops.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bandwidth_roofs, flops_roof, paired, print_table, set_blas_threads, write_json  # noqa: E402

# (model, name, N, K)
SHAPES = [
    ("default", "in_proj", 768, 256),
    ("default", "out_proj", 256, 256),
    ("default", "qkv", 384, 256),
    ("default", "expert_w13", 256, 256),
    ("default", "expert_w2", 256, 128),
    ("default", "dense_w13", 1536, 256),
    ("default", "dense_w2", 256, 768),
    ("default", "lm_head", 8192, 256),
    ("lfm2-8b", "in_proj", 6144, 2048),
    ("lfm2-8b", "out_proj", 2048, 2048),
    ("lfm2-8b", "qkv", 3072, 2048),
    ("lfm2-8b", "expert_w13", 3584, 2048),
    ("lfm2-8b", "expert_w2", 2048, 1792),
]


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    ap.add_argument("--json", default="analysis/out/bench_ops.json")
    a = ap.parse_args(argv)

    from lfm2engine import _core

    cpu = _core.cpu
    _core.set_num_threads(a.threads)
    set_blas_threads(a.threads)  # the baseline gets the same number of threads
    roofs = bandwidth_roofs()
    fl = flops_roof()
    print(
        f"roofs (this run): triad DRAM {roofs['dram']:.1f} GB/s, triad cache-resident {roofs['cache']:.1f} GB/s, "
        f"OpenBLAS sgemm {fl:.1f} GFLOP/s; simd {_core.simd_level()}, threads {a.threads}",
        file=sys.stderr,
    )
    rng = np.random.default_rng(0)
    rows, results = [], []
    shapes = (
        SHAPES
        if not a.quick
        else [s for s in SHAPES if s[1] in ("in_proj", "expert_w2")]
    )
    for model, name, n, k in shapes:
        w = rng.standard_normal((n, k), dtype=np.float32) / np.float32(np.sqrt(k))
        wb = (w.view(np.uint32) >> 16).astype(
            np.uint16
        )  # bf16 bits (truncated: fine for timing)
        for t in (1, 16, 128) if model == "default" else (1, 16, 1024):
            x = rng.standard_normal((t, k), dtype=np.float32)
            out = np.empty((t, n), np.float32)
            cpu.gemm(out, x, w)
            ref = x @ w.T
            err = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))
            assert err < 1e-5, f"{model} {name} T={t}: rel err {err:.2e} vs numpy"
            rep = a.repeat if not a.quick else 3
            mt = 0.05  # >= 50 ms per timed run: a descheduled OpenMP worker (one 4 ms tick) stays a small part
            tm = paired({"ours": lambda: cpu.gemm(out, x, w),
                         "numpy": lambda: np.matmul(x, w.T, out=out),
                         "ours_bf16": lambda: cpu.gemm(out, x, wb)}, repeat=rep, min_time=mt)
            ours, base, ours_bf = (tm[k]["median"] for k in ("ours", "numpy", "ours_bf16"))
            flop = 2.0 * t * n * k
            r = {
                "model": model,
                "op": name,
                "T": t,
                "N": n,
                "K": k,
                "ours_us": ours * 1e6,
                "numpy_us": base * 1e6,
                "x_vs_numpy": base / ours,
                "GFLOP/s": flop / ours / 1e9,
                "%_flops_roof": 100 * flop / ours / 1e9 / fl,
                "bf16_us": ours_bf * 1e6,
                "bf16_speedup": ours / ours_bf,
            }
            if t == 1:
                gbs = 4.0 * n * k / ours / 1e9
                r["GB/s"] = gbs
                r["%_bw_dram"] = 100 * gbs / roofs["dram"]
                r["%_bw_cache"] = 100 * gbs / roofs["cache"]
                r["bf16_GB/s"] = 2.0 * n * k / ours_bf / 1e9
            rows.append(r)
            results.append(r)
    print_table(
        rows,
        [
            "model",
            "op",
            "T",
            "N",
            "K",
            "ours_us",
            "numpy_us",
            "x_vs_numpy",
            "GFLOP/s",
            "%_flops_roof",
            "GB/s",
            "%_bw_dram",
            "%_bw_cache",
            "bf16_speedup",
        ],
    )
    prefill = [r["x_vs_numpy"] for r in results if r["T"] > 1]
    gemv = [r["x_vs_numpy"] for r in results if r["T"] == 1]
    summary = {
        "geomean_x_vs_numpy_prefill": float(np.exp(np.mean(np.log(prefill)))),
        "min_x_vs_numpy_prefill": float(min(prefill)),
        "geomean_x_vs_numpy_gemv": float(np.exp(np.mean(np.log(gemv)))),
    }
    print(summary)
    write_json(
        a.json,
        {
            "threads": a.threads,
            "roofs_GBps": roofs,
            "flops_roof_GFLOPs": fl,
            "results": results,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
