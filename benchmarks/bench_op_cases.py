"""Per-op benchmark over the op cases the tests run (lfm2engine.backends.cases.REAL): every op at
LFM2-8B-A1B's real sizes (batch-1 decode and a 512-token prefill), on every backend this machine
has (cpu; cuda where a GPU is visible; numpy with --numpy, as the executable contract's speed).

Each case is built once by the same builder tests/test_ops.py uses, its inputs uploaded once,
then the op is timed in interleaved rounds across backends (medians). Cases that differ only in
their weight dtype (bf16 and the quantized types q8_0, q4_0, q4_k, q6_k at the same shape) form
one group whose members are timed in the same interleaved rounds, so that a shared machine's load
hits them alike. Reported: microseconds per
call, and GB/s of the bytes the op must read and write once (weights, activations, caches),
against the triad roof measured in the same run, and GFLOP/s for the compute-bound ops (gemm,
moe_experts). Each op is called repeatedly on the same arrays, so inputs that fit in the caches are
read from there: small cases can exceed the DRAM roof (% roof > 100), which says they are
cache-resident, not that the roof is wrong. Results: analysis/out/bench_op_cases.json.

    python benchmarks/bench_op_cases.py [--quick] [--threads N] [--numpy] [--match TEXT ...]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bandwidth_roofs, paired, print_table, write_json  # noqa: E402


def traffic(call) -> int:
    """Bytes an op must move at least once: every array argument (inputs read, outputs written).
    For moe_experts only the routed experts' weights count; for embedding only the looked-up rows."""
    total = 0
    for i, a in enumerate(call.args):
        if not isinstance(a, np.ndarray):
            continue
        if call.op == "moe_experts" and i in (4, 5):
            ids = call.args[2]
            total += a[0].nbytes * len(set(ids[ids >= 0].tolist()))
        else:
            total += a.nbytes
    return total


def flops(call) -> float:
    """Multiply-adds × 2 of the compute-bound ops (gemm, moe_experts); 0 for the others."""
    if call.op == "gemm":
        (t, n), k = call.args[0].shape, call.args[1].shape[1]
        return 2.0 * t * n * k
    if call.op == "moe_experts":
        from lfm2engine import quant

        ids, w2 = call.args[2], call.args[5]
        d, fe = quant.logical_shape(w2)[1:]  # (a quantized w2's last axis counts blocks)
        return 2.0 * int((ids >= 0).sum()) * 3 * d * fe
    return 0.0


def backends(with_numpy: bool) -> dict:
    from lfm2engine import _core
    from lfm2engine.backends import numpy_ops

    out = {"cpu": (_core.cpu, lambda a: a, lambda: None)}
    if _core.has_cuda() and _core.cuda.device_count() > 0:
        cuda = _core.cuda
        out["cuda"] = (cuda, lambda a: cuda.Tensor.from_numpy(np.ascontiguousarray(a)), cuda.synchronize)
    if with_numpy:
        out["numpy"] = (numpy_ops, lambda a: a, lambda: None)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="decode-size cases only, fewer repeats")
    ap.add_argument("--numpy", action="store_true", help="also time the numpy backend (slow)")
    ap.add_argument("--match", nargs="+", default=None, metavar="TEXT",
                    help="only the cases whose 'op case' label contains one of these (e.g. --match gemm)")
    ap.add_argument("--json", default="analysis/out/bench_op_cases.json")
    a = ap.parse_args(argv)

    from lfm2engine import _core
    from lfm2engine.backends import cases

    _core.set_num_threads(a.threads)
    roofs = bandwidth_roofs()
    print(f"roof (this run): triad DRAM {roofs['dram']:.1f} GB/s; {a.threads} threads")
    todo = [c for c in cases.REAL if not a.quick or "512" not in c[1]]
    if a.match:
        todo = [c for c in todo if any(m in f"{c[0]} {c[1]}" for m in a.match)]
    repeat = 3 if a.quick else a.repeat
    bes = backends(a.numpy)
    groups: dict = {}  # the same op and arguments but the weight dtype: timed together
    for op, label, kw in todo:
        key = (op, tuple(sorted((k, repr(v)) for k, v in kw.items() if k != "wdtype")))
        groups.setdefault(key, []).append((op, label, kw))
    rows = []
    for members in groups.values():
        calls, fns = {}, {}
        for op, label, kw in members:
            call = calls[label] = cases.build(op, np.random.default_rng(0), **kw)
            for name, (ops, put, sync) in bes.items():
                dev = [put(x) if isinstance(x, np.ndarray) else x for x in call.args]
                fn = getattr(ops, op)

                def run(fn=fn, dev=dev, sync=sync):
                    fn(*dev)
                    sync()

                try:
                    run()
                except (TypeError, ValueError, RuntimeError) as e:  # e.g. a weight dtype a backend lacks
                    print(f"  {name}: {op} {label} not timed ({type(e).__name__}: {e})")
                    continue
                fns[(label, name)] = run
        times = paired(fns, repeat=repeat, warmup=1, min_time=0.02, settle=0.0)
        for op, label, kw in members:
            call = calls[label]
            nbytes, nflop = traffic(call), flops(call)
            row = {"op": op, "case": label, "weights": kw.get("wdtype", ""), "MB": nbytes / 1e6}
            for name in bes:
                if (label, name) not in times:
                    continue
                t = times[(label, name)]
                row[f"{name} us"] = t["median"] * 1e6
                row[f"{name} GB/s"] = nbytes / t["median"] / 1e9
                row[f"{name} GFLOP/s"] = nflop / t["median"] / 1e9
            if "cpu GB/s" in row:
                row["cpu % roof"] = 100.0 * row["cpu GB/s"] / roofs["dram"]
            rows.append(row)
        del calls, fns
    cols = ["op", "case", "weights", "MB"] + [f"{n} {u}" for n in bes for u in ("us", "GB/s", "GFLOP/s")]
    cols.append("cpu % roof")
    print_table(rows, cols)
    write_json(a.json, {"benchmark": "bench_op_cases", "threads": a.threads, "roofs_gbs": roofs, "rows": rows,
                        "backends": list(bes), "quick": a.quick, "match": a.match})
    print(f"-> {a.json}")


if __name__ == "__main__":
    main()
