"""Sweeps of speculative decoding: draft choice, k = 1..8 (and longer for drafts that always
agree), confidence threshold, tree width, greedy vs sampling, plus the costs that explain them
(draft step, one verification forward of T tokens).

Two targets: `moe` = the built-in synthetic LFM2-8B-A1B-shaped model (78M parameters, 32 experts,
top-4), and `dense` = a synthetic dense LFM2 of 271M parameters whose decode step is bound by
reading the weights (written once to the lfm2engine cache). Every speed-up is a ratio against
plain decoding of the same target in the same process, the two alternating (median of --repeats
pairs); greedy runs are also checked token for token against plain decoding. The ops run on one
thread by default: on a shared 2-core machine, OpenMP barriers of two threads are at the mercy of
other jobs, one thread is not. Writes analysis/out/specdecode_sweep_{model}.json (atomically) and
analysis/figures/specdecode_{model}_*.png; analysis/specdecode.md discusses them. Asserts nothing on time.

    python analysis/specdecode_sweep.py --model moe          # ~25 min on 2 cores
    python analysis/specdecode_sweep.py --model dense        # ~25 min
    python analysis/specdecode_sweep.py --model moe --quick  # fewer drafts and k values
    python analysis/specdecode_sweep.py --model moe --plot-only   # redraw figures, print tables
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

from lfm2engine.specdecode import (calibration_sequence, draft_agreement, expected_tokens_per_round,  # noqa: E402
                                   forward_ms, measure, skip_order, write_pruned_checkpoint)


def _median(xs):
    return float(np.median(xs)) if xs else float("nan")


def forward_timer(engine, prompt, n_tokens):
    """A callable timing one forward of n_tokens after `prompt` (then rolled back), in ms."""
    s = engine.session(1, len(prompt) + n_tokens, rollback=n_tokens)
    s.forward([0], [prompt])

    def once():
        t0 = time.perf_counter()
        s.forward([0], [[prompt[-1]] * n_tokens])
        dt = time.perf_counter() - t0
        s.truncate(0, len(prompt))
        return 1e3 * dt

    once()
    return once


def paired_ratio(num, den, n=15):
    """Alternate two timers n times: (median of num, median of den, median of the per-pair ratios).
    Pairs taken close in time share the machine's load, so the ratio is steadier than the times."""
    a, b = [], []
    for _ in range(n):
        a.append(num())
        b.append(den())
    return _median(a), _median(b), _median([x / y for x, y in zip(a, b)])


def log(msg):
    print(f"[specdecode_sweep] {msg}", file=sys.stderr, flush=True)


def write_json_atomic(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def random_dense_draft(target_cfg, out_dir):
    """A small dense LFM2 with random weights sharing the target's vocabulary: a separate checkpoint
    that knows nothing of the target (the floor of what a draft can be)."""
    from lfm2engine.checkpoint import expected_tensors, save_pretrained
    from lfm2engine.config import LFM2Config
    from lfm2engine.synthetic import make_tensor

    cfg = LFM2Config.from_dict(dict(
        model_type="lfm2", vocab_size=target_cfg.vocab_size, hidden_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=384, block_auto_adjust_ff_dim=False,
        layer_types=["conv", "full_attention", "conv", "conv"], max_position_embeddings=target_cfg.max_position_embeddings,
        bos_token_id=target_cfg.bos_token_id, eos_token_id=list(target_cfg.eos_ids), pad_token_id=target_cfg.pad_token_id))
    specs = expected_tensors(cfg)
    save_pretrained(cfg, lambda n: make_tensor(cfg, n, specs[n], 7), out_dir, dtype="BF16")
    return out_dir


DENSE = dict(model_type="lfm2", vocab_size=8192, hidden_size=1024, num_hidden_layers=16, num_attention_heads=16,
             num_key_value_heads=4, intermediate_size=4096, block_auto_adjust_ff_dim=False,
             layer_types=["full_attention" if i in (2, 6, 10, 14) else "conv" for i in range(16)],
             max_position_embeddings=4096, bos_token_id=1, eos_token_id=7, pad_token_id=0)


def dense_target_dir():
    """The synthetic dense target (271M parameters, bf16 on disk), written once to the cache."""
    from lfm2engine.checkpoint import expected_tensors, save_pretrained
    from lfm2engine.config import LFM2Config
    from lfm2engine.synthetic import cache_dir, make_tensor

    d = os.path.join(cache_dir(), "specdecode-dense-271m")
    if not os.path.isfile(os.path.join(d, "config.json")):
        log(f"writing the dense target to {d}")
        cfg = LFM2Config.from_dict(DENSE)
        specs = expected_tensors(cfg)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(d) if os.path.isdir(os.path.dirname(d)) else None)
        save_pretrained(cfg, lambda n: make_tensor(cfg, n, specs[n], 0), tmp, dtype="BF16")
        os.replace(tmp, d)
    return d


