"""Sweeps of speculative decoding: draft choice, k = 1..8 (and longer for drafts that always
agree), confidence threshold, tree width, greedy vs sampling, plus the costs that explain them
(draft step, one verification forward of T tokens).

Three targets: `moe` = the built-in synthetic LFM2-8B-A1B-shaped model (78M parameters, 32 experts,
top-4), `dense` = a synthetic dense LFM2 of 271M parameters whose decode step is bound by
reading the weights (written once to the lfm2engine cache), and `tiny` = the shipped trained
LFM2-MoE (3.4M parameters, 8 experts, top-2) with its trained dense draft `tiny-draft` among the
drafts and prompts taken from the held-out KJV text (the "trained pair" of analysis/specdecode.md). Every speed-up is a ratio against
plain decoding of the same target in the same process, the two alternating (median of --repeats
pairs); greedy runs are also checked token for token against plain decoding. The ops run on one
thread by default: on a shared 2-core machine, OpenMP barriers of two threads are at the mercy of
other jobs, one thread is not. Writes analysis/out/specdecode_sweep_{model}.json (atomically);
analysis/specdecode_figures.py draws the figures and tables from it, analysis/specdecode.md
discusses them. Asserts nothing on time.

    python benchmarks/bench_specdecode.py --model moe          # ~20 min on 2 cores (1167 s last time)
    python benchmarks/bench_specdecode.py --model dense --prompts 1 --max-new-tokens 40   # ~52 min (3098 s)
    python benchmarks/bench_specdecode.py --model moe --quick  # fewer drafts and k values
    python benchmarks/bench_specdecode.py --model tiny --quick # the trained pair (~10 min on 2 busy cores)

While a sweep runs, the JSON is rewritten after every configuration with "partial": true; the
final write drops that key. A partial JSON (an interrupted sweep) still plots.
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
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import cpu_model  # noqa: E402

from lfm2engine.checkpoint import atomic_writer, write_pruned_checkpoint  # noqa: E402
from lfm2engine.specdecode import calibration_sequence, draft_agreement, forward_timer, measure, skip_order  # noqa: E402


def _median(xs):
    return float(np.median(xs)) if xs else float("nan")


def paired_ratio(num, den, n=15):
    """Alternate two timers n times: (median of num, median of den, median of the per-pair ratios).
    Pairs taken close in time share the machine's load, so the ratio is steadier than the times."""
    a, b = [], []
    for _ in range(n):
        a.append(num())
        b.append(den())
    return _median(a), _median(b), _median([x / y for x, y in zip(a, b)])


def log(msg):
    print(f"[bench_specdecode] {msg}", file=sys.stderr, flush=True)


