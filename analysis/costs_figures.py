"""Redraws analysis/figures/costs_*.png from lfm2engine.costs and lfm2engine.scaling (numbers only, no GPU).

Run from the repository root:  python analysis/costs_figures.py   (PYTHONPATH=python if not installed)
Figures: costs_isoflop.png (loss vs N at fixed budgets, the compute-optimal frontier),
costs_decode_roofline.png (decode tokens/s bound and weight bytes per step vs batch, H100),
costs_state_vs_context.png (decode state per sequence vs context length).
"""

from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    from lfm2engine import costs, scaling
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, os.path.join(ROOT, "python"))
    from lfm2engine import costs, scaling

OUT = os.path.join(ROOT, "analysis", "figures")
NAMES = {"lfm2-8b-a1b": "LFM2-8B-A1B", "llama-7b": "Llama-7B", "deepseek-v3": "DeepSeek-V3"}
COLORS = {"lfm2-8b-a1b": "tab:blue", "llama-7b": "tab:orange", "deepseek-v3": "tab:green"}


def save(fig, name: str) -> str:
    path = os.path.join(OUT, name)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    os.replace(tmp, path)
    plt.close(fig)
    return path


def isoflop() -> str:
    law = scaling.DEFAULT_LAW
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = [5e4, 5e5, 5e6, 5e7]
    for budget in budgets:
        r = costs.plan(budget)
        c = r["C"]
        n = np.logspace(np.log10(r["N"]) - 1.5, np.log10(r["N"]) + 1.5, 400)
        ax.plot(n, scaling.isoflop_curve(c, n, law), label=f"${budget:,.0f}: C = {c:.2g} FLOPs")
        ax.plot([r["N"]], [r["loss"]], "k.", ms=9)
        if budget == 5e6:
            ax.annotate(f"$5M: N = {r['N'] / 1e9:.1f}B, D = {r['D'] / 1e12:.2f}T, loss {r['loss']:.3f}",
                        (r["N"], r["loss"]), textcoords="axes fraction", xytext=(0.04, 0.06), fontsize=8,
                        arrowprops={"arrowstyle": "->", "lw": 0.8})
    cs = np.logspace(np.log10(costs.plan(budgets[0])["C"]), np.log10(costs.plan(budgets[-1])["C"]), 50)
    opt = [scaling.optimal_allocation(c, law) for c in cs]
    ax.plot([n for n, _ in opt], [law.loss(n, d) for n, d in opt], "k--", lw=1, label="compute-optimal N(C)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (D = C / 6N)")
    ax.set_ylabel("predicted loss L(N, D)")
    ax.set_title("Iso-FLOP curves, L = 406.4/N^0.34 + 410.7/D^0.29 + 1.69; A100, MFU 0.4", fontsize=9)
    ax.set_ylim(1.8, 2.6)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return save(fig, "costs_isoflop.png")


def decode_roofline() -> str:
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in ("lfm2-8b-a1b", "llama-7b"):
        r = costs.inference_cost(name, context=4096, batches=batches)
        sw = r["decode_sweep"]
        fits = np.array([s["fits"] for s in sw])
        tps = np.array([s["tokens_per_s"] for s in sw])
        b = np.array(batches)
        ax.plot(b, tps, "-", color=COLORS[name], label=f"{NAMES[name]}: bound")
        ax.plot(b[fits], tps[fits], "o", color=COLORS[name], ms=5)
        ax.plot(b[~fits], tps[~fits], "o", mfc="none", color=COLORS[name], ms=5)
        ax.axhline(sw[0]["tokens_per_s_compute_bound"], color=COLORS[name], ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (sequences, each with 4096 cached tokens)")
    ax.set_ylabel("decode tokens/s (roofline bound)")
    ax.set_title("H100 bf16 decode: memory-bound line, compute roof dotted;\nhollow = weights + KV exceed 80 GB",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    tokens = np.unique(np.logspace(0, 4, 60).astype(int))
    for name in ("lfm2-8b-a1b", "deepseek-v3"):
        arch = costs.parse_config(name)
        total = costs.param_breakdown(arch)["total"] * 2
        touched = [costs.weight_bytes_touched(arch, int(t), 2) / total for t in tokens]
        bx.plot(tokens, touched, color=COLORS[name], label=NAMES[name])
        active = costs.param_breakdown(arch)["active"] * 2 / total
        bx.axhline(active, color=COLORS[name], ls=":", lw=1)
    bx.set_xscale("log")
    bx.set_xlabel("tokens in the decode step (batch)")
    bx.set_ylabel("weight bytes read / all weight bytes")
    bx.set_title("MoE: distinct experts touched, E(1-(1-k/E)^B) per layer;\ndotted = active share at batch 1",
                 fontsize=9)
    bx.set_ylim(0, 1.05)
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3, which="both")
    return save(fig, "costs_decode_roofline.png")


def state_vs_context() -> str:
    ctx = np.logspace(np.log10(1024), np.log10(163840), 40)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in ("llama-7b", "deepseek-v3", "lfm2-8b-a1b"):
        st = costs.kv_state(costs.parse_config(name), kv_bytes=2)
        y = (st["kv_bytes_per_token"] * ctx + st["conv_state_bytes"]) / 2**30
        ax.plot(ctx, y, color=COLORS[name],
                label=f"{NAMES[name]}: {st['kv_bytes_per_token']:,} B/token"
                + (f" + {st['conv_state_bytes']:,} B conv state" if st["conv_state_bytes"] else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode state per sequence (GiB, bf16)")
    ax.set_title("KV cache + conv state per sequence", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return save(fig, "costs_state_vs_context.png")


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    for f in (isoflop, decode_roofline, state_vs_context):
        print(f())
    return 0


if __name__ == "__main__":
    sys.exit(main())
