"""Block-quantized weights: the exact mode against the quant-dot mode (`_core.set_quant_dot`, int8
activations) on LFM2-8B-A1B's GEMM shapes, batch-1 decode (T = 1: GB/s of weight bytes) and a
512-token prefill (T = 512: GFLOP/s), interleaved rounds (medians), the same arrays each call (so
weights that fit the caches are read from there, as in bench_op_cases.py). The machine's load
average is recorded before and after, since this VM is shared. Results:
analysis/out/bench_quant_dot.json.

    python benchmarks/bench_quant_dot.py [--threads 2] [--types q8_0,q4_0,q4_k,q6_k] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import paired, print_table, write_json  # noqa: E402

# (name, N, K): the tied LM head, the attention / conv in-projections, out-projections, the experts.
SHAPES = [("head", 65536, 2048), ("in_proj", 6144, 2048), ("out_proj", 2048, 2048),
          ("expert_w13", 3584, 2048), ("expert_w2", 2048, 1792)]


def weights(rng, name: str, n: int, k: int):
    """A quantized [n, k] matrix; the head is tiled from 8192 random rows (quantizing 128 M
    floats in NumPy would take longer than the benchmark)."""
    from lfm2engine import quant

    rows = min(n, 8192)
    w = quant.quantize(rng.standard_normal((rows, k)).astype(np.float32), name)
    return np.ascontiguousarray(np.tile(w, (n // rows, 1))) if n > rows else w


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="q8_0,q4_0,q4_k,q6_k")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="T = 1 only, 3 rounds")
    ap.add_argument("--json", default="analysis/out/bench_quant_dot.json")
    args = ap.parse_args(argv)
    from lfm2engine import _core, quant

    _core.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    rows = []
    for name in [quant.get(t.strip()).name for t in args.types.split(",") if t.strip()]:
        for label, n, k in SHAPES:
            w = weights(rng, name, n, k)
            for t in (1,) if args.quick else (1, 512):
                if t > 1 and label == "head":
                    continue  # a prefill needs the head for its last token only
                x = rng.standard_normal((t, k)).astype(np.float32)
                out = np.empty((t, n), np.float32)

                def run(mode):
                    def f():
                        _core.set_quant_dot(mode)
                        _core.cpu.gemm(out, x, w)
                    return f

                res = paired({"exact": run(False), "fast": run(True)}, repeat=3 if args.quick else args.rounds)
                _core.set_quant_dot(False)
                row = {"type": name, "shape": f"{n}x{k}", "T": t}
                for mode in ("exact", "fast"):
                    s = res[mode]["median"]
                    row[f"{mode} ms"] = s * 1e3
                    row[f"{mode} GB/s" if t == 1 else f"{mode} GFLOP/s"] = (w.nbytes if t == 1 else 2 * t * n * k) / s / 1e9
                row["fast/exact"] = res["exact"]["median"] / res["fast"]["median"]
                rows.append(row)
                print_table([row], list(row))
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    write_json(args.json, {"threads": args.threads, "rows": rows, "loadavg_before": load_before,
                           "loadavg_after": load_after})


if __name__ == "__main__":
    main()