def write_json_atomic(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # the benchmark's own output folder
    with atomic_writer(path, "w") as f:
        json.dump(obj, f, indent=1)


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


TRAINED = "trained tiny-draft"


def text_prompts(n):
    """n prompts of BOS + the first 15 tokens of held-out KJV verses, spread over the split."""
    from lfm2engine.models import held_out_text, shipped_dir
    from lfm2engine.tokenizer import load_tokenizer

    tok = load_tokenizer(shipped_dir("tiny"))
    with open(held_out_text(), encoding="utf-8") as f:
        verses = [v for v in f.read().splitlines() if len(v) > 80]
    return [[1] + tok.encode(v)[:15] for v in verses[:: max(1, len(verses) // n)][:n]]


def build_drafts(target, tdir, workdir, quick, trained=False):
    from lfm2engine import Engine

    drafts = []  # (name, engine, kind)
    if trained:
        drafts.append((TRAINED, Engine.from_pretrained("tiny-draft"), "trained checkpoint"))
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
    if not quick or trained:  # always agrees: the verification costs inside the runs come from it
        drafts.append(("target itself", target, "upper bound"))
    n_prune = min(8, n_max)
    pruned = write_pruned_checkpoint(tdir, order[:n_prune], os.path.join(workdir, "pruned"))
    drafts.append((f"pruned ckpt (-{n_prune} layers)", Engine.from_pretrained(pruned), "separate checkpoint"))
    dense = random_dense_draft(target.config, os.path.join(workdir, "dense_random"))
    drafts.append(("random dense ckpt", Engine.from_pretrained(dense), "separate checkpoint"))
    return drafts, order


def run(args):
    from lfm2engine import Engine, _core
    from lfm2engine.synthetic import default_model_dir

    from lfm2engine.models import shipped_dir

    trained = args.model == "tiny"
    tdir = args.target or {"dense": dense_target_dir, "tiny": lambda: shipped_dir("tiny")}.get(
        args.model, lambda: default_model_dir("default"))()
    target = Engine.from_pretrained(tdir, num_threads=args.threads)  # the drafts run with the same threads
    cfg = target.config
    rng = np.random.default_rng(100)
    prompts = [[cfg.bos_token_id or 1] + rng.integers(2, cfg.vocab_size, 15).tolist() for _ in range(args.prompts)]
    if trained:  # a trained model: real text, as it would be used
        prompts = text_prompts(args.prompts)
    n_new, reps = args.max_new_tokens, args.repeats
    ks = list(range(1, args.kmax + 1)) if not args.quick else [1, 2, 4, 8]
    cpu = cpu_model() or platform.processor() or platform.machine()
    res = {"machine": {"python": platform.python_version(), "cpu": cpu, "cores": os.cpu_count(),
                       "threads": args.threads, "simd": _core.simd_level(),
                       "date": time.strftime("%Y-%m-%dT%H:%M:%S")},
           "model": args.model, "target": tdir,
           "config": {"model_type": cfg.model_type, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                      "vocab": cfg.vocab_size, "experts": cfg.num_experts, "top_k": cfg.num_experts_per_tok},
           "prompts": prompts, "max_new_tokens": n_new, "repeats": reps}
    with tempfile.TemporaryDirectory() as work:
        drafts, order = build_drafts(target, tdir, work, args.quick, trained)
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
        focus = [best, mid] + ([TRAINED] if trained else [])
        # ---- dynamic draft length: confidence threshold at the largest k
        for name in dict.fromkeys(focus):
            for thr in (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99):
                rep = measure(target, by_name[name], prompts, n_new, max(ks), thr, repeats=reps)
                rec(name, rep, sweep="threshold")
        # ---- tree verification
        for name in dict.fromkeys(focus):
            for k in (2, 4):
                for w in (1, 2, 3, 4):
                    rep = measure(target, by_name[name], prompts, n_new, k, width=w, repeats=reps)
                    rec(name, rep, sweep="tree")
        # ---- sampling at temperature 1
        for name in dict.fromkeys(focus):
            for k in ks:
                rep = measure(target, by_name[name], prompts, n_new, k, temperature=1.0, seed=3, repeats=reps)
                rec(name, rep, sweep="sampling")
    res["runs"] = runs
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="moe", choices=("moe", "dense", "tiny"),
                    help="moe: the built-in synthetic MoE; dense: a 271M-parameter synthetic dense LFM2; "
                         "tiny: the shipped trained pair (tiny + tiny-draft) on held-out text")
    ap.add_argument("--target", help="target checkpoint directory instead of the --model preset")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=3, help="number of 16-token prompts, decoded one after another")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    ap.add_argument("--kmax", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="threads for the C++ ops (default 1)")
    ap.add_argument("--quick", action="store_true", help="fewer drafts and k values")
    ap.add_argument("--out", help="JSON path (default analysis/out/specdecode_sweep_{model}.json)")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join(ROOT, "analysis", "out", f"specdecode_sweep_{args.model}.json")
    t0 = time.perf_counter()
    res = run(args)
    res["sweep_seconds"] = time.perf_counter() - t0
    write_json_atomic(args.out, res)
    log(f"wrote {args.out} after {res['sweep_seconds']:.0f} s; figures and tables: "
        f"python analysis/specdecode_figures.py --json {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
