"""Acceptance rules: which drafted tokens the target keeps, and what it adds.

Greedy: follow the target's argmax through the token tree. Sampling: the rejection rule of
Leviathan et al. / Chen et al. (2023), extended to several i.i.d. draft samples per position
(recursive rejection, as in SpecInfer), so that every committed token is distributed as the
target's.
"""

from __future__ import annotations

import numpy as np

from .tree import TokenTree


def residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """norm(max(0, p - q)): what is left of the target after a rejected draft of distribution q."""
    r = np.maximum(p - q, 0.0)
    s = r.sum()
    return r / s if s > 0 else p  # s = 0 only if p == q, where no draft can be rejected


def walk_tree_greedy(tree: TokenTree, target_logits: np.ndarray) -> tuple[list[int], int]:
    """Greedy verification: follow the target's argmax through the tree. target_logits [N + 1, V]:
    row 0 at the prefix, row t + 1 after node t. Returns (accepted nodes, the target's next token)."""
    node, path = -1, []
    while True:
        tok = int(np.argmax(target_logits[node + 1]))
        nxt = tree.child(node, tok)
        if nxt is None:
            return path, tok
        path.append(nxt)
        node = nxt


def walk_tree_sampling(tree: TokenTree, target_probs, trials: dict, draft_probs: dict,
                       rng: np.random.Generator) -> tuple[list[int], int]:
    """Lossless verification of sampled drafts. At node t (-1: prefix) the draft proposed the
    i.i.d. samples trials[t] (repeats kept, in draw order) from draft_probs[t]. Each trial x is
    accepted with probability min(1, p(x) / q(x)); after a rejection p <- norm(max(0, p - q)).
    The first accepted trial moves the walk to its node; if all are rejected, the next token is
    drawn from what is left of p. target_probs(t) -> p [V] at node t (row t + 1).
    Each step's output is distributed as the target's p whatever the trials, so the committed
    sequence has the target's distribution (Chen et al. 2023, Thm 1; SpecInfer §4.2 for several trials)."""
    node, path = -1, []
    while True:
        p = target_probs(node)
        q = draft_probs.get(node)
        for x in trials.get(node, ()):
            if rng.random() * q[x] < p[x]:
                node = tree.child(node, x)
                path.append(node)
                break
            p = residual(p, q)
        else:
            return path, int(rng.choice(p.shape[0], p=p))
