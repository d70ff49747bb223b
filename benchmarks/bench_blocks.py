"""The conv, attention and MoE blocks alone, in tokens/s, on the default synthetic model.

Shapes: the course harness's prefill (16 sequences of 16 tokens = 256 tokens) and decode (one new
token for each of 1 and 16 sequences, after a 16-token context; attention also after 1024).
Correctness first: each block's output against the NumPy reference (python/lfm2engine/reference.py)
on one sequence. Baseline where one exists in the same process: transformers' own block module
(Lfm2MoeShortConv, Lfm2MoeSparseMoeBlock with eager experts) fed the same input, torch threads =
ours. Medians; ratio = baseline time / our time.

    python benchmarks/bench_blocks.py [--threads 2] [--json analysis/out/bench_blocks.json]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SETTLE, print_table, timeit, write_json  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", default="analysis/out/bench_blocks.json")
    a = ap.parse_args(argv)

    from lfm2engine import Engine, _core
    from lfm2engine import reference as ref
    from lfm2engine.checkpoint import Checkpoint
    from lfm2engine.synthetic import default_model_dir

    model = a.model or default_model_dir()
    _core.set_num_threads(a.threads)
    eng = Engine.from_pretrained(model)
    cfg = eng.config
    d = cfg.hidden_size
    ia = cfg.attention_layers[0]
    ic = next(i for i in cfg.conv_layers if cfg.is_moe_layer(i))
    ck = Checkpoint(model)
    rng = np.random.default_rng(0)

    # --- correctness first, one sequence of 16 tokens
    h = rng.standard_normal((16, d), dtype=np.float32)
    seq0, pos0 = np.zeros(16, np.int32), np.arange(16, dtype=np.int32)
    wts = {
        n: ck.f32(n) for n in ck.names() if f"layers.{ia}." in n or f"layers.{ic}." in n
    }
    rc = ref.ReferenceCache(cfg)
    st = eng.session(1, 32)
    checks = {
        "conv": (
            eng.shortconv_block(ic, h, st, seq0),
            ref.shortconv_block(wts, cfg, ic, h, rc),
        ),
        "attention": (
            eng.attention_block(ia, h, st, seq0, pos0),
            ref.attention_block(wts, cfg, ia, h, rc, pos0),
        ),
        "moe": (eng.local_moe(ic, h), ref.moe_block(wts, cfg, ic, h)),
    }
    for name, (ours, want) in checks.items():
        err = float(np.abs(ours - want).max() / np.abs(want).max())
        assert err < 1e-4, f"{name} block: rel err {err:.2e} vs the reference"

    hf = None
    if not a.no_torch:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(a.threads)
        hf = AutoModelForCausalLM.from_pretrained(
            model,
            dtype=torch.float32,
            attn_implementation="eager",
            experts_implementation="eager",
        ).eval()

    cases = [
        ("prefill 16x16", 16, 16, 0),
        ("decode b1 ctx16", 1, 1, 16),
        ("decode b16 ctx16", 16, 1, 16),
        ("decode b1 ctx1024", 1, 1, 1024),
    ]
    rows, results = [], []
    for label, b, t, ctx in cases:
        n = b * t
        h = rng.standard_normal((n, d), dtype=np.float32)
        seq = np.repeat(np.arange(b, dtype=np.int32), t)
        pos = (ctx + np.tile(np.arange(t), b)).astype(np.int32)
        st = eng.session(b, ctx + t + 1)
        blocks = {
            "conv": lambda: eng.shortconv_block(ic, h, st, seq),
            "attention": lambda: eng.attention_block(ia, h, st, seq, pos),
            "moe": lambda: eng.local_moe(ic, h),
        }
        for name, fn in blocks.items():
            if ctx == 1024 and name != "attention":
                continue
            tm = timeit(fn, repeat=a.repeat, min_time=0.02, settle=SETTLE)["median"]
            r = {
                "shape": label,
                "block": name,
                "tokens": n,
                "us": tm * 1e6,
                "tokens_per_s": n / tm,
            }
            if (
                hf is not None and name != "attention"
            ):  # HF's conv without a cache: same work
                import torch

                layer = hf.model.layers[ic]
                mod = layer.conv if name == "conv" else layer.feed_forward
                ht = torch.from_numpy(h.reshape(b, t, d))

                def run_hf():
                    with torch.no_grad():
                        mod(ht)

                th = timeit(run_hf, repeat=a.repeat, min_time=0.02, settle=SETTLE)["median"]
                r["hf_us"] = th * 1e6
                r["x_vs_hf"] = th / tm
            rows.append(r)
            results.append(r)
    print_table(
        rows, ["shape", "block", "tokens", "us", "tokens_per_s", "hf_us", "x_vs_hf"]
    )
    write_json(a.json, {"model": model, "threads": a.threads, "results": results})


if __name__ == "__main__":
    main()