def build_drafts(target, tdir, workdir, quick):
    from lfm2engine.model import Engine

    drafts = []  # (name, engine, kind)
    t0 = time.perf_counter()
    n_max = min(12, target.config.num_hidden_layers - 1)
    order = skip_order(target, n_max)
    log(f"skip-layer calibration order {order} in {time.perf_counter() - t0:.1f} s")
    if target.config.is_moe:
        for k in ((1,) if quick else (1, 2, 3)):
            drafts.append((f"topk={k}", target.derive(top_k=k), "fewer experts"))
    for n in ((2, 8) if quick else (1, 2, 4, 8, 12)):
        if n <= n_max:
            drafts.append((f"skip {n} (auto)", target.derive(skip_layers=order[:n]), "skipped layers"))
    bf = Engine.from_pretrained(tdir, dtype="bfloat16")
    drafts.append(("bf16 weights", bf, "reduced precision"))
    if not quick:
        drafts.append(("f16 weights", Engine.from_pretrained(tdir, dtype="float16"), "reduced precision"))
        if target.config.is_moe:
            drafts.append(("bf16+topk=2", bf.derive(top_k=2), "reduced precision"))
        drafts.append(("target itself", target, "upper bound"))
    n_prune = min(8, n_max)
    pruned = write_pruned_checkpoint(tdir, order[:n_prune], os.path.join(workdir, "pruned"))
    drafts.append((f"pruned ckpt (-{n_prune} layers)", Engine.from_pretrained(pruned), "separate checkpoint"))
    dense = random_dense_draft(target.config, os.path.join(workdir, "dense_random"))
    drafts.append(("random dense ckpt", Engine.from_pretrained(dense), "separate checkpoint"))
    return drafts, order


