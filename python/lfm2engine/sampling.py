"""Token selection: greedy, or temperature / top-k / top-p sampling with explicit seeded generators.

Each request gets its own generator seeded by (seed, request id), so a request's tokens do not
depend on which rank or batch it ran in. Greedy picks the first maximal logit (as np.argmax).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def filter_probs(p: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Zero out all but the top_k most likely tokens and the smallest set with mass >= top_p; renormalize."""
    p = p.copy()
    if top_k and top_k < p.shape[-1]:
        kth = np.partition(p, -top_k)[-top_k]
        p[p < kth] = 0.0
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        c = np.cumsum(p[order])
        cut = int(np.searchsorted(c, top_p * c[-1])) + 1
        p[order[cut:]] = 0.0
    return p / p.sum()


class Sampler:
    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 request_ids=None):
        if not (temperature >= 0):
            raise InputError(f"temperature must be >= 0, found {temperature}")
        if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0:
            raise InputError(f"top_k must be an integer >= 0, found {top_k}")
        if not (0.0 < top_p <= 1.0):
            raise InputError(f"top_p must be in (0, 1], found {top_p}")
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        seed = 0 if seed is None else int(seed)
        ids = list(request_ids) if request_ids is not None else []
        self.rngs = [np.random.default_rng([seed, int(r)]) for r in ids]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def pick(self, logits: np.ndarray, rows) -> np.ndarray:
        """logits [len(rows), V]; rows = the batch indices (for the per-request generators)."""
        if self.greedy:
            return np.argmax(logits, axis=-1)
        out = np.empty(len(rows), np.int64)
        for j, b in enumerate(rows):
            p = filter_probs(softmax(logits[j], self.temperature), self.top_k, self.top_p)
            out[j] = self.rngs[b].choice(p.shape[0], p=p)
        return out
