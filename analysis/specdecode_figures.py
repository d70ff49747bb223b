"""Figures and tables of the speculative decoding sweeps, from their JSON (no timing).

Reads analysis/out/specdecode_sweep_{model}.json, written by benchmarks/bench_specdecode.py, draws
analysis/figures/specdecode_{model}_*.png and prints the Markdown tables of analysis/specdecode.md
on stdout. A partial JSON (an interrupted sweep) still plots; the figures of the sweeps it lacks
are left as they are, and the script says which.

    python analysis/specdecode_figures.py --model moe     # figures/specdecode_moe_*.png + tables
    python analysis/specdecode_figures.py --model dense   # figures/specdecode_dense_*.png + tables
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from specdecode_model import (expected_tokens_per_round, in_run_verify, model_speedup, run_cost_ratio,
                              run_verify_points)
from specdecode_model import median as _median

HERE = os.path.dirname(os.path.abspath(__file__))

SWEEPS = ("k", "long-k", "threshold", "tree", "sampling")  # in the order the benchmark runs them


def log(msg):
    print(f"[specdecode_figures] {msg}", file=sys.stderr, flush=True)


def plot(res, fig_dir, tag):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    os.makedirs(fig_dir, exist_ok=True)
    runs, drafts = res["runs"], res["drafts"]
    vms, vst = res["verify_ms"], res["verify_steps"]
    out = []

    def save(fig, name, rect=None):
        p = os.path.join(fig_dir, f"specdecode_{tag}_{name}.png")
        fig.tight_layout(rect=rect)
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)

    # 1. speed-up over k, measured (solid) and predicted from alpha(k=1), c and the verify cost (dashed)
    ksr = [r for r in runs if r["sweep"] == "k"]
    kall = ksr + [r for r in runs if r["sweep"] == "long-k"]
    v_in = in_run_verify(res)
    names = list(drafts)
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.8))
    cmap = plt.get_cmap("tab20")
    colors = {n: (plt.get_cmap("tab10")(j) if len(names) <= 10 else cmap(2 * j % 20 + (2 * j) // 20))
              for j, n in enumerate(names)}
    marks = "os^vD<>pX*hP8d"
    kticks = sorted({r["k"] for r in kall})
    for j, n in enumerate(names):
        rs = sorted((r for r in kall if r["draft"] == n), key=lambda r: r["k"])
        if not rs:
            continue
        ks = [r["k"] for r in rs]
        mk = marks[j % len(marks)]
        ax[0].plot(ks, [r["speedup"] for r in rs], "-", marker=mk, color=colors[n], label=n, ms=4)
        a1 = next((r["acceptance_rate"] for r in rs if r["k"] == 1), None)
        if a1 is not None:
            pred = [model_speedup(res, n, a1, k, v_in) for k in ks]
            ax[0].plot(ks, pred, "--", color=colors[n], lw=0.8)
        ax[1].plot(ks, [r["tokens_per_round"] for r in rs], "-", marker=mk, color=colors[n], ms=4)
    ax[0].axhline(1.0, color="k", lw=0.8)
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xticks(kticks, [str(k) for k in kticks])
        a.minorticks_off()
    ax[0].set(xlabel="k (max draft tokens per round)", ylabel="speed-up over plain decoding",
              title=f"{tag}: measured (solid), model E(α₁,k)/(k·c+v(k+1)) (dashed)")
    ax[1].set(xlabel="k", ylabel="tokens committed per target call", title=f"{tag}: tokens per round")
    fig.legend(*ax[0].get_legend_handles_labels(), loc="center right", fontsize=8, title="draft",
               title_fontsize=8)
    save(fig, "k_sweep", rect=(0, 0, 0.86, 1))

    # 2. the draft trade-off: acceptance against cost
    fig, ax = plt.subplots(figsize=(8, 5.2))
    ax.set(ylim=(-0.05, 1.08), xlim=(0, 1.3))
    pts = []
    for n, d in drafts.items():
        bestsp = max((r["speedup"] for r in ksr if r["draft"] == n), default=float("nan"))
        a1 = next((r["acceptance_rate"] for r in ksr if r["draft"] == n and r["k"] == 1), d["agreement"])
        pts.append((n, run_cost_ratio(runs, n), a1, bestsp))
    for n, c_run, a1, bestsp in pts:
        sc = ax.scatter(c_run, a1, c=[bestsp], cmap="RdYlGn", norm=TwoSlopeNorm(1.0, 0.1, 1.5), s=60,
                        edgecolors="k", zorder=3)
    fig.colorbar(sc, label="best speed-up over k")
    ax.set(xlabel="draft cost c = draft call / plain decode step (in the runs)", ylabel="acceptance rate at k = 1",
           title=f"{tag}: draft choice, acceptance vs cost")
    fig.tight_layout()
    # labels: the first free slot around each point (in points), so that none overlap
    fig.canvas.draw()
    pt = 72.0 / fig.dpi
    to_pt = lambda c, a: tuple(v * pt for v in ax.transData.transform((c, a)))  # noqa: E731
    placed = [(x - 4.5, y - 4.5, x + 4.5, y + 4.5) for x, y in (to_pt(c, a) for _, c, a, _ in pts)]  # markers
    fs = 6.5
    fb = ax.get_window_extent()
    frame = (fb.x0 * pt + 2, fb.y0 * pt + 2, fb.x1 * pt - 2, fb.y1 * pt - 2)
    v2 = v_in.get("2", vst["2"])
    note = f"k=1 break-even: a = c + v(2) - 1, v(2) = {v2:.2f}"
    nx, ny = to_pt(0.02, 0.93)
    placed.append((nx, ny, nx + 0.56 * 7 * len(note), ny + 1.15 * 7))
    for n, c_run, a1, bestsp in sorted(pts, key=lambda p: (-p[2], p[1])):
        text = f"{n} ({bestsp:.2f}x)"
        w, h = 0.56 * fs * len(text), 1.15 * fs
        x0, y0 = to_pt(c_run, a1)
        for dx, dy in [(6, 0), (6, -h), (-w - 6, 0), (-w - 6, -h), (6, h + 2), (6, -2 * h - 2),
                       (-w - 6, h + 2), (-w - 6, -2 * h - 2), (6, 2 * h + 4), (6, -3 * h - 4)]:
            box = (x0 + dx, y0 + dy, x0 + dx + w, y0 + dy + h)
            inside = frame[0] <= box[0] and box[2] <= frame[2] and frame[1] <= box[1] and box[3] <= frame[3]
            if inside and all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (c_run, a1), xytext=(dx, dy), textcoords="offset points", fontsize=fs,
                    ha="left", va="bottom",
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="gray") if abs(dy) > h + 1 else None)
    c = np.linspace(0.0, 1.3, 100)
    ax.plot(c, c + v2 - 1, ":", color="gray")  # k = 1 break-even: (1 + a) / (c + v(2)) = 1
    ax.annotate(note, (0.02, 0.93), fontsize=7, color="gray")
    save(fig, "drafts")

    # 3. verification cost against the number of tokens
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ts = sorted(int(t) for t in vms)
    ax.plot(ts, [vst[str(t)] for t in ts], "o-", label="one forward of T tokens, isolated (last logits only)")
    vin = [(t, v) for _, t, v in run_verify_points(runs)]
    if vin:
        ax.plot([t for t, _ in vin], [v for _, v in vin], "s",
                label="verification inside the runs (all T logits;\nx = mean tokens per call of a run at one k)")
    ax.plot(ts, ts, "--", color="gray", label="T plain decode steps")
    ymax = 1.25 * max([vst[str(t)] for t in ts] + [v for _, v in vin])
    ax.set(xlabel="T tokens in one call", ylabel="cost in target decode steps", ylim=(0, ymax),
           title=f"{tag}: cost of one verification")
    ax.legend(fontsize=7, loc="upper left")
    save(fig, "verify_cost")

    # 4. threshold
    thr = [r for r in runs if r["sweep"] == "threshold"]
    if thr:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for j, n in enumerate(dict.fromkeys(r["draft"] for r in thr)):
            rs = sorted((r for r in thr if r["draft"] == n), key=lambda r: r["threshold"])
            x = [r["threshold"] for r in rs]
            ax[0].plot(x, [r["speedup"] for r in rs], "o-", color=f"C{j}", label=f"{n}, k={rs[0]['k']}")
            ax[1].plot(x, [r["drafted"] / max(sum(r["histogram"]), 1) for r in rs], "o-", color=f"C{j}",
                       label=f"{n}: drafted tokens/round")
            ax[1].plot(x, [r["acceptance_rate"] for r in rs], "s--", color=f"C{j}", mfc="none",
                       label=f"{n}: acceptance rate")
        ax[0].axhline(1.0, color="k", lw=0.8)
        ax[0].set(xlabel="confidence threshold", ylabel="speed-up over plain decoding",
                  title=f"{tag}: dynamic draft length")
        ax[0].legend(fontsize=8)
        ax[1].set(xlabel="confidence threshold", ylabel="drafted tokens per round / acceptance rate",
                  title="draft length and acceptance")
        ax[1].legend(fontsize=7)
        save(fig, "threshold")

    # 5. tree width: one colour per draft, one line style per k
    tr = [r for r in runs if r["sweep"] == "tree"]
    if tr:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for j, n in enumerate(dict.fromkeys(r["draft"] for r in tr)):
            for ls, k in zip(("-", "--", ":", "-."), sorted({r["k"] for r in tr if r["draft"] == n})):
                rs = sorted((r for r in tr if r["draft"] == n and r["k"] == k), key=lambda r: r["width"])
                w = [r["width"] for r in rs]
                ax[0].plot(w, [r["speedup"] for r in rs], "o" + ls, color=f"C{j}", label=f"{n}, k={k}")
                ax[1].plot(w, [r["tokens_per_round"] for r in rs], "o" + ls, color=f"C{j}", label=f"{n}, k={k}")
        ws = sorted({r["width"] for r in tr})
        ax[0].axhline(1.0, color="k", lw=0.8)
        ax[0].set(xlabel="tree width W (candidates per depth)", ylabel="speed-up over plain decoding",
                  title=f"{tag}: tree verification (greedy)", xticks=ws)
        ax[1].set(xlabel="tree width W", ylabel="tokens committed per target call", title="tokens per round",
                  xticks=ws)
        ax[0].legend(fontsize=7)  # the right panel has the same lines
        save(fig, "tree")

    # 6. histograms of accepted draft tokens at the largest k, with the geometric law of alpha(k=1):
    # the six drafts with the highest acceptance at k = 1 (one per distinct value)
    kmax = max(r["k"] for r in ksr)
    a_k1 = {r["draft"]: r["acceptance_rate"] for r in ksr if r["k"] == 1}
    cand = [n for n in sorted(drafts, key=lambda n: -a_k1.get(n, -1))
            if n in a_k1 and any(r["draft"] == n and r["k"] == kmax for r in ksr)]
    sel, seen = [], set()
    for n in cand:
        if round(a_k1[n], 2) not in seen:
            seen.add(round(a_k1[n], 2))
            sel.append(n)
    sel = sel[:6]
    fig, axs = plt.subplots(1, len(sel), figsize=(2.6 * len(sel), 3.2), sharey=True)
    for ax, n in zip(np.atleast_1d(axs), sel):
        r = next(r for r in ksr if r["draft"] == n and r["k"] == kmax)
        h = np.array(r["histogram"], float)
        h /= max(h.sum(), 1)
        a = a_k1[n]
        geo = [(1 - a) * a**i for i in range(kmax)] + [a**kmax]
        ax.bar(range(len(h)), h, color="C0")
        ax.plot(range(kmax + 1), geo, "k.--", lw=0.8)
        ax.set(title=f"{n}\nα(k=1) = {a:.2f}", xlabel="accepted", xticks=range(0, kmax + 1, 2))
        ax.title.set_fontsize(9)
    np.atleast_1d(axs)[0].set_ylabel(f"share of rounds ({tag}, k={kmax})")
    fig.suptitle(f"{tag}: accepted draft tokens per round at k = {kmax} (bars) and the i.i.d. law "
                 "(1-α)αⁱ of α(k=1) (dots); the last round of each prompt drafts fewer tokens "
                 "(capped by the tokens left)", fontsize=9)
    save(fig, "histogram")

    # 7. greedy vs sampling acceptance
    sm = [r for r in runs if r["sweep"] == "sampling"]
    if sm:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for j, n in enumerate(dict.fromkeys(r["draft"] for r in sm)):
            rs = sorted((r for r in sm if r["draft"] == n), key=lambda r: r["k"])
            gs = sorted((r for r in ksr if r["draft"] == n), key=lambda r: r["k"])
            ax[0].plot([r["k"] for r in rs], [r["acceptance_rate"] for r in rs], "o-", color=f"C{j}",
                       label=f"{n}, T=1")
            ax[0].plot([r["k"] for r in gs], [r["acceptance_rate"] for r in gs], "x:", color=f"C{j}",
                       label=f"{n}, greedy")
            ax[1].plot([r["k"] for r in rs], [r["speedup"] for r in rs], "o-", color=f"C{j}", label=n)
        ax[0].set(xlabel="k", ylabel="acceptance rate", title=f"{tag}: sampling (T = 1) vs greedy")
        ax[0].legend(fontsize=7)
        ax[1].axhline(1.0, color="k", lw=0.8)
        ax[1].set(xlabel="k", ylabel="speed-up over plain sampling", title="sampling, T = 1")
        save(fig, "sampling")
    return out


def tables(res) -> str:
    """Markdown tables of the main results (pasted into analysis/specdecode.md)."""
    runs, drafts = res["runs"], res["drafts"]
    ksr = [r for r in runs if r["sweep"] == "k"]
    ks = sorted({r["k"] for r in ksr})
    plain = _median([r["plain_ms_per_token"] for r in ksr])
    lines = []
    if res.get("partial"):
        have = [w for w in SWEEPS if any(r["sweep"] == w for r in runs)]
        lines += [f"**partial JSON**: the sweep stopped early; sweeps present: {', '.join(have)}; missing: "
                  f"{', '.join(w for w in SWEEPS if w not in have) or 'none (only the end of the last one)'}", ""]
    m = res["machine"]
    lines += [f"machine: {m['cores']} cores ({m['cpu']}), {m['threads']} op thread(s), Python {m['python']}; "
              f"{len(res['prompts'])} prompt(s) x {res['max_new_tokens']} new tokens, {res['repeats']} timed pairs",
              "",
              f"target step {res['target_step_ms']:.2f} ms; plain greedy {plain:.2f} ms/token (median over runs)", "",
             "| draft | c (isolated / in runs) | argmax agree | α (T=1) | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---|---|---|---|" + "---|" * len(ks)]
    for n, d in drafts.items():
        sp = {r["k"]: r for r in ksr if r["draft"] == n}
        cells = [f"{sp[k]['speedup']:.2f}x / {sp[k]['acceptance_rate']:.2f}" if k in sp else "" for k in ks]
        lines.append(f"| {n} | {d['cost_ratio']:.2f} / {run_cost_ratio(runs, n):.2f} | {d['agreement']:.2f} | {d['alpha_t1']:.2f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "cells: speed-up / acceptance rate", ""]
    tt = sorted(res["verify_ms"], key=int)
    lines += ["| T tokens in one forward | " + " | ".join(tt) + " |", "|---|" + "---|" * len(tt),
              "| ms | " + " | ".join(f"{res['verify_ms'][t]:.2f}" for t in tt) + " |",
              "| target steps | " + " | ".join(f"{res['verify_steps'][t]:.2f}" for t in tt) + " |"]
    pts = run_verify_points(runs)
    if pts:
        lines += ["", "verification inside the runs (drafts that always agree; all logits; in plain steps):", "",
                  "| k | " + " | ".join(str(k) for k, _, _ in pts) + " |", "|---|" + "---|" * len(pts),
                  "| mean tokens per verification | " + " | ".join(f"{t:.2f}" for _, t, _ in pts) + " |",
                  "| cost in plain steps | " + " | ".join(f"{v:.2f}" for _, _, v in pts) + " |"]
    # what one draft call costs inside the runs, by k (the first call of a round feeds two tokens)
    kall = ksr + [r for r in runs if r["sweep"] == "long-k"]
    kk = sorted({r["k"] for r in kall})
    lines += ["", "one draft call inside the runs, in plain steps (draft time / draft calls / plain time per token):",
              "", "| draft | " + " | ".join(f"k={k}" for k in kk) + " |", "|---|" + "---|" * len(kk)]
    for n in drafts:
        sp = {r["k"]: r for r in kall if r["draft"] == n and r["draft_calls"]}
        lines.append(f"| {n} | " + " | ".join(
            f"{sp[k]['draft_seconds'] / sp[k]['draft_calls'] / (sp[k]['plain_ms_per_token'] / 1e3):.2f}"
            if k in sp else "" for k in kk) + " |")
    # the model against the measurement
    v_in = in_run_verify(res)
    lines += ["", "model E(α₁,k)/(k·c+v(k+1)) with α₁ = acceptance at k = 1, c and v from the runs:", "",
              f"| draft | α₁ | c | k=1 model / measured | k={max(ks)} model / measured | "
              "best k, model | best k, measured | E(α₁,k) / measured tokens per round at k=" + f"{max(ks)} |",
              "|---|---|---|---|---|---|---|---|"]
    for n in drafts:
        sp = {r["k"]: r for r in kall if r["draft"] == n}
        if 1 not in sp:
            continue
        a1 = sp[1]["acceptance_rate"]
        mod = {k: model_speedup(res, n, a1, k, v_in) for k in sp}
        kb_m = max(mod, key=lambda k: mod[k] if mod[k] == mod[k] else -1)
        kb = max(sp, key=lambda k: sp[k]["speedup"])
        km = max(ks)
        e = expected_tokens_per_round(a1, min(km, res["max_new_tokens"] - 1))
        lines.append(f"| {n} | {a1:.2f} | {run_cost_ratio(runs, n):.2f} | {mod[1]:.2f} / {sp[1]['speedup']:.2f} | "
                     + (f"{mod[km]:.2f} / {sp[km]['speedup']:.2f}" if km in sp else "") +
                     f" | {kb_m} ({mod[kb_m]:.2f}x) | {kb} ({sp[kb]['speedup']:.2f}x) | "
                     + (f"{e:.2f} / {sp[km]['tokens_per_round']:.2f}" if km in sp else "") + " |")
    # where the time went
    lines += ["", "where the time went, ms per generated token (counters of the last timed run; plain: median run):",
              "",
              "| draft | k | plain | speculative | prefill | draft calls | verification | other |",
              "|---|---|---|---|---|---|---|---|"]
    for n in drafts:
        sp = {r["k"]: r for r in kall if r["draft"] == n}
        if not sp:
            continue
        for k in dict.fromkeys([1, max(sp, key=lambda k: sp[k]["speedup"])]):
            r = sp[k]
            per = lambda x: 1e3 * x / max(r["new_tokens"], 1)  # noqa: E731
            lines.append(f"| {n} | {k} | {r['plain_ms_per_token']:.2f} | {r['spec_ms_per_token']:.2f} | "
                         f"{per(r['prefill_seconds']):.2f} | {per(r['draft_seconds']):.2f} | "
                         f"{per(r['verify_seconds']):.2f} | {per(r['other_seconds']):.2f} |")
    for sweep, key in (("long-k", "k"), ("threshold", "threshold"), ("tree", "width"), ("sampling", "temperature")):
        rs = [r for r in runs if r["sweep"] == sweep]
        if not rs:
            continue
        col = f" {key} |" if key != "k" else ""
        lines += ["", f"**{sweep}**", "", f"| draft | k |{col} acceptance | drafted/round | tokens/round | "
                  "rollbacks | ms/token | speed-up |", "|---|---|" + "---|" * (7 if col else 6)]
        for r in rs:
            cell = f" {r[key]:g} |" if col else ""
            lines.append(f"| {r['draft']} | {r['k']} |{cell} {r['acceptance_rate']:.2f} | "
                         f"{r['drafted'] / max(sum(r['histogram']), 1):.2f} | {r['tokens_per_round']:.2f} | "
                         f"{r['rollbacks']} | {r['spec_ms_per_token']:.2f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="moe", choices=("moe", "dense", "tiny"),
                    help="which sweep: the built-in synthetic MoE or the 271M-parameter synthetic dense LFM2")
    ap.add_argument("--json", help="the sweep's JSON (default analysis/out/specdecode_sweep_{model}.json)")
    ap.add_argument("--figures", default=os.path.join(HERE, "figures"), help="where the PNG files go")
    args = ap.parse_args(argv)
    path = args.json or os.path.join(HERE, "out", f"specdecode_sweep_{args.model}.json")
    with open(path) as f:
        res = json.load(f)
    if res.get("partial"):
        have = {r["sweep"] for r in res["runs"]}
        log(f"{path} is partial (the sweep stopped early); missing sweeps: "
            f"{', '.join(w for w in SWEEPS if w not in have) or 'none'}; their figures are not redrawn")
    for p in plot(res, args.figures, res.get("model", args.model)):
        log(f"wrote {p}")
    print(tables(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
