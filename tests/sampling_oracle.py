"""An independently written sampling law and a goodness-of-fit test, for the sampling tests.

`target_law` is written from the documented semantics, not from lfm2engine.sampling: softmax of
logits / temperature in float64; top-k keeps every token whose probability is at least the k-th
largest (ties at the k-th are all kept); top-p then keeps, in order of decreasing probability
(ties: lower token id first), the shortest prefix whose mass reaches top_p of what top-k left;
the rest renormalized.

`chi2_z` is Pearson's chi-square of counts against a law (cells expected below 5 pooled), as the
Wilson–Hilferty normal z-score. The tests reject at z > Z_REJECT = 4: a false-alarm rate of
P(N(0,1) > 4) = 3.2e-5 per test for a correct sampler (the seeds are fixed, so a run is
reproducible; that rate is the chance a fixed seed is unlucky).
"""

from __future__ import annotations

import math

import numpy as np

Z_REJECT = 4.0


def target_law(logits, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    w = np.exp(z - z.max())
    p = w / w.sum()
    v = p.shape[0]
    keep = np.ones(v, bool)
    if 0 < top_k < v:
        kth = sorted(p, reverse=True)[top_k - 1]
        keep &= p >= kth
    if top_p < 1.0:
        mass = sum(p[i] for i in range(v) if keep[i])
        order = sorted((i for i in range(v) if keep[i]), key=lambda i: (-p[i], i))
        kept, acc = set(), 0.0
        for i in order:
            kept.add(i)
            acc += p[i]
            if acc >= top_p * mass:
                break
        keep &= np.array([i in kept for i in range(v)])
    q = np.where(keep, p, 0.0)
    return q / q.sum()


def chi2_z(counts, probs, min_expected: float = 5.0) -> float:
    counts, probs = np.asarray(counts, float).ravel(), np.asarray(probs, float).ravel()
    n = counts.sum()
    exp = probs * n
    if np.any((exp == 0) & (counts > 0)):
        return math.inf  # a draw the law forbids
    big = exp >= min_expected
    c = np.append(counts[big], counts[~big].sum())
    e = np.append(exp[big], exp[~big].sum())
    keep = e > 0
    c, e = c[keep], e[keep]
    chi, df = float(((c - e) ** 2 / e).sum()), max(len(c) - 1, 1)
    return ((chi / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
