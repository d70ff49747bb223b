"""Serving benchmark: throughput, time to first token (TTFT) and inter-token latency (ITL) of
`python -m lfm2engine.serve` at 1, 4, 16 and 64 concurrent streaming clients on loopback.

The server runs the built-in default model (or --model) in a subprocess; the clients (asyncio +
httpx, in this process) each send their next request as soon as the previous one ended. Every
level serves the same --requests requests (token-id prompts of 16..64 random ids, --max-tokens
greedy tokens each); concurrency 1 is those requests run one by one, and every level's speed-up
is its throughput (generated tokens / wall seconds) over that one-by-one run's; the server's CPU
seconds per generated token are recorded too (a shared machine stretches wall time, not CPU
time). TTFT: from sending a request to its first token chunk; ITL: between successive token
chunks of a request.

For comparison, without the server and in the same run: one decode step of b sequences
(b x step(1) / step(b) bounds what batching b requests can gain), and the same requests through
Engine.generate c at a time (static batches). The server runs on --threads 1 by default: on a
shared 2-core machine two OpenMP threads wait on each other whenever another job takes a core
(see analysis/serving.md). Writes analysis/out/bench_serve.json atomically;
analysis/serving_figures.py plots it; analysis/serving.md discusses it. Asserts nothing on time.

    python benchmarks/bench_serve.py                      # ~2.5 min on 2 busy cores
    python benchmarks/bench_serve.py --levels 1,16 --max-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import cpu_model  # noqa: E402

from lfm2engine.checkpoint import atomic_writer  # noqa: E402


def log(msg):
    print(f"[bench_serve] {msg}", file=sys.stderr, flush=True)


def start_server(args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "lfm2engine.serve", "--port", "0", "--max-batch", str(args.max_batch),
           "--max-context", str(args.max_context), "--step-tokens", str(args.step_tokens), "-q"]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    url, ready = [], threading.Event()

    def drain():
        for ln in p.stdout:
            m = re.search(r"listening on (http://\S+)", ln)
            if m and not url:
                url.append(m.group(1))
                ready.set()
            elif not m:
                sys.stderr.write("[server] " + ln)
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    ready.wait(300)
    if not url:
        p.kill()
        raise SystemExit("bench_serve: the server did not start")
    return p, url[0]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere). On a shared
    machine wall time depends on what else runs; CPU time per token much less so."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def workload(n: int, vocab: int, seed: int):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(3, vocab, int(rng.integers(16, 65)))] for _ in range(n)]


async def one_request(client, url, model, prompt, max_tokens) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    stamps, tokens = [], 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {await r.aread()}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ch = json.loads(line[6:])
            n = sum(len(c.get("token_ids", [])) for c in ch.get("choices", []))
            if n:
                stamps.append(time.perf_counter())
                tokens += n
    return {"ttft": stamps[0] - t0 if stamps else None, "itl": list(np.diff(stamps)), "tokens": tokens,
            "seconds": time.perf_counter() - t0}


async def run_level(url, model, prompts, clients: int, max_tokens: int) -> dict:
    import httpx

    todo = list(range(len(prompts)))
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker():
            while todo:
                i = todo.pop(0)
                results.append(await one_request(client, url, model, prompts[i], max_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    itl = [x for r in results for x in r["itl"]]
    toks = sum(r["tokens"] for r in results)
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None  # noqa: E731
    return {"clients": clients, "requests": len(results), "tokens": toks, "seconds": wall,
            "tokens_per_s": toks / wall, "requests_per_s": len(results) / wall,
            "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99), "itl_p50_s": pct(itl, 50),
            "itl_p99_s": pct(itl, 99)}


def engine_ceiling(args, sizes, prompt_len: int = 40, repeat: int = 15) -> list[dict]:
    """The engine alone (no server, same threads): median seconds of one decode step of b
    sequences after a prompt_len-token prefill. steps(b) / steps(1) bounds what batching b
    requests can gain: the served speed-ups are compared with b / that ratio."""
    from lfm2engine.engine import Engine
    from lfm2engine.synthetic import default_model_dir

    eng = Engine.from_pretrained(args.model or default_model_dir("default"), num_threads=args.threads or None)
    rng = np.random.default_rng(args.seed)
    vocab = eng.config.vocab_size
    out = []
    for b in sizes:
        s = eng.session(b, prompt_len + repeat + 1)
        s.forward(range(b), [[int(t) for t in rng.integers(3, vocab, prompt_len)] for _ in range(b)])
        ts = []
        for _ in range(repeat):
            toks = [[int(t)] for t in rng.integers(3, vocab, b)]
            t0 = time.perf_counter()
            s.forward(range(b), toks)
            ts.append(time.perf_counter() - t0)
        out.append({"batch": b, "step_s": float(np.median(ts)), "tokens_per_s": b / float(np.median(ts))})
    base = out[0]["step_s"] if out and out[0]["batch"] == 1 else None
    for r in out:
        r["ceiling_speedup"] = r["batch"] * base / r["step_s"] if base else None
    return out


def engine_offline(args, prompts, levels) -> list[dict]:
    """The same requests through Engine.generate without the server, c prompts per call (static
    batches: prefill together, decode together), for each level c: what the engine gives this
    workload when nothing arrives at different times and no HTTP runs."""
    from lfm2engine.engine import Engine
    from lfm2engine.synthetic import default_model_dir

    eng = Engine.from_pretrained(args.model or default_model_dir("default"), num_threads=args.threads or None)
    eng.generate([prompts[0]], 2)  # first-call set-up
    out = []
    for c in levels:
        t0, p0 = time.perf_counter(), time.process_time()
        toks = sum(len(t) for i in range(0, len(prompts), c)
                   for t in eng.generate(prompts[i : i + c], args.max_tokens, stop_at_eos=True))
        wall, cpu = time.perf_counter() - t0, time.process_time() - p0
        out.append({"batch": c, "tokens": toks, "seconds": wall, "tokens_per_s": toks / wall, "cpu_s": cpu,
                    "cpu_ms_per_token": cpu / toks * 1e3})
    b = next(r for r in out if r["batch"] == 1)
    for r in out:
        r["speedup_vs_one_by_one"] = r["tokens_per_s"] / b["tokens_per_s"]
        r["cpu_speedup_vs_one_by_one"] = b["cpu_ms_per_token"] / r["cpu_ms_per_token"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint directory (default: the built-in synthetic model)")
    ap.add_argument("--levels", default="1,4,16,64", help="concurrent clients per level (1 = one by one)")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request (default 32)")
    ap.add_argument("--max-batch", type=int, default=64, help="server slots (default 64)")
    ap.add_argument("--max-context", type=int, default=256, help="server tokens per slot (default 256)")
    ap.add_argument("--step-tokens", type=int, default=256, help="server step token budget (default 256)")
    ap.add_argument("--requests", type=int, default=64, help="requests served at every level (default 64)")
    ap.add_argument("--threads", type=int, default=1, help="server threads (default 1; 0: the server's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "analysis", "out", "bench_serve.json"))
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    if 1 not in levels:
        levels = [1] + levels  # the one-by-one run every speed-up refers to
    import httpx

    proc, url = start_server(args)
    try:
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        cfg_vocab = 8192 if not args.model else json.load(open(os.path.join(args.model, "config.json")))["vocab_size"]
        log(f"server {url} model {model}")
        asyncio.run(run_level(url, model, workload(4, cfg_vocab, 99), 4, 4))  # warm-up (first-call set-up)
        rows = []
        prompts = workload(args.requests, cfg_vocab, args.seed)
        for c in levels:
            c0, m0 = cpu_seconds(proc.pid), time.process_time()
            res = asyncio.run(run_level(url, model, prompts, c, args.max_tokens))
            c1 = cpu_seconds(proc.pid)
            res["server_cpu_s"] = None if c0 is None or c1 is None else c1 - c0
            res["client_cpu_s"] = time.process_time() - m0
            rows.append(res)
            log(f"{c:3d} clients: {res['requests']} requests, {res['tokens']} tokens in {res['seconds']:.1f} s = "
                f"{res['tokens_per_s']:.1f} tok/s; TTFT p50 {res['ttft_p50_s'] * 1e3:.0f} ms p99 "
                f"{res['ttft_p99_s'] * 1e3:.0f} ms; ITL p50 {res['itl_p50_s'] * 1e3:.0f} ms p99 "
                f"{res['itl_p99_s'] * 1e3:.0f} ms")
        metrics = httpx.get(url + "/metrics").text
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    log("engine alone: decode step times at the same batch sizes")
    ceiling = engine_ceiling(args, levels)
    for r in ceiling:
        log(f"  batch {r['batch']:3d}: {r['step_s'] * 1e3:.1f} ms/step, {r['tokens_per_s']:.0f} tok/s, "
            f"batching gain {r['ceiling_speedup']:.1f}x")
    log("engine alone: the same requests through Engine.generate, c at a time")
    offline = engine_offline(args, prompts, levels)
    for r in offline:
        log(f"  {r['batch']:3d} per call: {r['tokens']} tokens in {r['seconds']:.1f} s = {r['tokens_per_s']:.0f} tok/s, "
            f"{r['speedup_vs_one_by_one']:.1f}x; CPU {r['cpu_ms_per_token']:.2f} ms/token "
            f"({r['cpu_speedup_vs_one_by_one']:.1f}x)")
    base = next(r for r in rows if r["clients"] == 1)["tokens_per_s"]
    one = next(r for r in rows if r["clients"] == 1)
    for r in rows:
        r["speedup_vs_one_by_one"] = r["tokens_per_s"] / base
        if r["server_cpu_s"] and one["server_cpu_s"]:
            r["server_cpu_ms_per_token"] = r["server_cpu_s"] / r["tokens"] * 1e3
            r["cpu_speedup_vs_one_by_one"] = (one["server_cpu_s"] / one["tokens"]) / (r["server_cpu_s"] / r["tokens"])
    out = {"benchmark": "bench_serve", "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                       "load_average": os.getloadavg()},
           "model": model, "requests": args.requests, "max_tokens": args.max_tokens,
           "prompt_tokens": sum(len(p) for p in prompts), "prompt_lengths": "16..64 random ids",
           "server": {"max_batch": args.max_batch, "max_context": args.max_context, "step_tokens": args.step_tokens,
                      "threads": args.threads},
           "levels": rows, "engine_decode_steps": ceiling, "engine_offline_batches": offline,
           "steps": int(float(re.search(r"^lfm2_engine_steps_total (\S+)$", metrics, re.M).group(1)))}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with atomic_writer(args.out, "w") as f:
        json.dump(out, f, indent=1)
    log("speed-up at each level vs one by one: " +
        ", ".join(f"{r['clients']}: {r['speedup_vs_one_by_one']:.1f}x" for r in rows) + f" -> {args.out}")
    if all(r.get("cpu_speedup_vs_one_by_one") for r in rows):
        log("by server CPU time per token: " + ", ".join(
            f"{r['clients']}: {r['server_cpu_ms_per_token']:.2f} ms ({r['cpu_speedup_vs_one_by_one']:.1f}x)" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
