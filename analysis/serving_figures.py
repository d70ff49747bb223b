"""Figures and the table of the serving benchmark, from its JSON (no timing here).

Reads analysis/out/bench_serve.json (benchmarks/bench_serve.py), draws
analysis/figures/serving_throughput.png (throughput and speed-up over one-by-one serving, with the
engine-alone batching gains for comparison) and analysis/figures/serving_latency.png (TTFT and
inter-token latency, p50 and p99), and prints the Markdown table of analysis/serving.md.

    python analysis/serving_figures.py [--json analysis/out/bench_serve.json]
"""

from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def table(res) -> str:
    ceil = {r["batch"]: r for r in res.get("engine_decode_steps", [])}
    off = {r["batch"]: r for r in res.get("engine_offline_batches", [])}
    lines = ["| clients | seconds | tokens/s | speed-up (wall) | server CPU ms/token | speed-up (CPU) | TTFT p50 / p99 "
             "(ms) | ITL p50 / p99 (ms) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["levels"]:
        cpu = (f"{r['server_cpu_ms_per_token']:.2f} | {r['cpu_speedup_vs_one_by_one']:.1f}x"
               if r.get("server_cpu_ms_per_token") else "- | -")
        lines.append(f"| {r['clients']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['speedup_vs_one_by_one']:.1f}x | {cpu} | "
                     f"{r['ttft_p50_s'] * 1e3:.0f} / {r['ttft_p99_s'] * 1e3:.0f} | "
                     f"{r['itl_p50_s'] * 1e3:.0f} / {r['itl_p99_s'] * 1e3:.0f} |")
    if off:
        lines += ["", "| prompts per Engine.generate call | seconds | tokens/s | speed-up (wall) | CPU ms/token | "
                  "speed-up (CPU) |", "|---:|---:|---:|---:|---:|---:|"]
        for b, o in sorted(off.items()):
            lines.append(f"| {b} | {o['seconds']:.1f} | {o['tokens_per_s']:.0f} | {o['speedup_vs_one_by_one']:.1f}x | "
                         f"{o['cpu_ms_per_token']:.2f} | {o['cpu_speedup_vs_one_by_one']:.1f}x |")
    if ceil:
        lines += ["", "| batch | engine decode step (ms) | engine tokens/s | batching gain |", "|---:|---:|---:|---:|"]
        for b, c in sorted(ceil.items()):
            lines.append(f"| {b} | {c['step_s'] * 1e3:.1f} | {c['tokens_per_s']:.0f} | {c['ceiling_speedup']:.1f}x |")
    return "\n".join(lines)


def plot(res, fig_dir) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lv = res["levels"]
    cl = [r["clients"] for r in lv]
    os.makedirs(fig_dir, exist_ok=True)
    paths = []

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(cl, [r["tokens_per_s"] for r in lv], "o-", label="served (continuous batching)")
    a1.axhline(lv[cl.index(1)]["tokens_per_s"], color="gray", ls=":", label="one by one")
    a1.set_xscale("log", base=2)
    a1.set_xlabel("concurrent clients")
    a1.set_ylabel("generated tokens / s")
    a1.set_title("Throughput")
    a1.legend()
    a2.plot(cl, [r["speedup_vs_one_by_one"] for r in lv], "o-", label="served, by wall time")
    if all(r.get("cpu_speedup_vs_one_by_one") for r in lv):
        a2.plot(cl, [r["cpu_speedup_vs_one_by_one"] for r in lv], "o:", label="served, by server CPU time")
    ceil = res.get("engine_decode_steps", [])
    if ceil:
        a2.plot([c["batch"] for c in ceil], [c["ceiling_speedup"] for c in ceil], "s--",
                label="engine alone: b x step(1) / step(b)")
    off = res.get("engine_offline_batches", [])
    if off:
        a2.plot([o["batch"] for o in off], [o["speedup_vs_one_by_one"] for o in off], "^-.",
                label="engine alone: the same requests, c per generate call (wall)")
    a2.axhline(4, color="red", ls=":", label="target at 16 clients (4x)")
    a2.set_xscale("log", base=2)
    a2.set_xlabel("concurrent clients (= batch)")
    a2.set_ylabel("x one by one")
    a2.set_title("Speed-up over one-by-one serving")
    a2.legend(fontsize=8)
    fig.suptitle(f"{res['model']}, {res['max_tokens']} tokens per request ({res['machine']['cpu'] or 'CPU'})",
                 fontsize=9)
    fig.tight_layout()
    p = os.path.join(fig_dir, "serving_throughput.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((a1, "ttft", "Time to first token"), (a2, "itl", "Inter-token latency")):
        ax.plot(cl, [r[f"{key}_p50_s"] * 1e3 for r in lv], "o-", label="p50")
        ax.plot(cl, [r[f"{key}_p99_s"] * 1e3 for r in lv], "s--", label="p99")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    p = os.path.join(fig_dir, "serving_latency.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=os.path.join(HERE, "out", "bench_serve.json"))
    ap.add_argument("--figures", default=os.path.join(HERE, "figures"))
    args = ap.parse_args(argv)
    with open(args.json) as f:
        res = json.load(f)
    for p in plot(res, args.figures):
        print(f"wrote {p}", flush=True)
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