def run(args):
    from lfm2engine.model import Engine, _core_cpu
    from lfm2engine.synthetic import default_model_dir

    tdir = args.target or (dense_target_dir() if args.model == "dense" else default_model_dir("default"))
    _core_cpu().set_num_threads(args.threads)
    target = Engine.from_pretrained(tdir)
    cfg = target.config
    rng = np.random.default_rng(100)
    prompts = [[cfg.bos_token_id or 1] + rng.integers(2, cfg.vocab_size, 15).tolist() for _ in range(args.prompts)]
    n_new, reps = args.max_new_tokens, args.repeats
    ks = list(range(1, args.kmax + 1)) if not args.quick else [1, 2, 4, 8]
    res = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "threads": args.threads},
           "model": args.model, "target": tdir,
           "config": {"model_type": cfg.model_type, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                      "vocab": cfg.vocab_size, "experts": cfg.num_experts, "top_k": cfg.num_experts_per_tok},
           "prompts": prompts, "max_new_tokens": n_new, "repeats": reps}
    with tempfile.TemporaryDirectory() as work:
        drafts, order = build_drafts(target, tdir, work, args.quick)
        res["skip_order"] = order
        # ---- costs, as ratios to one target decode step measured alternately with them
        p0 = prompts[0]
        step_t = forward_timer(target, p0, 1)
        res["verify_ms"], res["verify_steps"] = {}, {}
        steps = []
        for t in (1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 25, 33):
            v_ms, s_ms, ratio = paired_ratio(forward_timer(target, p0, t), step_t, 9)
            res["verify_ms"][str(t)], res["verify_steps"][str(t)] = v_ms, ratio
            steps.append(s_ms)
        step = res["target_step_ms"] = _median(steps)
        log(f"target step {step:.2f} ms; verify 5 tokens = {res['verify_steps']['5']:.2f} steps, "
            f"9 tokens = {res['verify_steps']['9']:.2f}, 33 tokens = {res['verify_steps']['33']:.2f}")
        calib = calibration_sequence(target, seed=4321)  # held out from the skip calibration
        res["drafts"] = {}
        for name, eng, kind in drafts:
            agree, alpha = draft_agreement(target, eng, calib)
            d_ms, _, c = paired_ratio(forward_timer(eng, p0, 1), step_t, 15)
            res["drafts"][name] = {"kind": kind, "step_ms": d_ms, "cost_ratio": c, "agreement": agree,
                                   "alpha_t1": alpha}
            log(f"draft {name:<24} step {d_ms:6.2f} ms (c = {c:.2f}), argmax agreement {agree:.2f}, "
                f"sampling acceptance {alpha:.2f}")
        runs = []

        def rec(name, rep, **extra):
            r = {k: v for k, v in rep.items() if k not in ("tokens", "plain_tokens")}
            r.update(draft=name, **extra)
            runs.append(r)
            ok = "" if "matches_plain" not in rep else ("  =plain" if rep["matches_plain"] else "  MISMATCH")
            log(f"{name:<24} k={rep['k']} thr={rep['threshold']:g} W={rep['width']} T={rep['temperature']:g}: "
                f"accept {rep['acceptance_rate']:.2f}, {rep['tokens_per_round']:.2f} tok/round, "
                f"{rep['spec_ms_per_token']:.2f} ms/token (plain {rep['plain_ms_per_token']:.2f}), "
                f"speed-up {rep['speedup']:.2f}x [{rep['speedup_min']:.2f}, {rep['speedup_max']:.2f}], "
                f"cpu {rep['speedup_cpu']:.2f}x{ok}")
            write_json_atomic(args.out, dict(res, runs=runs, partial=True))  # a long sweep can be inspected

        by_name = {n: e for n, e, _ in drafts}
        # ---- greedy: every draft over k (each configuration alternates with plain decoding)
        for name, eng, _ in drafts:  # drafts that rarely agree waste k draft steps a round: fewer k
            for k in (ks if res["drafts"][name]["agreement"] >= 0.2 else [k for k in ks if k in (1, 2, 4, 8)]):
                rec(name, measure(target, eng, prompts, n_new, k, repeats=reps), sweep="k")
        greedy_k = [r for r in runs if r["sweep"] == "k"]
        best_of = {n: max(r["speedup"] for r in greedy_k if r["draft"] == n) for n in res["drafts"]}
        ranked = sorted(best_of, key=lambda n: -best_of[n])
        best = ranked[0]
        res["best_greedy"] = max(greedy_k, key=lambda r: r["speedup"])
        # drafts that always agree: how far does a longer k go?
        for name in [n for n in ranked if n in by_name and res["drafts"][n]["agreement"] > 0.95][:2]:
            for k in ((12, 16) if args.quick else (12, 16, 24, 32)):
                rec(name, measure(target, by_name[name], prompts, n_new, k, repeats=reps), sweep="long-k")
        # a draft that agrees about half of the time: where thresholds and trees have room to help
        mid = min(res["drafts"], key=lambda n: abs(res["drafts"][n]["agreement"] - 0.5))
        # ---- dynamic draft length: confidence threshold at the largest k
        for name in dict.fromkeys([best, mid]):
            for thr in (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99):
                rep = measure(target, by_name[name], prompts, n_new, max(ks), thr, repeats=reps)
                rec(name, rep, sweep="threshold")
        # ---- tree verification
        for name in dict.fromkeys([best, mid]):
            for k in (2, 4):
                for w in (1, 2, 3, 4):
                    rep = measure(target, by_name[name], prompts, n_new, k, width=w, repeats=reps)
                    rec(name, rep, sweep="tree")
        # ---- sampling at temperature 1
        for name in dict.fromkeys([best, mid]):
            for k in ks:
                rep = measure(target, by_name[name], prompts, n_new, k, temperature=1.0, seed=3, repeats=reps)
                rec(name, rep, sweep="sampling")
    res["runs"] = runs
    return res


