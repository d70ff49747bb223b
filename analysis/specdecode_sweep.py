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

    python analysis/specdecode_sweep.py --model moe          # ~20 min on 2 cores (1167 s last time)
    python analysis/specdecode_sweep.py --model dense --prompts 1 --max-new-tokens 40   # ~52 min (3098 s)
    python analysis/specdecode_sweep.py --model moe --quick  # fewer drafts and k values
    python analysis/specdecode_sweep.py --model moe --plot-only   # redraw figures, print tables

While a sweep runs, the JSON is rewritten after every configuration with "partial": true; the
final write drops that key. A partial JSON (an interrupted sweep) still plots; the figures of the
sweeps it lacks are left as they are, and --plot-only says which.
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
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

from common import cpu_model  # noqa: E402

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
    cpu = cpu_model() or platform.processor() or platform.machine()
    res = {"machine": {"python": platform.python_version(), "cpu": cpu, "cores": os.cpu_count(),
                       "threads": args.threads, "simd": _core_cpu().simd_level(),
                       "date": time.strftime("%Y-%m-%dT%H:%M:%S")},
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


def in_run_verify(res):
    """v(T) for T = k + 1 in plain steps, measured inside the runs at each k of the sweep (the
    isolated timing as a fallback): with it the model has no free parameter besides alpha at k = 1."""
    runs, vst = res["runs"], res["verify_steps"]
    ks = sorted({r["k"] for r in runs if r["sweep"] in ("k", "long-k")})
    v_in = {str(k + 1): run_verify_steps(runs, k) for k in ks}
    return {t: (v if v == v else vst.get(t, float("nan"))) for t, v in v_in.items()}


def model_speedup(res, name, alpha, k, v_in):
    """The model's speed-up of draft `name` at k (k capped by the generation length)."""
    return predicted_speedup(alpha, min(k, res["max_new_tokens"] - 1), run_cost_ratio(res["runs"], name), v_in)


SWEEPS = ("k", "long-k", "threshold", "tree", "sampling")  # in the order run() does them


def run_verify_points(runs):
    """(k, mean tokens per verification, cost in plain steps) for each k of the chain runs whose
    draft always agrees: the cost of verifying T tokens inside real rounds. The last round of each
    prompt is shorter (the draft length is capped by the tokens still to generate), so the mean T
    of a run at k is below k + 1."""
    out = []
    for k in sorted({r["k"] for r in runs if r["sweep"] in ("k", "long-k")}):
        rs = [r for r in runs if r["sweep"] in ("k", "long-k") and r["k"] == k and r["acceptance_rate"] > 0.95
              and r["target_calls"]]
        if rs:
            out.append((k, _median([1 + r["drafted"] / r["target_calls"] for r in rs]), run_verify_steps(runs, k)))
    return out


def plot(res, fig_dir, tag):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    os.makedirs(fig_dir, exist_ok=True)
    runs, drafts = res["runs"], res["drafts"]
    step, vms, vst = res["target_step_ms"], res["verify_ms"], res["verify_steps"]
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
        if res.get("partial"):
            have = {r["sweep"] for r in res["runs"]}
            log(f"{args.out} is partial (the sweep stopped early); missing sweeps: "
                f"{', '.join(w for w in SWEEPS if w not in have) or 'none'}; their figures are not redrawn")
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
