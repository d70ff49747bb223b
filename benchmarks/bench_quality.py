"""Quality of the numeric modes and weight types: held-out perplexity, top-1 flips, KL, workload agreement.

Part 1 (perplexity; `tiny` and `tiny-draft`, the shipped trained models): over the held-out KJV split
(windows of --ctx tokens, stride ctx/2, BOS first, as `python -m lfm2engine.perplexity`), perplexity
in every mode of MODES:
  * fp32 (exact); bf16 / f16 weights (fp32 compute); the bf16 dot mode (bf16-rounded activations;
    needs AVX512_BF16);
  * the block-quantized weight types q8_0 / q4_0 / q4_k (quantized on load) and q4_k_m (a GGUF
    written by `python -m lfm2engine.quantize`), each also in the fast mode with int8 activations
    (`_core.set_quant_dot`);
  * the oracle rows "q8_0 ref" / "q4_0 ref" / "q4_k ref": the fp32 engine on a checkpoint holding
    dequantize(quantize(W)) of the tensors an engine quantizes on load (what the exact mode must
    equal: bit for bit by its definition, docs/ARCHITECTURE.md; needs no quantized kernel).
For each non-fp32 mode: the change of perplexity, the share of scored positions whose top-1 token
differs from fp32's, the mean KL divergence KL(fp32 || mode) of the next-token distributions, and
the largest |Δ logit|. A mode the model cannot take (q4_k needs row widths that are multiples of
256; tiny's hidden size is 128) or this build/CPU lacks is a row saying why.

Part 2 (workload; the built-in `default` synthetic model, LFM2-8B-A1B's structure at small width, and
its course workload from `lfm2engine.workload.default_workload`: 32 prompts × 16 tokens): the
last-position next-token distribution of every mode against the bf16 engine: top-1 agreement, mean
and max KL(bf16 || mode), max |Δ logit|. `--workload-models` adds more (e.g. tiny).

Part 3 (weight error; the trained models): the relative RMS error of dequantize(quantize(W)) per
block type, q4_k and q6_k included (their rows regrouped to 256: see weight_error_part).

Writes analysis/out/quality.json (atomically) and prints the markdown tables of analysis/quality.md.

    python benchmarks/bench_quality.py              # whole held-out split (~57k tokens)
    python benchmarks/bench_quality.py --max-tokens 4000 --modes fp32,bf16,q8_0,q4_0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from lfm2engine import Engine, _core  # noqa: E402
from lfm2engine.checkpoint import atomic_writer  # noqa: E402
from lfm2engine.cli import parse_list  # noqa: E402
from lfm2engine.errors import LFM2Error  # noqa: E402
from lfm2engine.models import held_out_text, shipped_dir  # noqa: E402
from lfm2engine.perplexity import all_logits, text_sequences, token_nll  # noqa: E402
from lfm2engine.synthetic import default_model_dir  # noqa: E402
from lfm2engine.tokenizer import load_tokenizer  # noqa: E402
from lfm2engine.workload import default_workload, read_inputs  # noqa: E402

# label -> (weights: a load dtype, or "gguf:TYPE" for a file our quantize CLI writes; global switch)
MODES = {
    "fp32": ("float32", None), "bf16": ("bfloat16", None), "f16": ("float16", None),
    "bf16 dot": ("bfloat16", "bf16_dot"),
    "q8_0": ("q8_0", None), "q4_0": ("q4_0", None), "q4_k": ("q4_k", None), "q4_k_m": ("gguf:q4_k_m", None),
    "q8_0 fast": ("q8_0", "quant_dot"), "q4_0 fast": ("q4_0", "quant_dot"), "q4_k fast": ("q4_k", "quant_dot"),
    "q4_k_m fast": ("gguf:q4_k_m", "quant_dot"),
    # the oracle: the fp32 engine on dequantize(quantize(W)) of the same matrices (what the exact
    # mode must equal within fp32 rounding; runs without the quantized kernels)
    "q8_0 ref": ("ref:q8_0", None), "q4_0 ref": ("ref:q4_0", None), "q4_k ref": ("ref:q4_k", None),
}


@contextmanager
def switch(name):
    """The global numerics switch of a mode (bf16 dot or quantized-activation dot), on for the block."""
    setter = getattr(_core, f"set_{name}") if name else None
    if setter:
        setter(True)
    try:
        yield
    finally:
        if setter:
            setter(False)


def switch_problem(name) -> str | None:
    if name == "bf16_dot" and "avx512bf16" not in _core.cpu_features():
        return "this CPU has no AVX512_BF16"
    if name and not hasattr(_core, f"set_{name}"):
        return f"this build has no _core.set_{name}"
    return None


def load_modes(model: str, labels, threads, tmp: str) -> tuple[dict, dict]:
    """{label: (engine, switch)} for the modes this model/build/CPU can run, {label: why not} for
    the others. Engines are shared between modes with the same weights."""
    engines, loaded, missing = {}, {}, {}
    for label in labels:
        weights, sw = MODES[label]
        why = switch_problem(sw)
        if why is None and weights not in loaded:
            try:
                loaded[weights] = load(model, weights, threads, tmp)
            except (LFM2Error, subprocess.CalledProcessError) as e:
                loaded[weights] = f"{type(e).__name__}: {e}".splitlines()[0]
        why = why or (loaded[weights] if isinstance(loaded[weights], str) else None)
        if why:
            missing[label] = why
        else:
            engines[label] = (loaded[weights], sw)
    return engines, missing


def quantized_copy(model: str, qtype: str, out: str) -> str:
    """A float32 checkpoint holding dequantize(quantize(W, qtype)) for every tensor an engine
    quantizes on load (`weights.is_projection`: projections, experts, embedding / tied head);
    norms, conv taps, the router and expert_bias unchanged. InputError (from quant.quantize) where
    a row width is not a whole number of blocks."""
    from lfm2engine.checkpoint import Checkpoint, save_pretrained
    from lfm2engine.quant import dequantize, quantize
    from lfm2engine.weights import is_projection

    ck = Checkpoint(model)

    def tensor(name):
        a = np.array(ck.f32(name))
        return dequantize(quantize(a, qtype)).reshape(a.shape) if is_projection(name) else a

    save_pretrained(ck.config, tensor, out, dtype="F32")
    return out


def load(model: str, weights: str, threads, tmp: str) -> Engine:
    if weights.startswith("ref:"):
        out = os.path.join(tmp, f"{os.path.basename(model)}-{weights[4:]}-ref")
        return Engine.from_pretrained(quantized_copy(model, weights[4:], out), num_threads=threads)
    if weights.startswith("gguf:"):
        out = os.path.join(tmp, f"{os.path.basename(model)}-{weights[5:]}.gguf")
        if not os.path.exists(out):
            r = subprocess.run([sys.executable, "-m", "lfm2engine.quantize", model, out, "--dtype", weights[5:]],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise LFM2Error((r.stderr.strip().splitlines() or [f"quantize exited {r.returncode}"])[-1])
        return Engine.from_pretrained(out, dtype="auto", num_threads=threads)
    return Engine.from_pretrained(model, dtype=weights, num_threads=threads)


def kl(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(got)) per row, in float64 (nats)."""
    a, b = ref.astype(np.float64), got.astype(np.float64)
    la = a - a.max(1, keepdims=True)
    la -= np.log(np.exp(la).sum(1, keepdims=True))
    lb = b - b.max(1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(1, keepdims=True))
    return (np.exp(la) * (la - lb)).sum(1)