# ------------------------------------------------------------------------------------------ figures


def predicted_speedup(alpha, k, c, verify_steps):
    """Tokens per round over the cost of a round in target steps: E(alpha, k) / (k c + v(k + 1))."""
    v = verify_steps.get(str(k + 1))
    if v is None:
        return float("nan")
    return expected_tokens_per_round(alpha, k) / (k * c + v)


def run_cost_ratio(runs, name):
    """Draft cost c measured inside the speculative runs: mean time of one draft call over the plain
    time per token of the same runs (median over the draft's greedy runs). Many more samples than
    the isolated step timings, and it includes what a draft call really does (1-2 pending tokens,
    the rollback window)."""
    cs = [(r["draft_seconds"] / r["draft_calls"]) / (r["plain_ms_per_token"] / 1e3)
          for r in runs if r["draft"] == name and r["sweep"] in ("k", "long-k") and r["draft_calls"]]
    return _median(cs)


def run_verify_steps(runs, k):
    """Cost of one verification of k + 1 tokens in plain-decoding steps, measured inside the runs."""
    vs = [(r["verify_seconds"] / r["target_calls"]) / (r["plain_ms_per_token"] / 1e3)
          for r in runs if r["sweep"] in ("k", "long-k") and r["k"] == k and r["acceptance_rate"] > 0.95]
    return _median(vs)


