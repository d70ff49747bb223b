"""Our engine against llama.cpp (the strongest CPU peer) on the same checkpoint, same threads.

llama.cpp is not a dependency and none of its code is in this repository: build it yourself and
point this script at the tree. Its source ships in PyPI's llama-cpp-python sdist:

    pip download --no-binary :all: --no-deps --no-build-isolation llama-cpp-python -d /tmp/llama
    tar xzf /tmp/llama/llama_cpp_python-*.tar.gz -C /tmp/llama
    LL=$(echo /tmp/llama/llama_cpp_python-*/vendor/llama.cpp)
    cmake -S $LL -B $LL/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \\
          -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
    cmake --build $LL/build --target llama-bench llama-quantize -j 2
    python benchmarks/bench_llamacpp.py --llama-cpp $LL

The checkpoint (default: the built-in synthetic model) is converted with the tree's own
convert_hf_to_gguf.py to f32 and bf16 GGUF files. The synthetic model has no tokenizer, so the
conversion uses the "none" vocabulary (llama-bench feeds token ids). The tests are llama-bench's
own: pp N (one sequence of N prompt tokens, tokens/s) and tg N (N tokens decoded one at a time
from an empty cache). Ours runs the same shapes through Engine sessions. The two alternate,
round by round (`--rounds`), and medians are reported. llama.cpp runs in its own process, so
this is "same run", not "same process".

Differences to keep in mind: llama.cpp keeps its KV cache in f16, and with bf16 weights on an
AVX512_BF16 CPU it rounds activations to bf16 for the dot products. Ours keeps fp32 activations
and an fp32 cache in both modes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import alternating, print_table, write_json  # noqa: E402

_CONVERT_NONE_VOCAB = """
import sys
tree = sys.argv.pop(1)
sys.path[:0] = [tree, tree + "/gguf-py"]
from conversion.base import TextModel
import conversion.lfm2 as lfm2
# checkpoints without a tokenizer: write the "none" vocabulary (token ids only)
lfm2.LFM2MoeModel.set_vocab = TextModel._set_vocab_none
lfm2.LFM2Model.set_vocab = TextModel._set_vocab_none
import convert_hf_to_gguf
sys.argv[0] = "convert_hf_to_gguf.py"
convert_hf_to_gguf.main()
"""


def convert(tree: str, model: str, outtype: str, out: str) -> str:
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(os.path.join(model, "config.json")):
        return out
    print(f"[bench] converting {model} to {out} ({outtype}) with {tree}/convert_hf_to_gguf.py", file=sys.stderr)
    tmp = out + ".part"  # renamed into place once complete: an interrupted conversion is never reused
    r = subprocess.run([sys.executable, "-c", _CONVERT_NONE_VOCAB, tree, model, "--outtype", outtype, "--outfile",
                        tmp], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"conversion failed:\n{r.stderr[-3000:]}")
    os.replace(tmp, out)
    return out


def quantize_gguf(tree: str, src: str, qtype: str, out: str, threads: int) -> str:
    """llama.cpp's own quantizer (build/bin/llama-quantize) from a bf16/f16/f32 GGUF to `qtype`
    (Q8_0, Q4_0, Q4_K_M, ... as llama-quantize names them); skipped when `out` is newer than `src`."""
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    exe = os.path.join(tree, "build", "bin", "llama-quantize")
    if not os.access(exe, os.X_OK):
        raise SystemExit(f"{exe} not found: build llama.cpp's llama-quantize target (see bench_llamacpp.py)")
    print(f"[bench] quantizing {src} to {out} ({qtype}) with {exe}", file=sys.stderr)
    tmp = out + ".part"
    r = subprocess.run([exe, src, tmp, qtype, str(threads)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama-quantize failed:\n{r.stderr[-3000:]}")
    os.replace(tmp, out)
    return out


def llama_bench(exe: str, gguf: str, threads: int, prompts: list[int], gen: int, reps: int = 3,
                warmup: bool = True) -> dict:
    """{('pp', n) | ('tg', n): [tokens/s of each repetition, in order]} from one llama-bench
    invocation. warmup=False (--no-warmup): the first repetition of each test is its cold run (the
    first pp after the model loaded; tg runs after the pp tests in the same process)."""
    cmd = [exe, "-m", gguf, "-t", str(threads), "-p", ",".join(map(str, prompts)), "-n", str(gen), "-r", str(reps),
           "-o", "json"] + ([] if warmup else ["--no-warmup"])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama-bench failed ({' '.join(cmd)}):\n{r.stderr[-3000:]}")
    out = {}
    for row in json.loads(r.stdout):
        key = ("pp", row["n_prompt"]) if row["n_gen"] == 0 else ("tg", row["n_gen"])
        out[key] = [float(x) for x in row["samples_ts"]]
    return out


def ours(eng, prompts: list[int], gen: int, vocab: int, reps: int = 3) -> dict:
    """Our engine on llama-bench's tests: {('pp', n) | ('tg', gen): [tokens/s of each run, in order]},
    1 + reps runs each; the first is the warm-up (the cold run when the engine was just loaded)."""
    rng = np.random.default_rng(0)
    out = {}
    for n in prompts:
        ids = [rng.integers(0, vocab, n).tolist()]
        s = eng.session(1, n)
        ts = []
        for _ in range(1 + reps):
            t0 = time.perf_counter()
            s.prefill(ids)
            ts.append(n / (time.perf_counter() - t0))
        out[("pp", n)] = ts
    s = eng.session(1, gen + 1)
    ts = []
    for _ in range(1 + reps):
        s.reset()
        t0 = time.perf_counter()
        for j in range(gen):
            s.decode([j % vocab])
        ts.append(gen / (time.perf_counter() - t0))
    out[("tg", gen)] = ts
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp source tree with build/bin/llama-bench")
    ap.add_argument("--model", default=None, help="HF checkpoint directory (default: built-in synthetic model)")
    ap.add_argument("--config", default="default", help="built-in synthetic model when --model is absent: "
                    "default, real8 (LFM2-8B-A1B's real shapes, 8 layers) or full")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompts", default="64,512", help="prompt lengths for pp tests")
    ap.add_argument("--gen", type=int, default=32, help="tokens for the tg test")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gguf-dir", default=None, help="where the GGUF files go (default: next to the checkpoint)")
    ap.add_argument("--json", default="analysis/out/bench_llamacpp.json")
    a = ap.parse_args(argv)

    from lfm2engine import Engine, _core
    from lfm2engine.synthetic import default_model_dir

    exe = os.path.join(a.llama_cpp, "build", "bin", "llama-bench")
    if not os.access(exe, os.X_OK):
        raise SystemExit(f"{exe} not found: build llama.cpp first (see this script's docstring)")
    model = a.model or default_model_dir(a.config)
    gdir = a.gguf_dir or model
    prompts = [int(p) for p in a.prompts.split(",")]
    _core.set_num_threads(a.threads)
    cases = {"float32": "f32", "bfloat16": "bf16"}
    ggufs = {dt: convert(a.llama_cpp, model, t, os.path.join(gdir, f"model-{t}.gguf")) for dt, t in cases.items()}
    engines = {dt: Engine.from_pretrained(model, dtype=dt) for dt in cases}
    vocab = engines["float32"].config.vocab_size

    runs = alternating({(dt, who): (lambda dt=dt, who=who: ours(engines[dt], prompts, a.gen, vocab) if who == "ours"
                                    else llama_bench(exe, ggufs[dt], a.threads, prompts, a.gen))
                        for dt in cases for who in ("ours", "llama.cpp")}, a.rounds, reverse=False)

    rows = []
    for dt in cases:
        for key in [("pp", n) for n in prompts] + [("tg", a.gen)]:
            mine = statistics.median(statistics.median(x[key][1:]) for x in runs[(dt, "ours")])
            peer = statistics.median(statistics.mean(x[key]) for x in runs[(dt, "llama.cpp")])
            rows.append({"weights": dt, "test": f"{key[0]}{key[1]}", "ours_tok_s": mine, "llamacpp_tok_s": peer,
                         "x_vs_llamacpp": mine / peer})
    print_table(rows, ["weights", "test", "ours_tok_s", "llamacpp_tok_s", "x_vs_llamacpp"])
    write_json(a.json, {"model": model, "threads": a.threads, "rounds": a.rounds, "llama_cpp": a.llama_cpp,
                        "rows": rows})


if __name__ == "__main__":
    main()
