"""Quality of the numeric modes on the shipped trained models: held-out perplexity and top-1 flips.

For `tiny` and `tiny-draft`, over the held-out KJV split (windows of --ctx tokens, stride ctx/2,
BOS first, as `python -m lfm2engine.perplexity`): perplexity in fp32 (exact), bf16 weights
(fp32 compute), f16 weights, and the bf16 dot mode (bf16-rounded activations and vdpbf16ps; only
where the CPU has AVX512_BF16, recorded as unavailable otherwise); for each non-fp32 mode, the
fraction of scored positions whose top-1 token differs from fp32's and the largest |Δ logit|.
Writes analysis/out/quality.json (atomically) and prints the markdown table of analysis/quality.md.

    python benchmarks/bench_quality.py              # whole held-out split (~57k tokens)
    python benchmarks/bench_quality.py --max-tokens 4000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from lfm2engine import Engine, _core  # noqa: E402
from lfm2engine.checkpoint import atomic_writer  # noqa: E402
from lfm2engine.models import held_out_text, shipped_dir  # noqa: E402
from lfm2engine.perplexity import all_logits, text_sequences, token_nll  # noqa: E402
from lfm2engine.tokenizer import load_tokenizer  # noqa: E402

MODES = (("fp32", "float32", False), ("bf16", "bfloat16", False), ("f16", "float16", False),
         ("bf16 dot", "bfloat16", True))


def compare_modes(engines, seqs, first, batch_size):
    """Run every mode on the same windows, a batch at a time (the bf16 dot mode is a global switch,
    set around its calls). Returns per mode: NLL sum, scored count, top-1 flips vs the first mode,
    max |Δ logit| vs the first mode, seconds."""
    acc = {m: {"nll_sum": 0.0, "scored": 0, "flips": 0, "max_abs": 0.0, "seconds": 0.0} for m in engines}
    for a in range(0, len(seqs), batch_size):
        part, f = seqs[a:a + batch_size], first[a:a + batch_size]
        ref = None
        for mode, (eng, dot) in engines.items():
            _core.set_bf16_dot(dot)
            try:
                t0 = time.perf_counter()
                got = [(x, lg) for x, lg in all_logits(eng, part, batch_size)]
                acc[mode]["seconds"] += time.perf_counter() - t0
            finally:
                _core.set_bf16_dot(False)
            lg = np.concatenate([g[fj - 1:len(x) - 1] for (x, g), fj in zip(got, f)])
            tg = np.concatenate([x[fj:] for (x, _), fj in zip(got, f)])
            r = acc[mode]
            r["nll_sum"] += float(token_nll(lg, tg).sum())
            r["scored"] += len(tg)
            if ref is None:
                ref = lg
            else:
                r["flips"] += int((lg.argmax(1) != ref.argmax(1)).sum())
                r["max_abs"] = max(r["max_abs"], float(np.abs(lg - ref).max()))
    return acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(ROOT, "analysis", "out", "quality.json"))
    args = ap.parse_args(argv)
    bf16_dot_ok = "avx512bf16" in _core.cpu_features()
    with open(held_out_text(), encoding="utf-8") as f:
        text = f.read()
    res = {"ctx": args.ctx, "stride": args.ctx // 2, "simd": _core.simd_level(), "bf16_dot_available": bf16_dot_ok,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "models": {}}
    lines = ["| model | mode | perplexity | Δ vs fp32 | mean NLL | top-1 ≠ fp32 | max abs Δ logit |",
             "|---|---|---|---|---|---|---|"]
    for name in ("tiny", "tiny-draft"):
        ids = load_tokenizer(shipped_dir(name)).encode(text)[:args.max_tokens]
        out = res["models"][name] = {"tokens": len(ids)}
        engines = {}
        for mode, dtype, dot in MODES:
            if dot and not bf16_dot_ok:
                out[mode] = {"available": False}
                continue
            engines[mode] = (Engine.from_pretrained(name, dtype=dtype, num_threads=args.threads), dot)
        bos = engines["fp32"][0].config.bos_token_id
        seqs, first = text_sequences(ids, args.ctx, args.ctx // 2, bos)
        acc = compare_modes(engines, seqs, first, args.batch_size)
        base = None
        for mode, _, _ in MODES:
            if mode not in acc:
                lines.append(f"| {name} | {mode} | n/a: this CPU has no AVX512_BF16 | | | | |")
                continue
            a = acc[mode]
            nll = a["nll_sum"] / a["scored"]
            r = out[mode] = {"perplexity": float(np.exp(nll)), "nll": nll, "scored": a["scored"],
                             "seconds": a["seconds"]}
            if base is None:
                base = r
                lines.append(f"| {name} | {mode} | {r['perplexity']:.4f} | | {nll:.5f} | | |")
                continue
            r.update(delta_perplexity_rel=r["perplexity"] / base["perplexity"] - 1,
                     top1_flips=a["flips"] / a["scored"], max_abs_logit_delta=a["max_abs"])
            lines.append(f"| {name} | {mode} | {r['perplexity']:.4f} | {100 * r['delta_perplexity_rel']:+.4f} % | "
                         f"{nll:.5f} | {100 * r['top1_flips']:.3f} % | {r['max_abs_logit_delta']:.3g} |")
        print(f"[bench_quality] {name}: " + ", ".join(f"{m} {out[m]['perplexity']:.4f}" for m in acc),
              file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with atomic_writer(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