def plot(res, fig_dir, tag):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(fig_dir, exist_ok=True)
    runs, drafts = res["runs"], res["drafts"]
    step, vms, vst = res["target_step_ms"], res["verify_ms"], res["verify_steps"]
    out = []

    def save(fig, name):
        p = os.path.join(fig_dir, f"specdecode_{tag}_{name}.png")
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)

    # 1. speed-up over k, measured (solid) and predicted from alpha(k=1), c and the verify cost (dashed)
    ksr = [r for r in runs if r["sweep"] == "k"]
    kall = ksr + [r for r in runs if r["sweep"] == "long-k"]
    # verification cost of T = k + 1 tokens in plain steps, measured inside the runs (isolated timing
    # as a fallback): the model below then has no free parameter besides alpha at k = 1
    v_in = {str(k + 1): run_verify_steps(runs, k) for k in sorted({r["k"] for r in kall})}
    v_in = {t: (v if v == v else vst.get(t, float("nan"))) for t, v in v_in.items()}
    names = list(drafts)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.6))
    cmap = plt.get_cmap("tab20")
    for j, n in enumerate(names):
        rs = sorted((r for r in kall if r["draft"] == n), key=lambda r: r["k"])
        if not rs:
            continue
        ks = [r["k"] for r in rs]
        ax[0].plot(ks, [r["speedup"] for r in rs], "o-", color=cmap(j), label=n, ms=3)
        a1 = next((r["acceptance_rate"] for r in rs if r["k"] == 1), None)
        if a1 is not None:
            kcap = res["max_new_tokens"] - 1
            pred = [predicted_speedup(a1, min(k, kcap), run_cost_ratio(runs, n), v_in) for k in ks]
            ax[0].plot(ks, pred, "--", color=cmap(j), lw=0.8)
        ax[1].plot(ks, [r["tokens_per_round"] for r in rs], "o-", color=cmap(j), ms=3)
    ax[0].axhline(1.0, color="k", lw=0.8)
    ax[0].set_xscale("log", base=2)
    ax[1].set_xscale("log", base=2)
    ax[0].set(xlabel="k (max draft tokens per round)", ylabel="speed-up over plain decoding",
              title="greedy: measured (solid), model E(α₁,k)/(k·c+v(k+1)) (dashed)")
    ax[0].legend(fontsize=7, ncol=2)
    ax[1].set(xlabel="k", ylabel="tokens committed per target call", title="tokens per round")
    save(fig, "k_sweep")

    # 2. the draft trade-off: acceptance against cost
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for n, d in drafts.items():
        bestsp = max((r["speedup"] for r in ksr if r["draft"] == n), default=float("nan"))
        a1 = next((r["acceptance_rate"] for r in ksr if r["draft"] == n and r["k"] == 1), d["agreement"])
        c_run = run_cost_ratio(runs, n)
        sc = ax.scatter(c_run, a1, c=[bestsp], cmap="RdYlGn", vmin=0.5, vmax=1.5, s=60,
                        edgecolors="k")
        ax.annotate(f"{n} ({bestsp:.2f}x)", (c_run, a1), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    c = np.linspace(0.02, 1.1, 100)
    for s in (1.0, 1.5):  # k = 1 break-even curves: (1 + a) / (c + v2) = s
        ax.plot(c, s * (c + vst["2"]) - 1, ":", color="gray")
        ax.annotate(f"k=1 speed-up {s:g}", (c[-1], s * (c[-1] + vst["2"]) - 1), fontsize=7, color="gray")
    fig.colorbar(sc, label="best speed-up over k")
    ax.set(xlabel="draft cost c = draft call / plain decode step (in the runs)", ylabel="acceptance rate at k = 1",
           ylim=(-0.05, 1.05), xlim=(0, 1.2), title="draft choice: acceptance vs cost")
    save(fig, "drafts")

    # 3. verification cost against the number of tokens
    fig, ax = plt.subplots(figsize=(6, 4))
    ts = sorted(int(t) for t in vms)
    ax.plot(ts, [vst[str(t)] for t in ts], "o-", label="one target forward of T tokens (isolated)")
    kin = sorted({r["k"] for r in runs if r["sweep"] in ("k", "long-k")})
    vin = [(k + 1, run_verify_steps(runs, k)) for k in kin]
    vin = [(t, v) for t, v in vin if v == v]
    if vin:
        ax.plot([t for t, _ in vin], [v for _, v in vin], "s", label="verification inside the runs")
    ax.plot(ts, ts, "--", label="T plain decode steps")
    ax.set(xlabel="T tokens in one call", ylabel="cost in target decode steps", title="cost of one verification")
    ax.legend()
    save(fig, "verify_cost")

    # 4. threshold
    thr = [r for r in runs if r["sweep"] == "threshold"]
    if thr:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for n in dict.fromkeys(r["draft"] for r in thr):
            rs = sorted((r for r in thr if r["draft"] == n), key=lambda r: r["threshold"])
            x = [r["threshold"] for r in rs]
            ax[0].plot(x, [r["speedup"] for r in rs], "o-", label=f"{n}, k={rs[0]['k']}")
            ax[1].plot(x, [r["drafted"] / max(sum(r["histogram"]), 1) for r in rs], "o-", label=f"{n}: drafted/round")
            ax[1].plot(x, [r["acceptance_rate"] for r in rs], "s--", label=f"{n}: acceptance")
        ax[0].axhline(1.0, color="k", lw=0.8)
        ax[0].set(xlabel="confidence threshold", ylabel="speed-up", title="dynamic draft length")
        ax[0].legend(fontsize=8)
        ax[1].set(xlabel="confidence threshold", title="draft length and acceptance")
        ax[1].legend(fontsize=7)
        save(fig, "threshold")

    # 5. tree width
    tr = [r for r in runs if r["sweep"] == "tree"]
    if tr:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for k in sorted({r["k"] for r in tr}):
            rs = sorted((r for r in tr if r["k"] == k), key=lambda r: r["width"])
            w = [r["width"] for r in rs]
            ax[0].plot(w, [r["speedup"] for r in rs], "o-", label=f"k={k}")
            ax[1].plot(w, [r["tokens_per_round"] for r in rs], "o-", label=f"k={k}")
        ax[0].axhline(1.0, color="k", lw=0.8)
        ax[0].set(xlabel="tree width W (candidates per depth)", ylabel="speed-up",
                  title=f"tree verification, draft {tr[0]['draft']}")
        ax[1].set(xlabel="W", ylabel="tokens per round")
        ax[0].legend()
        save(fig, "tree")

    # 6. histograms of accepted draft tokens at the largest k, with the geometric law of alpha(k=1)
    kmax = max(r["k"] for r in ksr)
    sel = [n for n in drafts if any(r["draft"] == n and r["k"] == kmax for r in ksr)][:6]
    fig, axs = plt.subplots(1, len(sel), figsize=(2.6 * len(sel), 3.2), sharey=True)
    for ax, n in zip(np.atleast_1d(axs), sel):
        r = next(r for r in ksr if r["draft"] == n and r["k"] == kmax)
        h = np.array(r["histogram"], float)
        h /= max(h.sum(), 1)
        a = next(x["acceptance_rate"] for x in ksr if x["draft"] == n and x["k"] == 1)
        geo = [(1 - a) * a**i for i in range(kmax)] + [a**kmax]
        ax.bar(range(len(h)), h, color="C0")
        ax.plot(range(kmax + 1), geo, "k.--", lw=0.8)
        ax.set(title=n, xlabel="accepted")
    np.atleast_1d(axs)[0].set_ylabel(f"share of rounds (k={kmax})")
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
        ax[0].set(xlabel="k", ylabel="acceptance rate", title="sampling (T = 1) vs greedy")
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
    lines = [f"target step {res['target_step_ms']:.2f} ms; plain greedy {plain:.2f} ms/token (median over runs)", "",
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
    for sweep, key in (("long-k", "k"), ("threshold", "threshold"), ("tree", "width"), ("sampling", "temperature")):
        rs = [r for r in runs if r["sweep"] == sweep]
        if not rs:
            continue
        lines += ["", f"**{sweep}**", "", f"| draft | k | {key} | acceptance | drafted/round | tokens/round | "
                  "rollbacks | ms/token | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            lines.append(f"| {r['draft']} | {r['k']} | {r[key]:g} | {r['acceptance_rate']:.2f} | "
                         f"{r['drafted'] / max(sum(r['histogram']), 1):.2f} | {r['tokens_per_round']:.2f} | "
                         f"{r['rollbacks']} | {r['spec_ms_per_token']:.2f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="moe", choices=("moe", "dense"),
                    help="moe: the built-in synthetic MoE; dense: a 271M-parameter synthetic dense LFM2")
    ap.add_argument("--target", help="target checkpoint directory instead of the --model preset")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=3, help="number of 16-token prompts, decoded one after another")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    ap.add_argument("--kmax", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="threads for the C++ ops (default 1)")
    ap.add_argument("--quick", action="store_true", help="fewer drafts and k values")
    ap.add_argument("--out", help="JSON path (default analysis/out/specdecode_sweep_{model}.json)")
    ap.add_argument("--figures", default=os.path.join(HERE, "figures"))
    ap.add_argument("--plot-only", action="store_true", help="redraw figures and tables from --out")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join(HERE, "out", f"specdecode_sweep_{args.model}.json")
    if args.plot_only:
        with open(args.out) as f:
            res = json.load(f)
    else:
        t0 = time.perf_counter()
        res = run(args)
        res["sweep_seconds"] = time.perf_counter() - t0
        write_json_atomic(args.out, res)
        log(f"wrote {args.out} after {res['sweep_seconds']:.0f} s")
    for p in plot(res, args.figures, res.get("model", args.model)):
        log(f"wrote {p}")
    print(tables(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
