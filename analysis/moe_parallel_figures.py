"""Figures of the MoE parallel-plan benchmark (TP vs EP vs DP), from its JSON (no timing).

Reads analysis/out/bench_parallel.json, written by benchmarks/bench_parallel.py (which also prints
the tables), and draws analysis/figures/moe_parallel_*.png: MoE layer time per plan, its split into
compute and communication, bytes per rank (measured and formula), and full-model decode
throughput. analysis/moe_parallel.md discusses them.

    python analysis/moe_parallel_figures.py                   # best of N (the figures of the note)
    python analysis/moe_parallel_figures.py --stat median
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_parallel import PLANS, stat_keys  # noqa: E402 - the JSON's layout


def plot(data: dict, out_dir: str, stat: str = "min") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ky = stat_keys(stat)
    what = "best of N" if stat == "min" else "median"
    os.makedirs(out_dir, exist_ok=True)
    jobs = data["jobs"]
    ref = next(j for j in jobs if j["ranks"] == min(x["ranks"] for x in jobs))  # its baseline uses all cores
    colors = {"dp": "tab:green", "ep": "tab:blue", "tp": "tab:red"}
    styles = {1: ":", 2: "--", 4: "-"}
    written = []

    def save(fig, name):
        p = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    # 1. MoE layer time vs batch, with the single-rank baseline
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    single = {row["batch"]: row["moe"][ky["single"]] for row in ref["rows"]}
    ax.plot(list(single), [1e3 * v for v in single.values()], "k-o", lw=2, ms=3,
            label=f"single-rank engine ({ref['threads_per_rank']} threads)")
    for job in jobs:
        r = job["ranks"]
        for k in PLANS:
            pts = [(row["batch"], 1e3 * row["moe"][k][ky["wall"]]) for row in job["rows"] if k in row["moe"]]
            if pts and not (k == "dp" and r == 1):
                ax.plot(*zip(*pts), styles.get(r, "-"), color=colors[k], marker=".", label=f"{k}, {r} rank(s)")
    ax.set(xscale="log", yscale="log", xlabel="tokens in the MoE layer (batch)", ylabel="ms per MoE layer call",
           title=f"MoE layer time per plan (slowest rank, {what})")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    save(fig, "moe_parallel_layer_time.png")

    # 2. compute vs communication split, per plan and rank count, at a few batch sizes
    picks = [b for b in (1, 32, 512) if b in data["batches"]] or data["batches"][:3]
    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 4.2), sharey=False)
    axes = np.atleast_1d(axes)
    for ax, b in zip(axes, picks):
        labels, comp, comm = [], [], []
        for job in jobs:
            row = next(rw for rw in job["rows"] if rw["batch"] == b)
            for k in ("ep", "tp"):
                if k in row["moe"]:
                    labels.append(f"{k}\nR={job['ranks']}")
                    comp.append(1e3 * row["moe"][k][ky["comp"]])
                    comm.append(1e3 * row["moe"][k][ky["comm"]])
        x = np.arange(len(labels))
        ax.bar(x, comp, color="tab:gray", label="compute (route, experts, combine)")
        ax.bar(x, comm, bottom=comp, color="tab:orange", label="communication (inside collectives)")
        ax.axhline(1e3 * next(rw for rw in ref["rows"] if rw["batch"] == b)["moe"][ky["single"]], color="k",
                   ls="--", lw=1, label="single-rank engine")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set(title=f"B = {b}", ylabel="ms per MoE layer call (mean over ranks)")
    axes[0].legend(fontsize=7)
    save(fig, "moe_parallel_breakdown.png")

    # 3. bytes per rank: measured vs formula
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for job in jobs:
        r = job["ranks"]
        if r == 1:
            continue
        for k in ("ep", "tp"):
            pts = [(row["batch"], max(row["moe"][k]["bytes_per_rank"]), max(row["moe"][k]["formula_bytes_per_rank"]))
                   for row in job["rows"] if k in row["moe"]]
            if not pts:
                continue
            bs, meas, form = zip(*pts)
            ax.plot(bs, form, styles.get(r, "-"), color=colors[k], label=f"{k}, {r} ranks: formula")
            ax.plot(bs, meas, "o", color=colors[k], ms=4, mfc="none" if r == 2 else colors[k],
                    label=f"{k}, {r} ranks: measured")
    ax.set(xscale="log", yscale="log", xlabel="tokens in the MoE layer (batch)",
           ylabel="bytes sent per rank per MoE layer", title="Communication volume (busiest rank)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    save(fig, "moe_parallel_comm_bytes.png")

    # 4. full-model decode throughput
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    single = {row["batch"]: row["decode"][ky["single_tok"]] for row in ref["rows"]}
    ax.plot(list(single), list(single.values()), "k-o", lw=2, ms=3,
            label=f"single-rank engine ({ref['threads_per_rank']} threads)")
    for job in jobs:
        r = job["ranks"]
        for k in PLANS:
            pts = [(row["batch"], row["decode"][k + ky["tok"]]) for row in job["rows"] if k in row["decode"]]
            if pts and not (k == "dp" and r == 1):
                ax.plot(*zip(*pts), styles.get(r, "-"), color=colors[k], marker=".", label=f"{k}, {r} rank(s)")
    ax.set(xscale="log", yscale="log", xlabel="sequences per decode step (batch)", ylabel="tokens / s",
           title=f"Full-model decode throughput per plan ({what})")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    save(fig, "moe_parallel_throughput.png")
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=os.path.join(ROOT, "analysis", "out", "bench_parallel.json"),
                    help="the benchmark's JSON (default analysis/out/bench_parallel.json)")
    ap.add_argument("--figures", default=os.path.join(ROOT, "analysis", "figures"), help="where the PNG files go")
    ap.add_argument("--stat", default="min", choices=("min", "median"),
                    help="min = best of the benchmark's --repeat runs (default), median")
    a = ap.parse_args(argv)
    with open(a.json) as f:
        data = json.load(f)
    for p in plot(data, a.figures, a.stat):
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
