"""`python -m lfm2engine.specdecode` (console script `lfm2-specdecode`): the command line.

Loads the target and the drafts (checkpoints and self-drafts), runs every configuration of the
grid (drafts x k x threshold x tree width) timed against plain decoding, and prints a table or
JSON (docs/specdecode.md). Bad input: `InputError: message` on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from .. import log
from ..cli import add_dtype_flag, at_least, parse_list, resolve_prompt
from ..errors import InputError
from ..models import model_dir, side_dir
from .decoder import SpeculativeDecoder, check_compatible
from .measure import forward_ms, measure
from .selfdraft import make_self_draft

DEFAULT_SELF_DRAFT = "dtype=float16"  # measured best on the built-in model (analysis/specdecode.md)
DEFAULT_K = 16


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lfm2engine.specdecode",
        description="Speculative decoding: a cheap draft proposes k tokens, the target verifies them in one "
                    "forward pass. Output is exactly the target's (greedy) or distributed as the target's "
                    "(sampling). Reports acceptance and the speed-up over plain decoding measured in the same run. "
                    "Lists (-k 1-8, --threshold 0,0.5, repeated --draft/--self-draft) run a sweep.")
    ap.add_argument("--target", help="target checkpoint directory or shipped model name, e.g. tiny "
                                     "(default: the built-in synthetic model)")
    ap.add_argument("--draft", action="append", default=[], metavar="DIR",
                    help="draft checkpoint (directory or shipped name, e.g. tiny-draft for --target tiny) sharing "
                         "the target's vocabulary (e.g. LFM2-350M for LFM2-8B-A1B); "
                         "repeat to compare drafts")
    ap.add_argument("--self-draft", action="append", default=[], metavar="SPEC",
                    help="draft made from the target itself, items joined by '+': topk=N (fewer experts), "
                         "skip=2,5,7-9 or skip=auto:N (bypass layers; auto picks them by calibration), "
                         "dtype=bfloat16 or dtype=q4_0 (reduced-precision or quantized copy). Repeatable. "
                         f"Default: {DEFAULT_SELF_DRAFT}")
    ap.add_argument("-k", default=str(DEFAULT_K), metavar="N",
                    help=f"max draft tokens per round (default {DEFAULT_K}); a list or range sweeps: 1-8, 1,2,4")
    ap.add_argument("--threshold", default="0",
                    help="stop drafting after a token whose draft probability is below this (dynamic draft "
                         "length; default 0 = always k); a list sweeps: 0,0.3,0.6")
    ap.add_argument("--tree-width", default="1", metavar="W",
                    help="candidates per drafted position: 1 = chain; W > 1 = tree verification of the chain plus "
                         "W-1 alternatives per depth in one pass (default 1); a list sweeps")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt", help="prompt text (needs tokenizer.json in the target directory)")
    ap.add_argument("--prompt-ids", help="prompt as comma-separated token ids (default: 16 fixed random ids)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    mode.add_argument("--temperature", type=float, default=0.0, help="> 0: sampling with rejection verification")
    ap.add_argument("--top-k", type=int, default=0, help="sampling: keep the k most likely tokens")
    ap.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus mass")
    ap.add_argument("--seed", type=int, default=0)
    add_dtype_flag(ap)
    ap.add_argument("--threads", type=int, default=None, help="threads for the C++ ops (default: all cores)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs per configuration, alternating with plain decoding; medians are reported "
                         "(default 3)")
    ap.add_argument("--stop-at-eos", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    ap.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    return ap


def _check_args(args) -> None:
    at_least("--max-new-tokens", args.max_new_tokens, 1)
    at_least("--repeats", args.repeats, 1)
    at_least("--threads", args.threads, 1, " (leave it out for the default)")
    at_least("--temperature", args.temperature, 0)


def _same_tokenizer(target_dir: str, draft_dir: str) -> None:
    a, b = (os.path.join(side_dir(d), "tokenizer.json") for d in (target_dir, draft_dir))
    if os.path.isfile(a) and os.path.isfile(b):
        from ..tokenizer import Tokenizer

        if Tokenizer(a).tok.get_vocab() != Tokenizer(b).tok.get_vocab():
            raise InputError(f"{draft_dir}/tokenizer.json differs from the target's {target_dir}/tokenizer.json: "
                             "the draft must share the target's vocabulary")


def _main(args) -> int:
    from .. import Engine

    log.configure(0, 1, 0 if args.quiet else 1)
    int_syntax = "an integer, a list 1,2,4 or a range 1-8"
    ks = parse_list(args.k, "-k", ranges=True, low=1, expected=int_syntax, meaning="draft tokens per round")
    thresholds = parse_list(args.threshold, "--threshold", float, low=0.0, high=1.0,
                            expected="a number or a list 0,0.3,0.6")
    widths = parse_list(args.tree_width, "--tree-width", ranges=True, low=1, expected=int_syntax)
    _check_args(args)
    if args.target:
        tdir = model_dir(args.target, "--target")
    else:
        from ..synthetic import default_model_dir

        tdir = default_model_dir("default", verbose=not args.quiet)
    draft_dirs = [model_dir(d, "--draft") for d in args.draft]
    t0 = time.perf_counter()
    target = Engine.from_pretrained(tdir, dtype=args.dtype, num_threads=args.threads)
    log.info(f"target {tdir} ({target.config.model_type}, {target.config.num_hidden_layers} layers, "
             f"V={target.config.vocab_size}, {target.dtype_description}) loaded in {time.perf_counter() - t0:.2f} s")
    v = target.config.vocab_size
    fixed = np.random.default_rng(0).integers(min(2, v - 1), v, 16).tolist()  # without a prompt: 16 fixed ids
    prompt, tok = resolve_prompt(args.prompt, args.prompt_ids, tdir, target.config.bos_token_id, default=fixed)
    target.check_prompts([prompt], args.max_new_tokens)

    drafts = []  # (description, engine)
    for name, d in zip(args.draft, draft_dirs):
        _same_tokenizer(tdir, d)
        eng = Engine.from_pretrained(d, dtype=args.dtype, num_threads=args.threads)
        check_compatible(target, eng)
        drafts.append((f"ckpt:{name}", eng))
    specs = list(args.self_draft) or ([] if args.draft else [DEFAULT_SELF_DRAFT])
    for spec in specs:
        t1 = time.perf_counter()
        eng, desc = make_self_draft(target, spec, tdir, args.threads, verbose=not args.quiet)
        log.info(f"draft {desc} ready in {time.perf_counter() - t1:.2f} s")
        drafts.append((desc, eng))

    temp = 0.0 if args.greedy else args.temperature
    samp = {"temperature": temp, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    if temp > 0:  # validate the sampling arguments once, before any timing
        SpeculativeDecoder(target, drafts[0][1], 1, **samp)
    runs = []
    grid = [(d, k, th, w) for d in drafts for k in ks for th in thresholds for w in widths]
    log.info(f"{len(grid)} configuration(s), each timed against plain decoding of the target "
             f"({args.repeats} alternating run(s) of {args.max_new_tokens} tokens after a {len(prompt)}-token prompt)")
    for n, ((desc, eng), k, th, w) in enumerate(grid):
        rep = measure(target, eng, [prompt], args.max_new_tokens, k, th, w, repeats=args.repeats,
                      stop_at_eos=args.stop_at_eos, **samp)
        rep["draft"] = desc
        rep["draft_step_ms"] = forward_ms(eng, prompt)
        runs.append(rep)
        lossless = "" if temp > 0 else ("  identical to plain" if rep["matches_plain"] else "  MISMATCH")
        log.info(f"[{n + 1}/{len(grid)}] {desc} k={k} thr={th:g} W={w}: acceptance {rep['acceptance_rate']:.2f}, "
                 f"{rep['tokens_per_round']:.2f} tokens/round, {rep['spec_ms_per_token']:.2f} ms/token "
                 f"(plain {rep['plain_ms_per_token']:.2f}), speed-up {rep['speedup']:.2f}x{lossless}")
    best = max(runs, key=lambda r: r["speedup"])
    summary = dict(best)
    summary.update(target=tdir, dtype=target.dtype, prompt_ids=list(map(int, prompt)),
                   max_new_tokens=args.max_new_tokens, target_step_ms=forward_ms(target, prompt))
    if tok is not None:
        summary["text"] = tok.decode(best["tokens"])
    if len(runs) > 1:
        summary["sweep"] = [{k: v for k, v in r.items() if k not in ("tokens", "plain_tokens")} for r in runs]
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        _print_table(runs, temp > 0)
        if tok is not None:
            print(summary["text"], flush=True)
        else:
            print("tokens: " + " ".join(map(str, best["tokens"])), flush=True)
    if temp == 0 and not all(r["matches_plain"] for r in runs):  # pragma: no cover - would be a bug
        log.error("speculative greedy output differs from plain greedy decoding")
        return 1
    return 0


def _print_table(runs, sampling: bool) -> None:
    head = f"{'draft':<28} {'k':>2} {'thr':>4} {'W':>2} {'accept':>6} {'tok/rnd':>7} {'rollbk':>6} " \
           f"{'ms/tok':>7} {'plain':>7} {'speedup':>7}  histogram"
    print(head)
    for r in runs:
        print(f"{r['draft'][:28]:<28} {r['k']:>2} {r['threshold']:>4.2g} {r['width']:>2} {r['acceptance_rate']:>6.2f} "
              f"{r['tokens_per_round']:>7.2f} {r['rollbacks']:>6} {r['spec_ms_per_token']:>7.2f} "
              f"{r['plain_ms_per_token']:>7.2f} {r['speedup']:>6.2f}x  {r['histogram']}")
    if not sampling:
        same = all(r["matches_plain"] for r in runs)
        print("greedy output identical to plain decoding: " + ("yes" if same else "NO"))


def main(argv=None) -> int:
    from ..parallel import run_guarded

    args = build_parser().parse_args(argv)
    return run_guarded(lambda comm: _main(args))
