"""The cost model of analysis/specdecode.md, evaluated on a sweep's JSON (benchmarks/bench_specdecode.py).

A round of k draft tokens costs k·c + v(k + 1) plain decode steps (c: one draft call, v(T): one
verification of T tokens) and yields E(α, k) = (1 − α^(k+1)) / (1 − α) tokens. c and v are taken
from the timings inside the runs (the isolated timings as a fallback), so that at k = 1 the model
has no free parameter besides α. Used by analysis/specdecode_figures.py.
"""

from __future__ import annotations

import os
import sys

import numpy as np

try:
    from lfm2engine.specdecode import expected_tokens_per_round
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    from lfm2engine.specdecode import expected_tokens_per_round


def median(xs):
    return float(np.median(xs)) if xs else float("nan")


def predicted_speedup(alpha, k, c, verify_steps):
    """Tokens per round over the cost of a round in target steps: E(alpha, k) / (k c + v(k + 1))."""
    v = verify_steps.get(str(k + 1))
    if v is None:
        return float("nan")
    return expected_tokens_per_round(alpha, k) / (k * c + v)


def run_cost_ratio(runs, name):
    """Draft cost c measured inside the speculative runs: mean time of one draft call over the plain
    time per token of the same runs (median over the draft's greedy runs). Many more samples than
    the isolated step timings, and it includes what a draft call really does (1-2 pending tokens,
    the rollback window)."""
    cs = [(r["draft_seconds"] / r["draft_calls"]) / (r["plain_ms_per_token"] / 1e3)
          for r in runs if r["draft"] == name and r["sweep"] in ("k", "long-k") and r["draft_calls"]]
    return median(cs)


def run_verify_steps(runs, k):
    """Cost of one verification of k + 1 tokens in plain-decoding steps, measured inside the runs."""
    vs = [(r["verify_seconds"] / r["target_calls"]) / (r["plain_ms_per_token"] / 1e3)
          for r in runs if r["sweep"] in ("k", "long-k") and r["k"] == k and r["acceptance_rate"] > 0.95]
    return median(vs)


def in_run_verify(res):
    """v(T) for T = k + 1 in plain steps, measured inside the runs at each k of the sweep (the
    isolated timing as a fallback): with it the model has no free parameter besides alpha at k = 1."""
    runs, vst = res["runs"], res["verify_steps"]
    ks = sorted({r["k"] for r in runs if r["sweep"] in ("k", "long-k")})
    v_in = {str(k + 1): run_verify_steps(runs, k) for k in ks}
    return {t: (v if v == v else vst.get(t, float("nan"))) for t, v in v_in.items()}


def model_speedup(res, name, alpha, k, v_in):
    """The model's speed-up of draft `name` at k (k capped by the generation length)."""
    return predicted_speedup(alpha, min(k, res["max_new_tokens"] - 1), run_cost_ratio(res["runs"], name), v_in)


def run_verify_points(runs):
    """(k, mean tokens per verification, cost in plain steps) for each k of the chain runs whose
    draft always agrees: the cost of verifying T tokens inside real rounds. The last round of each
    prompt is shorter (the draft length is capped by the tokens still to generate), so the mean T
    of a run at k is below k + 1."""
    out = []
    for k in sorted({r["k"] for r in runs if r["sweep"] in ("k", "long-k")}):
        rs = [r for r in runs if r["sweep"] in ("k", "long-k") and r["k"] == k and r["acceptance_rate"] > 0.95
              and r["target_calls"]]
        if rs:
            out.append((k, median([1 + r["drafted"] / r["target_calls"] for r in rs]), run_verify_steps(runs, k)))
    return out
