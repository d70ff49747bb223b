"""Measuring speculative decoding: timed against plain decoding in the same process.

`measure` alternates speculative and plain decoding of the same prompts and reports paired
speed-ups; `forward_timer` / `forward_ms` time one forward of n tokens (a decode step, or what a
verification of k + 1 tokens costs); `expected_tokens_per_round` is the i.i.d. acceptance model.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .decoder import SpeculativeDecoder


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def measure(target, draft, prompts, max_new: int, k: int, threshold: float = 0.0, width: int = 1,
            temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, repeats: int = 3,
            stop_at_eos: bool = False) -> dict:
    """Time speculative decoding of `prompts` (one after another) against plain decoding of the
    target (Engine.generate, also one prompt at a time) in the same process. After a warm-up of
    both, the two alternate `repeats` times, so that a shared machine's load shifts hit both alike;
    speedup is the median of the per-pair throughput ratios. Returns the report dict (tokens,
    acceptance_rate, speedup, latency, throughput, counters of the last speculative run)."""
    prompts = [list(map(int, p)) for p in prompts]
    dec = SpeculativeDecoder(target, draft, k, threshold, width, temperature, top_k, top_p, seed)
    kw = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed, "stop_at_eos": stop_at_eos}
    dec.generate(prompts[:1], min(max_new, 4), stop_at_eos)  # warm-up: first-call allocations
    target.generate(prompts[:1], min(max_new, 4), **kw)
    t_spec, t_plain, ratios, cpu_ratios = [], [], [], []
    outs = plain = st = None
    for _ in range(max(1, repeats)):
        c0, t0 = time.process_time(), time.perf_counter()
        plain = [target.generate([p], max_new, **kw)[0] for p in prompts]
        c1, t1 = time.process_time(), time.perf_counter()
        dec.rng = np.random.default_rng([seed, 0x5bec])
        outs, st = dec.generate(prompts, max_new, stop_at_eos)
        c2, t2 = time.process_time(), time.perf_counter()
        t_plain.append(t1 - t0)
        t_spec.append(t2 - t1)
        n_spec, n_plain = sum(map(len, outs)), sum(map(len, plain))
        ratios.append((n_spec / (t2 - t1)) / (n_plain / (t1 - t0)))
        cpu_ratios.append((n_spec / max(c2 - c1, 1e-9)) / (n_plain / max(c1 - c0, 1e-9)))
    ts, tp = _median(t_spec), _median(t_plain)
    # speedup: wall clock (the honest latency). speedup_cpu: the same from this process's CPU time,
    # which a busy shared machine disturbs less when the ops run on one thread.
    rep = dict(tokens=outs[0] if len(outs) == 1 else outs, **st.to_dict(), k=k, threshold=threshold, width=width,
               temperature=temperature, spec_seconds=ts, spec_ms_per_token=1e3 * ts / max(n_spec, 1),
               spec_tokens_per_s=n_spec / ts, plain_seconds=tp, plain_ms_per_token=1e3 * tp / max(n_plain, 1),
               plain_tokens_per_s=n_plain / tp, speedup=_median(ratios), speedup_min=min(ratios),
               speedup_max=max(ratios), speedup_cpu=_median(cpu_ratios), repeats=len(ratios),
               plain_tokens=plain[0] if len(plain) == 1 else plain)
    if temperature == 0.0:
        rep["matches_plain"] = outs == plain
    return rep


def forward_timer(engine, prompt, n_tokens: int = 1, warmup: bool = True):
    """A callable timing one forward call that appends n_tokens after `prompt` and rolls them back
    again: it returns milliseconds. n_tokens = 1 is a decode step; n_tokens = k + 1 is what a
    verification costs. warmup: make one untimed call first."""
    prompt = list(map(int, prompt))
    s = engine.session(1, len(prompt) + n_tokens, rollback=n_tokens)
    s.forward([0], [prompt])

    def once() -> float:
        t0 = time.perf_counter()
        s.forward([0], [[prompt[-1]] * n_tokens])
        dt = time.perf_counter() - t0
        s.truncate(0, len(prompt))
        return 1e3 * dt

    if warmup:
        once()
    return once


def forward_ms(engine, prompt, n_tokens: int = 1, repeats: int = 5) -> float:
    """Median time in ms of one forward call appending n_tokens after `prompt` (forward_timer)."""
    timer = forward_timer(engine, prompt, n_tokens, warmup=False)
    return _median([timer() for _ in range(repeats)])


def expected_tokens_per_round(alpha: float, k: int) -> float:
    """E[tokens per round] for i.i.d. acceptance alpha and draft length k: (1 - a^(k+1)) / (1 - a)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
