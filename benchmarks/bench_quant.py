"""Quantized weights against llama.cpp on THE SAME GGUF files, at LFM2-8B-A1B's real shapes (issue 14, item 8).

The checkpoint (default: the `real8` synthetic preset, LFM2-8B-A1B's real matrix shapes with 8 of
its 24 layers) is converted with llama.cpp's own convert_hf_to_gguf.py to a bf16 GGUF, which
llama.cpp's own llama-quantize turns into Q8_0, Q4_0 and Q4_K_M files (Q4_K_M mixes Q4_K with
Q6_K). Both engines then read each file: llama-bench's pp P and tg G tests (one sequence of P prompt
tokens; G tokens decoded one at a time at batch 1 from an empty cache) against the same shapes
through our sessions (`Engine.from_pretrained(file)`), in our exact mode (fp32 activations) and our
fast mode (int8 activations, `_core.set_quant_dot(True)` / LFM2_QUANT_DOT=1).

Every round runs, per file: ours exact, ours fast and llama-bench, each in a FRESH process
(order reversed every other round). In each process every test runs 1 + --reps times without a
separate warm-up: the first run is the cold one (first call after loading), the others are warm.
Reported: medians over the rounds of the cold run and of each round's warm median, and the ratios
ours / llama.cpp. The limit of the machine is measured in the same run: the NumPy triad bandwidth
(benchmarks/common.py), before and after the rounds; batch-1 decode cannot beat
bandwidth / bytes read per token (every non-expert tensor, the tied head, k/E of the experts: read
from the GGUF file itself). For pp the achieved GFLOP/s (2 × active weights per token) is set
against NumPy's fp32 sgemm.

    LL=$(cat /tmp/llama/LL)        # a llama.cpp tree with build/bin/llama-bench and llama-quantize
    python benchmarks/bench_quant.py --llama-cpp $LL --threads 2 --rounds 5     # full run, ~12 min
    python benchmarks/bench_quant.py --llama-cpp $LL --quick                    # smoke run
    python benchmarks/bench_quant.py --llama-cpp $LL --types q4_0 --modes exact --quick

Building llama.cpp: bench_llamacpp.py's docstring (add the llama-quantize target). The GGUF files
are written once (next to the checkpoint, or --gguf-dir) and reused while newer than their source.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llamacpp import convert, llama_bench, ours, quantize_gguf  # noqa: E402
from common import alternating, bandwidth_roofs, flops_roof, print_table, set_blas_threads, write_json  # noqa: E402

# our name -> llama-quantize's name
TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k_m": "Q4_K_M"}
# issue 14 item 8: warm ours / llama.cpp, 2 threads, same file
TARGETS = {("q8_0", "tg"): 1.3, ("q4_0", "tg"): 1.3, ("q4_k_m", "tg"): 1.0,
           ("q8_0", "pp"): 1.2, ("q4_0", "pp"): 1.2, ("q4_k_m", "pp"): 1.2}
MODES = ("exact", "fast")


def weight_profile(path: str) -> dict:
    """What one batch-1 token reads from a GGUF file: bytes and weight elements of every tensor
    except the experts, of which k/E (top-k of E, both from the file's metadata); the token
    embedding counts whole when it is also the head (no output.weight), one row otherwise.
    (bench_model.active_weight_bytes counts the same from a config at one dtype; a Q4_K_M file
    mixes types per tensor, so here the bytes are the file's own.)"""
    from gguf import GGUFReader

    r = GGUFReader(path)

    def meta(key):
        f = r.fields.get(key)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types and f.types[0].name == "STRING" else v[0].item()

    arch = meta("general.architecture")
    experts, used = meta(f"{arch}.expert_count") or 0, meta(f"{arch}.expert_used_count") or 0
    names = {t.name for t in r.tensors}
    tied = "output.weight" not in names
    total = read = active = 0
    kinds = {}
    for t in r.tensors:
        nb, ne = int(t.n_bytes), int(t.n_elements)
        total += nb
        kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + nb
        if "_exps" in t.name and experts:
            frac = used / experts
        elif t.name == "token_embd.weight" and not tied:
            frac = 1 / int(t.shape[-1])  # one row of [D, V] (GGUF lists dimensions innermost first)
        else:
            frac = 1.0
        read += nb * frac
        active += ne * frac
    return {"arch": arch, "file_bytes": os.path.getsize(path), "tensor_bytes": total, "bytes_per_token": read,
            "flops_per_token": 2 * active, "experts": experts, "experts_per_token": used, "tied_head": tied,
            "bytes_by_type": kinds}


def make_ggufs(tree: str, model: str, gdir: str, types: list[str], threads: int) -> dict:
    """bf16 GGUF by convert_hf_to_gguf.py, then one llama-quantize output per type: {type: path}."""
    bf16 = convert(tree, model, "bf16", os.path.join(gdir, "model-bf16.gguf"))
    return {t: quantize_gguf(tree, bf16, TYPES[t], os.path.join(gdir, f"model-{TYPES[t]}.gguf"), threads)
            for t in types}


def run_ours(path: str, mode: str, threads: int, prompt: int, gen: int, reps: int) -> dict:
    """One fresh process of ours on a GGUF file (this script's --worker): load, then `ours`."""
    env = dict(os.environ, LFM2_QUANT_DOT="1" if mode == "fast" else "0")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", path, "--mode", mode, "--threads", str(threads),
           "--prompt", str(prompt), "--gen", str(gen), "--reps", str(reps)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        print(f"[bench] ours ({mode}) on {os.path.basename(path)} failed: {msg}", file=sys.stderr)
        return {"error": msg}
    return json.loads(r.stdout.strip().splitlines()[-1])


def llama_cpp(exe: str, path: str, a) -> dict:
    """One llama-bench process on a file: 1 + reps runs of pp and of tg, no warm-up (cold first)."""
    got = llama_bench(exe, path, a.threads, [a.prompt], a.gen, reps=1 + a.reps, warmup=False)
    return {"pp": got[("pp", a.prompt)], "tg": got[("tg", a.gen)]}


def worker(a) -> None:
    from lfm2engine import Engine, _core

    if hasattr(_core, "set_quant_dot"):
        _core.set_quant_dot(a.mode == "fast")
    elif a.mode == "fast":
        raise SystemExit("fast mode unavailable: this build has no _core.set_quant_dot")
    t0 = time.perf_counter()
    eng = Engine.from_pretrained(a.worker, dtype="auto", num_threads=a.threads)
    load = time.perf_counter() - t0
    res = ours(eng, [a.prompt], a.gen, eng.config.vocab_size, a.reps)
    print(json.dumps({"load_s": load, "pp": res[("pp", a.prompt)], "tg": res[("tg", a.gen)]}))


def summarize(runs: list[dict], test: str) -> dict | None:
    """Medians over rounds: cold = first run of each process, warm = median of the others."""
    ok = [r[test] for r in runs if "error" not in r]
    if not ok:
        return None
    warm = [statistics.median(x[1:]) if len(x) > 1 else float("nan") for x in ok]
    out = {"warm": statistics.median(warm), "warm_min": min(warm), "warm_max": max(warm),
           "cold": statistics.median(x[0] for x in ok), "rounds": len(ok)}
    loads = [r["load_s"] for r in runs if "load_s" in r]
    if loads:  # ours: seconds from the start of Engine.from_pretrained to a loaded engine
        out["load_s"] = statistics.median(loads)
    return out


def table_rows(runs: dict, types, modes, profiles: dict, dram: float, prompt: int, gen: int) -> list[dict]:
    """One row per (type, test, engine): warm and cold tokens/s, ours / llama.cpp, the target and
    whether the warm ratio meets it; tg: the roof (triad GB/s / bytes per token) and the share of
    it; pp: GFLOP/s (2 × active weights per token)."""
    rows = []
    for t in types:
        p = profiles[t]
        for test, n in (("pp", prompt), ("tg", gen)):
            peer = summarize(runs[(t, "llama.cpp")], test)
            for who in ("llama.cpp", *modes):
                s = summarize(runs[(t, who)], test)
                row = {"type": t, "test": f"{test}{n}", "engine": who if who == "llama.cpp" else f"ours {who}"}
                if s is None:
                    rows.append(dict(row, error=next(x["error"] for x in runs[(t, who)])))
                    continue
                row.update(warm=s["warm"], cold=s["cold"], warm_range=[s["warm_min"], s["warm_max"]],
                           rounds=s["rounds"], **({"load_s": s["load_s"]} if "load_s" in s else {}))
                if who != "llama.cpp":
                    row.update(x_warm=s["warm"] / peer["warm"], x_cold=s["cold"] / peer["cold"])
                    if (t, test) in TARGETS:
                        row.update(target=TARGETS[(t, test)], met=row["x_warm"] >= TARGETS[(t, test)])
                if test == "tg":
                    row["roof"] = dram * 1e9 / p["bytes_per_token"]
                    row["pct_roof"] = 100 * s["warm"] / row["roof"]
                else:
                    row["gflops"] = s["warm"] * p["flops_per_token"] / 1e9
                rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", help="llama.cpp source tree with build/bin/llama-bench and llama-quantize")
    ap.add_argument("--model", default=None, help="HF checkpoint directory (default: the synthetic --config preset)")
    ap.add_argument("--config", default="real8", help="synthetic preset when --model is absent (default real8)")
    ap.add_argument("--types", default=",".join(TYPES), help=f"GGUF types, from {', '.join(TYPES)}")
    ap.add_argument("--modes", default=",".join(MODES), help="our numerics modes: exact, fast")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=None, help="pp test length (default 512; --quick 64)")
    ap.add_argument("--gen", type=int, default=None, help="tg test tokens (default 64; --quick 8)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5; --quick 1)")
    ap.add_argument("--reps", type=int, default=None, help="warm runs per test and process (default 2; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: short tests, one round")
    ap.add_argument("--gguf-dir", default=None, help="where the GGUF files go (default: next to the checkpoint)")
    ap.add_argument("--json", default="analysis/out/bench_quant.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="exact", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for k, full, quick in (("prompt", 512, 64), ("gen", 64, 8), ("rounds", 5, 1), ("reps", 2, 1)):
        if getattr(a, k) is None:
            setattr(a, k, quick if a.quick else full)
    from lfm2engine.cli import at_least, parse_list

    for flag, v in (("--threads", a.threads), ("--prompt", a.prompt), ("--gen", a.gen), ("--rounds", a.rounds),
                    ("--reps", a.reps)):
        at_least(flag, v, 1)
    if a.worker:
        return worker(a)

    from lfm2engine.synthetic import default_model_dir

    if not a.llama_cpp:
        raise SystemExit("--llama-cpp TREE is required (a llama.cpp tree with build/bin/llama-bench)")
    types, modes = parse_list(a.types, "--types", str), parse_list(a.modes, "--modes", str)
    for flag, got, allowed in (("--types", types, TYPES), ("--modes", modes, MODES)):
        bad = [x for x in got if x not in allowed]
        if bad:
            raise SystemExit(f"{flag}: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    exe = os.path.join(a.llama_cpp, "build", "bin", "llama-bench")
    if not os.access(exe, os.X_OK):
        raise SystemExit(f"{exe} not found: build llama.cpp first (see bench_llamacpp.py's docstring)")
    model = a.model or default_model_dir(a.config)
    gdir = a.gguf_dir or model
    files = make_ggufs(a.llama_cpp, model, gdir, types, a.threads)
    profiles = {t: weight_profile(f) for t, f in files.items()}
    set_blas_threads(a.threads)
    roof_before = bandwidth_roofs()
    sgemm = flops_roof()

    t_start = time.perf_counter()
    runs = alternating({(t, who): (lambda t=t, who=who: llama_cpp(exe, files[t], a) if who == "llama.cpp"
                                   else run_ours(files[t], who, a.threads, a.prompt, a.gen, a.reps))
                        for t in types for who in (*modes, "llama.cpp")}, a.rounds)
    roof_after = bandwidth_roofs()
    dram = min(roof_before["dram"], roof_after["dram"])

    rows = table_rows(runs, types, modes, profiles, dram, a.prompt, a.gen)
    print_table(rows, ["type", "test", "engine", "warm", "cold", "x_warm", "x_cold", "target", "met", "roof",
                       "pct_roof", "gflops", "load_s", "error"])
    for t in types:
        print(f"{t}: {files[t]} ({profiles[t]['file_bytes'] / 1e9:.2f} GB; "
              f"{profiles[t]['bytes_per_token'] / 1e6:.0f} MB read per decoded token)")
    print(f"triad roof {dram:.1f} GB/s (before {roof_before['dram']:.1f}, after {roof_after['dram']:.1f}); "
          f"fp32 sgemm {sgemm:.0f} GFLOP/s; {time.perf_counter() - t_start:.0f} s of rounds")
    write_json(a.json, {"model": model, "threads": a.threads, "prompt": a.prompt, "gen": a.gen,
                        "rounds": a.rounds, "reps": a.reps, "llama_cpp": a.llama_cpp, "files": files,
                        "profiles": profiles, "roofs": {"before": roof_before, "after": roof_after,
                                                        "sgemm_gflops": sgemm},
                        "rows": rows, "runs": {f"{t}/{w}": v for (t, w), v in runs.items()}})


if __name__ == "__main__":
    from lfm2engine.errors import LFM2Error

    try:
        main()
    except LFM2Error as e:
        raise SystemExit(f"{type(e).__name__}: {e}") from None