def compare_modes(engines, seqs, first, batch_size):
    """Run every mode on the same windows, a batch at a time (switches set around their calls).
    Returns per mode: NLL sum, scored count, top-1 flips / KL sum / max |Δ logit| vs the first mode,
    seconds."""
    acc = {m: {"nll_sum": 0.0, "scored": 0, "flips": 0, "kl_sum": 0.0, "max_abs": 0.0, "seconds": 0.0}
           for m in engines}
    for a in range(0, len(seqs), batch_size):
        part, f = seqs[a:a + batch_size], first[a:a + batch_size]
        ref = None
        for mode, (eng, sw) in engines.items():
            with switch(sw):
                t0 = time.perf_counter()
                got = [(x, lg) for x, lg in all_logits(eng, part, batch_size)]
                acc[mode]["seconds"] += time.perf_counter() - t0
            lg = np.concatenate([g[fj - 1:len(x) - 1] for (x, g), fj in zip(got, f)])
            tg = np.concatenate([x[fj:] for (x, _), fj in zip(got, f)])
            r = acc[mode]
            r["nll_sum"] += float(token_nll(lg, tg).sum())
            r["scored"] += len(tg)
            if ref is None:
                ref = lg
            else:
                r["flips"] += int((lg.argmax(1) != ref.argmax(1)).sum())
                r["kl_sum"] += float(kl(ref, lg).sum())
                r["max_abs"] = max(r["max_abs"], float(np.abs(lg - ref).max()))
    return acc


