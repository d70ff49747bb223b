"""Whole-model throughput: lfm2engine vs transformers on the same checkpoint, in the same process.

Prefill tokens/s (batch 1 and 16 prompts of --prompt-len tokens) and decode tokens/s (batch 1
and 16, one token per sequence per step) on the built-in synthetic model by default. transformers
runs fp32 with eager attention/experts and with its default implementations, torch threads =
our threads. Correctness first: last-position logits of both must agree. The batch-1 decode
figure is also given as % of the memory-bandwidth roof measured in this run (bytes of weights
touched per token / time). Rows: fp32 weights, bf16 weights (exact: fp32 activations) and, where
the CPU has AVX512_BF16, "bf16dot" (the opt-in mode of _core.set_bf16_dot: bf16-rounded
activations, vdpbf16ps).

    python benchmarks/bench_model.py [--model DIR] [--threads 2] [--json analysis/out/bench_model.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SETTLE, bandwidth_roofs, print_table, timeit, write_json  # noqa: E402


def active_weight_bytes(cfg, dtype_bytes: int, batch: int) -> float:
    """Weight bytes one decode step touches at batch B (expected distinct experts if routing is uniform)."""
    from lfm2engine.checkpoint import expected_tensors

    total, experts = 0, 0
    for n, s in expected_tensors(cfg).items():
        size = int(np.prod(s))
        if ".experts." in n:
            experts += size
        elif n != "model.embed_tokens.weight" or cfg.tie_word_embeddings:
            total += size  # the tied head reads the whole table; the embedding gather is negligible
    if cfg.is_moe:
        e, k = cfg.num_experts, cfg.num_experts_per_tok
        touched = e * (1 - (1 - k / e) ** batch)
        experts = experts * touched / e
    return (total + experts) * dtype_bytes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--config", default="default", help="built-in synthetic model when --model is absent: "
                    "default, real8 (LFM2-8B-A1B's real shapes, 8 layers) or full")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--json", default="analysis/out/bench_model.json")
    a = ap.parse_args(argv)

    from lfm2engine import Engine, _core
    from lfm2engine.synthetic import default_model_dir

    model = a.model or default_model_dir(a.config)
    _core.set_num_threads(a.threads)
    engines = {dt: Engine.from_pretrained(model, dtype=dt) for dt in ("float32", "bfloat16")}
    cfg = engines["float32"].config
    # (name, engine, bf16-dot mode): the opt-in AVX512_BF16 mode is timed where the CPU has it
    variants = [("float32", engines["float32"], False), ("bfloat16", engines["bfloat16"], False)]
    if _core.bf16_dot_available():
        variants.append(("bf16dot", engines["bfloat16"], True))
    rng = np.random.default_rng(0)
    rows, results = [], {}

    hf = {}
    if not a.no_torch:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(a.threads)
        kw = {"experts_implementation": "eager"} if cfg.is_moe else {}
        hf["eager"] = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="eager",
                                                           **kw).eval()
        hf["default"] = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

    roofs = bandwidth_roofs()
    bw = roofs["dram"]
    print(f"bandwidth roofs (triad, this run): DRAM {bw:.1f} GB/s, cache-resident {roofs['cache']:.1f} GB/s",
          file=sys.stderr)

    for batch in (1, 16):
        prompts = rng.integers(2, cfg.vocab_size, size=(batch, a.prompt_len))
        # --- correctness first
        ours = engines["float32"].logits(list(prompts))
        if hf:
            import torch

            with torch.no_grad():
                ref = hf["eager"](torch.tensor(prompts), use_cache=False).logits[:, -1].float().numpy()
            err = float(np.abs(ours - ref).max() / np.abs(ref).max())
            assert err < 1e-4, f"engine and transformers disagree: rel err {err:.2e}"
        # --- prefill
        for dt, eng, dot in variants:
            _core.set_bf16_dot(dot)
            t = timeit(lambda: eng.logits(list(prompts)), repeat=a.repeat, warmup=1, settle=SETTLE)
            results[f"prefill_b{batch}_{dt}"] = batch * a.prompt_len / t["median"]
            _core.set_bf16_dot(False)
        for name, m in hf.items():
            import torch

            def run_hf():
                with torch.no_grad():
                    m(torch.tensor(prompts), use_cache=False)

            t = timeit(run_hf, repeat=a.repeat, warmup=1, settle=SETTLE)
            results[f"prefill_b{batch}_hf_{name}"] = batch * a.prompt_len / t["median"]
        # --- decode: tokens/s over decode-steps single-token steps after a short prefill
        for dt, eng, dot in variants:
            _core.set_bf16_dot(dot)
            s = eng.session(batch, a.prompt_len + a.decode_steps + 2)

            def dec():
                s.prefill([p[:8] for p in prompts])
                for _ in range(a.decode_steps):
                    s.decode([3] * batch)

            pre = timeit(lambda: (s.prefill([p[:8] for p in prompts])), repeat=a.repeat, warmup=1, settle=SETTLE)["median"]
            t = timeit(dec, repeat=a.repeat, warmup=1, settle=SETTLE)["median"]
            results[f"decode_b{batch}_{dt}"] = batch * a.decode_steps / max(t - pre, 1e-9)
            _core.set_bf16_dot(False)
        for name, m in hf.items():
            import torch

            ids = torch.tensor(prompts[:, :8])

            def dec_hf():
                with torch.no_grad():
                    m.generate(ids, max_new_tokens=a.decode_steps, min_new_tokens=a.decode_steps, do_sample=False,
                               pad_token_id=0, eos_token_id=None)

            def pre_hf():
                with torch.no_grad():
                    m.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0, eos_token_id=None)

            t = timeit(dec_hf, repeat=a.repeat, warmup=1, settle=SETTLE)["median"]
            pre = timeit(pre_hf, repeat=a.repeat, warmup=1, settle=SETTLE)["median"]
            results[f"decode_b{batch}_hf_{name}"] = batch * (a.decode_steps - 1) / max(t - pre, 1e-9)

    # --- where a batch-1 decode step goes (the fused loop's own stage timers), per dtype
    stages = {}
    for dt, eng in engines.items():
        s = eng.session(1, a.prompt_len + a.decode_steps + 2)
        s.prefill([prompts[0][:8]])
        acc, wall = None, 0.0
        for _ in range(a.repeat):
            s.prefill([prompts[0][:8]])
            eng.set_profiling(True)
            t0 = time.perf_counter()
            for _ in range(a.decode_steps):
                s.decode([3])
            wall += time.perf_counter() - t0
            eng.set_profiling(False)
            p = eng.profile()
            acc = p if acc is None else {k: acc[k] + p[k] for k in acc}
        calls = acc.pop("calls")
        stages[dt] = {k: 1e6 * v / calls for k, v in acc.items()}
        stages[dt]["outside_forward"] = 1e6 * wall / calls - sum(stages[dt].values())
    print("batch-1 decode, microseconds per token by stage (fused loop timers; outside_forward = Python):",
          file=sys.stderr)
    for k in stages["float32"]:
        f, b = stages["float32"][k], stages["bfloat16"][k]
        print(f"  {k:16s} fp32 {f:8.1f}  bf16 {b:8.1f}  ratio {f / max(b, 1e-9):5.2f}", file=sys.stderr)

    for key in sorted(results):
        rows.append({"case": key, "tokens_per_s": results[key]})
    for phase in ("prefill", "decode"):
        for batch in (1, 16):
            base = results.get(f"{phase}_b{batch}_hf_default")
            eager = results.get(f"{phase}_b{batch}_hf_eager")
            for dt, _, _ in variants:
                ours = results[f"{phase}_b{batch}_{dt}"]
                r = {"case": f"{phase} b{batch} {dt}", "tokens_per_s": ours}
                if base:
                    r["x_vs_hf_default"] = ours / base
                if eager:
                    r["x_vs_hf_eager"] = ours / eager
                if phase == "decode" and batch == 1:
                    gbps = active_weight_bytes(cfg, 4 if dt == "float32" else 2, 1) * ours / 1e9
                    r["GB/s"] = gbps
                    r["%_bw_roof"] = 100 * gbps / bw
                    r["%_bw_cache"] = 100 * gbps / roofs["cache"]
                if dt != "float32":
                    r["x_vs_our_fp32"] = ours / results[f"{phase}_b{batch}_float32"]
                rows.append(r)
    print_table(rows[len(results):], ["case", "tokens_per_s", "x_vs_hf_default", "x_vs_hf_eager", "x_vs_our_fp32",
                                      "GB/s", "%_bw_roof", "%_bw_cache"])
    write_json(a.json, {"model": model, "threads": a.threads, "bandwidth_roof_GBps": bw, "roofs_GBps": roofs,
                        "weight_bytes_decode_b1": {"float32": active_weight_bytes(cfg, 4, 1),
                                                   "bfloat16": active_weight_bytes(cfg, 2, 1)},
                        "results": results, "summary": rows[len(results):],
                        "decode_b1_stage_us_per_token": stages})


if __name__ == "__main__":
    main()
