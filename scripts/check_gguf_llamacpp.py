"""Check our GGUF writer against llama.cpp (not part of CI: llama.cpp is not a dependency).

Build llama.cpp as benchmarks/bench_llamacpp.py describes (targets llama-bench, llama-quantize and
llama-perplexity), then: python scripts/check_gguf_llamacpp.py --llama-cpp $LL [--work DIR]

1. Random LFM2-MoE and dense LFM2 checkpoints, widths whole 256-blocks: `python -m
   lfm2engine.quantize` in every dtype, each file run by `llama-bench -p 16 -n 4 -r 1`.
2. The same checkpoints converted by llama.cpp's convert_hf_to_gguf.py (f32, "none" vocabulary)
   and `llama-quantize Q4_K_M`: tensor names, types and shapes must equal ours, f32 data bit for
   bit, metadata equal apart from the keys only we write (token ids, expert_weights_norm); and
   GGUFCheckpoint must read llama.cpp's files.
3. The shipped tiny model (with its tokenizer in the metadata) in f32: llama-perplexity's PPL on a
   piece of the held-out text must equal ours on the same chunks (same scheme: chunks of 128
   tokens, the second half scored) within 1e-3 relative.
Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from bench_llamacpp import _CONVERT_NONE_VOCAB  # noqa: E402

EXTRA_KEYS = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
              "lfm2moe.expert_weights_norm"}


def configs():
    from lfm2engine.synthetic import preset_config

    base = preset_config("default")
    return {
        "moe": base.replace(num_hidden_layers=4, layer_types=("conv", "conv", "full_attention", "conv"), num_experts=4,
                            num_experts_per_tok=2, num_dense_layers=1, hidden_size=256, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=512, intermediate_size=512, moe_intermediate_size=256),
        "dense": base.replace(model_type="lfm2", num_hidden_layers=3, layer_types=("conv", "full_attention", "conv"),
                              num_experts=0, num_experts_per_tok=0, num_dense_layers=0, moe_intermediate_size=0,
                              use_expert_bias=False, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                              vocab_size=512, intermediate_size=768, block_auto_adjust_ff_dim=True,
                              tie_word_embeddings=False),
    }


def table(path):
    import gguf

    r = gguf.GGUFReader(path)
    t = {x.name: (x.tensor_type.name, tuple(int(v) for v in x.shape), np.array(x.data)) for x in r.tensors}
    m = {k: f.contents() for k, f in r.fields.items() if not k.startswith(("GGUF.", "general."))}
    return t, m


def main() -> int:
    from lfm2engine.checkpoint import Checkpoint, GGUFCheckpoint, expected_tensors, save_pretrained
    from lfm2engine.checkpoint.gguf import DTYPES
    from lfm2engine.synthetic import make_tensor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp tree with build/bin/llama-{bench,quantize,perplexity}")
    ap.add_argument("--work", default="/tmp/lfm2-gguf-check", help="scratch directory")
    a = ap.parse_args()
    bins = os.path.join(a.llama_cpp, "build", "bin")
    os.makedirs(a.work, exist_ok=True)
    failed = []

    def check(ok: bool, what: str):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failed.append(what)

    def run(cmd):
        return subprocess.run(cmd, capture_output=True, text=True)

    for kind, cfg in configs().items():
        src = os.path.join(a.work, kind)
        save_pretrained(cfg, {n: make_tensor(cfg, n, s) for n, s in expected_tensors(cfg).items()}, src)
        for dt in DTYPES:
            out = os.path.join(a.work, f"{kind}-{dt}.gguf")
            r = run([sys.executable, "-m", "lfm2engine.quantize", src, out, "--dtype", dt, "--quiet"])
            check(r.returncode == 0, f"{kind} {dt}: written ({r.stderr.strip()[-200:]})")
            r = run([os.path.join(bins, "llama-bench"), "-m", out, "-p", "16", "-n", "4", "-r", "1", "-t", "1", "-o", "json"])
            check(r.returncode == 0, f"{kind} {dt}: llama-bench loads and runs it" + ("" if r.returncode == 0 else
                                                                                    f" ({r.stderr.strip()[-300:]})"))
        ref = os.path.join(a.work, f"{kind}-ref-f32.gguf")
        r = run([sys.executable, "-c", _CONVERT_NONE_VOCAB, a.llama_cpp, src, "--outtype", "f32", "--outfile", ref])
        check(r.returncode == 0, f"{kind}: convert_hf_to_gguf.py f32")
        refq = os.path.join(a.work, f"{kind}-ref-q4_k_m.gguf")
        r = run([os.path.join(bins, "llama-quantize"), ref, refq, "Q4_K_M"])
        check(r.returncode == 0, f"{kind}: llama-quantize Q4_K_M")
        for theirs, ours in ((ref, f"{kind}-f32.gguf"), (refq, f"{kind}-q4_k_m.gguf")):
            (tt, mt), (to, mo) = table(theirs), table(os.path.join(a.work, ours))
            check({n: v[:2] for n, v in tt.items()} == {n: v[:2] for n, v in to.items()},
                  f"{ours}: tensor names, types, shapes equal llama.cpp's ({os.path.basename(theirs)})")
            diff = sorted(k for k in set(mt) | set(mo) if mt.get(k) != mo.get(k))
            check(set(diff) <= EXTRA_KEYS, f"{ours}: metadata equals llama.cpp's but for {diff}")
            if theirs == ref:
                check(all(np.array_equal(tt[n][2], to[n][2]) for n in tt), f"{ours}: f32 data bit-identical")
            g, s = GGUFCheckpoint(theirs), Checkpoint(src)
            err = max(float(np.abs(g.f32(n) - s.f32(n)).max()) for n in g.names())
            check(theirs != ref or err == 0.0, f"GGUFCheckpoint reads {os.path.basename(theirs)} (max |w - source| {err:.3g})")

    from lfm2engine import Engine
    from lfm2engine.models import held_out_text, shipped_dir
    from lfm2engine.perplexity import _score
    from lfm2engine.tokenizer import load_tokenizer

    tiny = os.path.join(a.work, "tiny-f32.gguf")
    r = run([sys.executable, "-m", "lfm2engine.quantize", "tiny", tiny, "--dtype", "f32", "--quiet"])
    check(r.returncode == 0, "tiny f32 written with its tokenizer")
    text = os.path.join(a.work, "held.txt")
    with open(held_out_text(), encoding="utf-8") as f, open(text, "w", encoding="utf-8") as g:
        g.write(f.read(30000))
    r = run([os.path.join(bins, "llama-perplexity"), "-m", tiny, "-f", text, "-c", "128", "-b", "128", "-t", "1"])
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
    theirs = float(m.group(1)) if m else float("nan")
    ids = np.asarray(load_tokenizer(shipped_dir("tiny")).encode(open(text, encoding="utf-8").read()), np.int32)
    n = len(ids) // 128
    total, count = _score(Engine.from_pretrained("tiny"), [ids[k * 128:(k + 1) * 128] for k in range(n)], [65] * n, 8,
                          lambda k: None)
    ours = float(np.exp(total / count))
    check(abs(theirs - ours) <= 1e-3 * ours, f"tiny: llama-perplexity {theirs} vs ours {ours:.4f} on {n} chunks of 128")
    print(json.dumps({"failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