def perplexity_part(names, labels, args, tmp, text) -> tuple[dict, list[str]]:
    out_all = {}
    lines = ["| model | mode | perplexity | Δ vs fp32 | mean NLL | top-1 ≠ fp32 | mean KL vs fp32 "
             "| max abs Δ logit |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        ids = load_tokenizer(shipped_dir(name)).encode(text)[:args.max_tokens]
        out = out_all[name] = {"tokens": len(ids)}
        order = ["fp32"] + [m for m in labels if m != "fp32"]
        engines, missing = load_modes(shipped_dir(name), order, args.threads, tmp)
        bos = engines["fp32"][0].config.bos_token_id
        seqs, first = text_sequences(ids, args.ctx, args.ctx // 2, bos)
        acc = compare_modes(engines, seqs, first, args.batch_size)
        base = None
        for mode in order:
            if mode in missing:
                out[mode] = {"available": False, "reason": missing[mode]}
                lines.append(f"| {name} | {mode} | n/a: {missing[mode]} | | | | | |")
                continue
            a = acc[mode]
            nll = a["nll_sum"] / a["scored"]
            r = out[mode] = {"perplexity": float(np.exp(nll)), "nll": nll, "scored": a["scored"],
                             "seconds": a["seconds"]}
            if base is None:
                base = r
                lines.append(f"| {name} | {mode} | {r['perplexity']:.4f} | | {nll:.5f} | | | |")
                continue
            r.update(delta_perplexity_rel=r["perplexity"] / base["perplexity"] - 1, top1_flips=a["flips"] / a["scored"],
                     mean_kl=a["kl_sum"] / a["scored"], max_abs_logit_delta=a["max_abs"])
            lines.append(f"| {name} | {mode} | {r['perplexity']:.4f} | {100 * r['delta_perplexity_rel']:+.4f} % | "
                         f"{nll:.5f} | {100 * r['top1_flips']:.3f} % | {r['mean_kl']:.2e} | "
                         f"{r['max_abs_logit_delta']:.3g} |")
        print(f"[bench_quality] {name}: " + ", ".join(f"{m} {out[m]['perplexity']:.4f}" for m in acc),
              file=sys.stderr, flush=True)
    return out_all, lines


def workload_part(models, labels, args, tmp) -> tuple[dict, list[str]]:
    out_all = {}
    lines = ["| model | mode | top-1 = bf16 | mean KL vs bf16 | max KL | max abs Δ logit |",
             "|---|---|---|---|---|---|"]
    for model in models:
        path = default_model_dir("default") if model == "default" else shipped_dir(model)
        ids = read_inputs(default_workload(path)[0])
        order = ["bf16"] + [m for m in labels if m != "bf16"]
        engines, missing = load_modes(path, order, args.threads, tmp)
        out = out_all[model] = {"prompts": int(ids.shape[0]), "seq_len": int(ids.shape[1])}
        ref = None
        for mode in order:
            if mode in missing:
                out[mode] = {"available": False, "reason": missing[mode]}
                lines.append(f"| {model} | {mode} | n/a: {missing[mode]} | | | |")
                continue
            eng, sw = engines[mode]
            with switch(sw):
                lg = eng.logits(list(ids))
            if ref is None:
                ref = lg
                lines.append(f"| {model} | bf16 (reference) | | | | |")
                continue
            k = kl(ref, lg)
            r = out[mode] = {"top1_agreement": float((lg.argmax(1) == ref.argmax(1)).mean()),
                             "mean_kl": float(k.mean()), "max_kl": float(k.max()),
                             "max_abs_logit_delta": float(np.abs(lg - ref).max())}
            lines.append(f"| {model} | {mode} | {100 * r['top1_agreement']:.1f} % | {r['mean_kl']:.2e} | "
                         f"{r['max_kl']:.2e} | {r['max_abs_logit_delta']:.3g} |")
    return out_all, lines


def weight_error_part(names) -> tuple[dict, list[str]]:
    """Relative RMS error ||dequantize(quantize(W)) - W|| / ||W|| over every tensor an engine
    quantizes, per block type, on the trained weights. Each tensor's values are cut into rows of
    256 in storage order, so the k-quants are measured too on models whose widths they cannot
    take (32-weight groups are the real ones wherever K is a multiple of 32; only which groups
    share a super-block scale differs)."""
    from lfm2engine.checkpoint import Checkpoint
    from lfm2engine.quant import QUANT_DTYPES, dequantize, quantize
    from lfm2engine.weights import is_projection

    types = (*QUANT_DTYPES, "q6_k")
    out, lines = {}, ["| model | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
    for name in names:
        ck = Checkpoint(shipped_dir(name))
        err, ref = dict.fromkeys(types, 0.0), 0.0
        for n in ck.names():
            if not is_projection(n):
                continue
            x = np.asarray(ck.f32(n), np.float64).ravel()
            x = x[:x.size // 256 * 256].reshape(-1, 256).astype(np.float32)
            ref += float((x.astype(np.float64) ** 2).sum())
            for q in types:
                err[q] += float(((dequantize(quantize(x, q)).reshape(x.shape) - x).astype(np.float64) ** 2).sum())
        out[name] = {q: (err[q] / ref) ** 0.5 for q in types}
        lines.append(f"| {name} | " + " | ".join(f"{100 * out[name][q]:.2f} %" for q in types) + " |")
    return out, lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--modes", default=",".join(MODES), help=f"subset of: {', '.join(MODES)}")
    ap.add_argument("--models", default="tiny,tiny-draft", help="trained models for the perplexity part ('' skips)")
    ap.add_argument("--workload-models", default="default", help="models for the workload part: default "
                    "(the built-in synthetic model's course workload), tiny, tiny-draft ('' skips)")
    ap.add_argument("--out", default=os.path.join(ROOT, "analysis", "out", "quality.json"))
    args = ap.parse_args(argv)
    labels = parse_list(args.modes, "--modes", str)
    unknown = [m for m in labels if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    names = [m for m in args.models.split(",") if m]
    wl_models = [m for m in args.workload_models.split(",") if m]
    with open(held_out_text(), encoding="utf-8") as f:
        text = f.read()
    res = {"ctx": args.ctx, "stride": args.ctx // 2, "simd": _core.simd_level(),
           "bf16_dot_available": switch_problem("bf16_dot") is None,
           "quant_dot_available": switch_problem("quant_dot") is None,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "modes": labels}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        res["models"], lines = perplexity_part(names, labels, args, tmp, text) if names else ({}, [])
        res["workload"], wl_lines = workload_part(wl_models, labels, args, tmp) if wl_models else ({}, [])
    res["weight_error"], we_lines = weight_error_part(names) if names else ({}, [])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with atomic_writer(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print("\n".join(lines + [""] + wl_lines + [""] + we_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
