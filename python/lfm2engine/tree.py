"""Token trees for speculative verification: layout checks, the attention mask, and the gated
short conv along each node's ancestor chain.

A tree of T nodes verified for one sequence occupies cache slots n0 .. n0 + T - 1 (n0 = the
cached prefix length); node t is rotated for RoPE position n0 + depth(t), attends to the prefix
and its own ancestors, and its short-conv window is its ancestor chain, then the sequence's conv
state past the root. Trees are small (speculative drafts), so these run in NumPy on the host for
every backend. Session.forward_tree / commit_tree (session.py) use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class TreePass:
    """What the layer loop needs to run one tree: the sequence slot and the parent array."""

    seq: int
    parents: np.ndarray  # [T] int64, -1 for a child of the cached prefix


def tree_layout(parents) -> tuple[np.ndarray, list[list[int]]]:
    """Validate a parent array (parents[t] < t, -1 for roots) -> (depth [T], ancestors-or-self per node)."""
    try:
        a = np.asarray(parents)
    except (TypeError, ValueError):
        raise InputError("tree: parents must be a list of integer node indices") from None
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)) or a.dtype == np.bool_:
        raise InputError(f"tree: parents must be a 1-D list of integer node indices, found {a.dtype} {a.shape}")
    parents = a.astype(np.int64)
    depth = np.zeros(len(parents), np.int64)
    anc: list[list[int]] = []
    for t, p in enumerate(parents):
        if not -1 <= p < t:
            raise InputError(f"tree: node {t} has parent {int(p)}; parents must come before their children "
                             "(-1 for a root)")
        depth[t] = 0 if p < 0 else depth[p] + 1
        anc.append(([] if p < 0 else anc[p]) + [t])
    return depth, anc


def tree_mask(anc: list[list[int]], n0: int, capacity: int) -> np.ndarray:
    """uint8 [T, capacity]: node t sees the prefix slots 0..n0-1 and its ancestors' slots."""
    mask = np.zeros((len(anc), capacity), np.uint8)
    mask[:, :n0] = 1
    for t, a in enumerate(anc):
        mask[t, [n0 + j for j in a]] = 1
    return mask


def check_path(path, parents: np.ndarray) -> list[int]:
    """A root-to-node chain of the tree, in order, as ints (InputError otherwise)."""
    try:
        a = np.asarray(path)
    except (TypeError, ValueError):
        a = np.zeros((0, 0))
    if a.ndim != 1 or (a.size and (not np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_)):
        raise InputError(f"commit_tree: the path must be a list of integer node indices, found {path!r}")
    path = [int(p) for p in a]
    for j, node in enumerate(path):
        want = -1 if j == 0 else path[j - 1]
        if not 0 <= node < len(parents) or parents[node] != want:
            raise InputError(f"commit_tree: {path} is not a root-to-node path of the tree")
    return path


def tree_shortconv(bcx: np.ndarray, conv_w: np.ndarray, state: np.ndarray, parents: np.ndarray,
                   u_out=None) -> np.ndarray:
    """Gated short conv over a token tree: node t's causal window is its ancestor chain (then the
    sequence's conv state [L-1, D]), not the rows before it. bcx [T, 3D] -> C ⊙ z [T, D].
    The state is not changed; u_out [T, D] (optional) receives u = B ⊙ x."""
    t_, d = bcx.shape[0], bcx.shape[1] // 3
    b, c, xs = bcx[:, :d], bcx[:, d : 2 * d], bcx[:, 2 * d :]  # [T, 3D] -> 3 × [T, D]
    u = b * xs
    lm1 = conv_w.shape[1] - 1
    z = np.empty_like(u)
    for t in range(t_):
        prev, node = [], int(parents[t])  # the lm1 values before node t, most recent first
        while len(prev) < lm1 and node >= 0:
            prev.append(u[node])
            node = int(parents[node])
        k = lm1 - 1
        while len(prev) < lm1:  # past the root: the sequence's conv state, newest row last
            prev.append(state[k])
            k -= 1
        z[t] = conv_w[:, lm1] * u[t]
        for back in range(1, lm1 + 1):
            z[t] += conv_w[:, lm1 - back] * prev[back - 1]
    if u_out is not None:
        u_out[:] = u
    return c * z


__all__ = ["TreePass", "check_path", "tree_layout", "tree_mask", "tree_shortconv"]
