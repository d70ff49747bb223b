"""Token trees for tree verification: candidate continuations merged into a prefix tree.

`build_tree` merges the draft's chain and its alternatives into a trie whose nodes are in
insertion order (parents before children) and returns the tree attention pattern among the new
tokens; `Session.forward_tree` scores every node in one pass and `Session.commit_tree` keeps the
accepted path (docs/specdecode.md, "Tree verification").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass
class TokenTree:
    """Candidate continuations merged into a prefix tree (a trie), nodes in insertion order.

    tokens [N], parents [N] (-1: child of the cached prefix; parents[t] < t always), depth [N]
    (0 for the first drafted position), mask [N, N] uint8 with mask[t, s] = 1 iff s is t or an
    ancestor of t (the tree attention pattern among the new tokens), paths[c] = the node of each
    position of candidate c, children[t + 1] = {token: node} for node t (index 0: the roots)."""

    tokens: np.ndarray
    parents: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    paths: list
    children: list

    def __len__(self) -> int:
        return len(self.tokens)

    def child(self, node: int, token: int):
        """The child of `node` (-1: the prefix) carrying `token`, or None."""
        return self.children[node + 1].get(int(token))

    def attention_mask(self, prefix_len: int, capacity: int | None = None) -> np.ndarray:
        """Full mask [N, capacity] over cache slots when the nodes occupy slots prefix_len.. in order:
        every node sees the whole prefix and its own ancestor chain (session.Session.forward_tree)."""
        cap = prefix_len + len(self) if capacity is None else capacity
        m = np.zeros((len(self), cap), np.uint8)
        m[:, :prefix_len] = 1
        m[:, prefix_len : prefix_len + len(self)] = self.mask
        return m


def build_tree(candidates) -> TokenTree:
    """Merge candidate token sequences into a prefix tree. Shared prefixes become one chain of
    nodes; a candidate that is a prefix of another adds no node. Node order = first appearance,
    candidate by candidate, so parents always precede their children."""
    tokens: list[int] = []
    parents: list[int] = []
    children: list[dict] = [{}]
    paths = []
    for c, cand in enumerate(candidates):
        try:
            seq = [int(t) for t in cand]
        except (TypeError, ValueError):
            raise InputError(f"tree: candidate {c} is not a sequence of token ids") from None
        node, path = -1, []
        for tok in seq:
            nxt = children[node + 1].get(tok)
            if nxt is None:
                nxt = len(tokens)
                tokens.append(tok)
                parents.append(node)
                children[node + 1][tok] = nxt
                children.append({})
            path.append(nxt)
            node = nxt
        paths.append(path)
    n = len(tokens)
    depth = np.zeros(n, np.int64)
    mask = np.zeros((n, n), np.uint8)
    for t, p in enumerate(parents):
        depth[t] = 0 if p < 0 else depth[p] + 1
        if p >= 0:
            mask[t] = mask[p]  # ancestors of the parent ...
        mask[t, t] = 1  # ... and itself
    return TokenTree(np.asarray(tokens, np.int64), np.asarray(parents, np.int64), depth, mask, paths, children)
