"""Sessions: the per-sequence caches of an Engine and the calls that advance or roll them back.

Caches of `batch_size` sequences, on the engine's backend: KV [B, Hkv, S, Dh] per attention
layer, conv state [B, L-1, D] per conv layer. With rollback > 0 the session also keeps, on the
host, the last rollback + L-1 values of u = B ⊙ x per conv layer and sequence, so that
truncate() restores the conv state exactly (the conv state alone cannot be rebuilt from the KV
cache). Tree verification (forward_tree / commit_tree) works on every backend: the tree's short
conv and the commit's slot moves run on the host (trees are small).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .tree import TreePass, check_path, tree_layout, tree_mask


def is_int(v) -> bool:
    """A Python or NumPy integer (bool is not one)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def token_array(tokens, vocab: int, what: str) -> np.ndarray:
    """tokens (a list / array of integer ids) -> int64 [n]; InputError for non-integers (1.9 is
    not token 1) and ids outside [0, vocab)."""
    try:
        a = np.asarray(tokens)
    except (TypeError, ValueError):
        raise InputError(f"{what}: tokens must be a list of integer token ids") from None
    a = a.reshape(-1)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{what}: token ids must be integers, found {a.dtype} values (e.g. {a[0]!r})")
    bad = np.nonzero((a < 0) | (a >= vocab))[0]
    if bad.size:
        raise InputError(f"{what}: token id {int(a[bad[0]])} is outside the vocabulary [0, {vocab})")
    return a.astype(np.int64)


class Session:
    def __init__(self, engine, batch_size: int, capacity: int, rollback: int = 0):
        cfg = engine.config
        for name, v, lo in (("batch_size", batch_size, 1), ("capacity", capacity, 1), ("rollback", rollback, 0)):
            if not is_int(v) or v < lo:
                raise InputError(f"a session needs an integer {name} >= {lo}, got {v!r}")
        if capacity > cfg.max_position_embeddings:
            raise InputError(f"capacity {capacity} exceeds the context of {cfg.max_position_embeddings} tokens")
        b = engine.backend
        self.engine, self.cfg, self.backend = engine, cfg, b
        self.batch_size, self.capacity, self.rollback = batch_size, capacity, rollback
        kv = (batch_size, cfg.num_key_value_heads, capacity, cfg.head_dim)
        self.k = {i: b.zeros(kv) for i in cfg.attention_layers}
        self.v = {i: b.zeros(kv) for i in cfg.attention_layers}
        lm1 = cfg.conv_L_cache - 1
        self.conv = {i: b.zeros((batch_size, lm1, cfg.hidden_size)) for i in cfg.conv_layers}
        self.window = rollback + lm1
        # u of the last `window` positions per sequence, oldest first: [B, window, D] (host)
        self.uwin = ({i: np.zeros((batch_size, self.window, cfg.hidden_size), np.float32) for i in cfg.conv_layers}
                     if rollback > 0 else None)
        self.lengths = np.zeros(batch_size, np.int64)
        # trailing window entries that are known (positions before 0 are known zeros)
        self.uvalid = np.full(batch_size, self.window, np.int64)
        self.backend_cache: dict = {}  # what the backend keeps per session (CUDA Graphs)
        self._tree = None  # the pending tree of forward_tree, until commit_tree

    def reset(self):
        self.lengths[:] = 0
        self.uvalid[:] = self.window
        for a in self.conv.values():
            self.backend.zero_(a)
        if self.uwin is not None:
            for a in self.uwin.values():
                a[:] = 0

    def release(self, seq) -> None:
        """Empty one sequence slot for a new sequence (the other slots keep their caches): its
        length and conv state go to zero; its stale KV entries are never read (attention covers
        positions below the length only) and are overwritten as the new sequence grows."""
        seq = self.check_seq(seq, "release")
        self.lengths[seq] = 0
        self.uvalid[seq] = self.window
        lm1 = self.cfg.conv_L_cache - 1
        for i in self.cfg.conv_layers:
            self.backend.write(self.conv[i][seq], np.zeros((lm1, self.cfg.hidden_size), np.float32))
            if self.uwin is not None:
                self.uwin[i][seq] = 0

    def check_seq(self, seq, what: str = "session") -> int:
        """A sequence slot of this session as an int; InputError for anything else (no negative
        indices counting from the end)."""
        if not is_int(seq) or not 0 <= seq < self.batch_size:
            raise InputError(f"{what}: sequence {seq!r} is outside this session's batch of {self.batch_size} "
                             f"(slots 0..{self.batch_size - 1})")
        return int(seq)

    def forward(self, seqs, tokens, all_logits: bool = False, mask=None, argmax: bool = False) -> np.ndarray:
        """Append tokens[j] to sequence seqs[j]; returns last-position logits [len(seqs), V], or
        every new position's logits [sum(len), V] when all_logits; with argmax, their argmax ids
        (int32) instead. `mask` (optional, uint8 [T, capacity]) replaces the causal rule."""
        eng, cfg = self.engine, self.cfg
        seqs, tokens = list(seqs), list(tokens)
        if len(seqs) != len(tokens):
            raise InputError(f"forward: {len(seqs)} sequences but {len(tokens)} token lists")
        if not seqs:
            raise InputError("forward: no sequences given")
        seqs = [self.check_seq(s, "forward") for s in seqs]
        if len(set(seqs)) != len(seqs):
            raise InputError("a sequence may appear only once per forward call")
        ids_l, seq_l, pos_l, last = [], [], [], []
        for s, toks in zip(seqs, tokens):
            toks = token_array(toks, cfg.vocab_size, f"sequence {s}")
            n0 = int(self.lengths[s])
            if toks.size == 0:
                raise InputError(f"sequence {s}: no tokens to append")
            if n0 + toks.size > self.capacity:
                raise InputError(f"sequence {s}: {n0} cached + {toks.size} new tokens exceed the session capacity "
                                 f"{self.capacity}")
            ids_l.append(toks)
            seq_l.append(np.full(toks.size, s))
            pos_l.append(np.arange(n0, n0 + toks.size))
            last.append(sum(len(a) for a in ids_l) - 1)
        ids = np.concatenate(ids_l).astype(np.int32)
        seq = np.concatenate(seq_l).astype(np.int32)
        pos = np.concatenate(pos_l).astype(np.int32)
        rows = np.arange(len(ids)) if all_logits else np.asarray(last)
        u_hist = None
        if self.uwin is not None:
            u_hist = {i: np.empty((len(ids), cfg.hidden_size), np.float32) for i in cfg.conv_layers}
        out = eng.forward_tokens(self, ids, seq, pos, rows, mask, u_hist, argmax=argmax)
        if self.uwin is not None:
            off = 0
            for s, toks in zip(seqs, ids_l):
                n = len(toks)
                for i in cfg.conv_layers:
                    win = self.uwin[i][s]
                    both = np.concatenate([win, u_hist[i][off : off + n]])  # [window + n, D]
                    win[:] = both[both.shape[0] - self.window :]
                off += n
        for s, toks in zip(seqs, ids_l):
            self.lengths[s] += len(toks)
            self.uvalid[s] = min(self.window, self.uvalid[s] + len(toks))
        return out

    def forward_tree(self, seq: int, tokens, parents) -> np.ndarray:
        """Verify a token tree for sequence `seq` in one pass: node t (token tokens[t], parent
        parents[t], -1 = child of the cached prefix) sees the prefix and its own ancestors only;
        its RoPE position is prefix length + depth. Returns logits [T, V] for every node. The
        cache is not advanced: call commit_tree(path) with the accepted root-to-node path."""
        cfg = self.cfg
        seq = self.check_seq(seq, "forward_tree")
        toks = token_array(tokens, cfg.vocab_size, "tree")
        t_ = toks.size
        if t_ == 0:
            raise InputError("tree: no nodes to verify")
        depth, anc = tree_layout(parents)
        if len(depth) != t_:
            raise InputError(f"tree: {t_} tokens but {len(depth)} parents")
        n0 = int(self.lengths[seq])
        if n0 + t_ > self.capacity:
            raise InputError(f"tree: {n0} cached + {t_} nodes exceed the session capacity {self.capacity}")
        tree = TreePass(int(seq), np.asarray(parents, np.int64))
        u_hist = {i: np.empty((t_, cfg.hidden_size), np.float32) for i in cfg.conv_layers}
        logits = self.engine.forward_tokens(
            self, toks.astype(np.int32), np.full(t_, seq, np.int32), (n0 + np.arange(t_)).astype(np.int32),
            np.arange(t_), tree_mask(anc, n0, self.capacity), u_hist, rope_pos=(n0 + depth).astype(np.int32),
            tree=tree)
        self._tree = (tree, n0, u_hist)
        return logits

    def commit_tree(self, path) -> None:
        """Keep the tree nodes `path` (a root-to-node chain, in order) as the sequence's next tokens."""
        if self._tree is None:
            raise InputError("commit_tree: no pending tree (call forward_tree first)")
        tree, n0, u_hist = self._tree
        seq, b = tree.seq, self.backend
        path = check_path(path, tree.parents)
        if any(node != j for j, node in enumerate(path)):  # compact accepted nodes to consecutive slots
            for i in self.cfg.attention_layers:
                for cache in (self.k[i], self.v[i]):
                    view = cache[seq]  # [Hkv, S, Dh]
                    kv = b.download(view)
                    for j, node in enumerate(path):  # path[j] >= j: moving forward never overwrites a source
                        if node != j:
                            kv[:, n0 + j] = kv[:, n0 + node]
                    b.write(view, kv)
        lm1 = self.cfg.conv_L_cache - 1
        for i in self.cfg.conv_layers:
            u = u_hist[i][path]  # [m, D]
            view = self.conv[i][seq]
            both = np.concatenate([b.download(view), u])
            b.write(view, both[both.shape[0] - lm1 :])
            if self.uwin is not None:
                w = np.concatenate([self.uwin[i][seq], u])
                self.uwin[i][seq] = w[w.shape[0] - self.window :]
        m = len(path)
        self.lengths[seq] = n0 + m
        if self.uwin is not None:
            self.uvalid[seq] = min(self.window, self.uvalid[seq] + m)
        self._tree = None

    def prefill(self, prompts, argmax: bool = False) -> np.ndarray:
        """Reset and run every prompt (sequence b = prompts[b]); last-position logits [B, V]."""
        if len(prompts) > self.batch_size:
            raise InputError(f"{len(prompts)} prompts for a session of {self.batch_size} sequences")
        self.reset()
        return self.forward(range(len(prompts)), prompts, argmax=argmax)

    def decode(self, tokens) -> np.ndarray:
        """One token for each of the first len(tokens) sequences; logits [B, V]."""
        return self.forward(range(len(tokens)), [[t] for t in tokens])

    def truncate(self, seq: int, n: int) -> None:
        """Forget everything of sequence `seq` after its first n tokens (KV and conv state)."""
        seq = self.check_seq(seq, "truncate")
        cur = int(self.lengths[seq])
        if not is_int(n) or not 0 <= n <= cur:
            raise InputError(f"truncate: sequence {seq} has {cur} tokens, cannot truncate to {n}")
        if n == cur:
            return
        lm1 = self.cfg.conv_L_cache - 1
        back = cur - n
        if self.uwin is None or back > self.uvalid[seq] - lm1:
            known = 0 if self.uwin is None else int(self.uvalid[seq] - lm1)
            raise InputError(f"truncate: rolling back {back} tokens of sequence {seq}, but only the last {known} "
                             f"can be restored (session rollback={self.rollback})")
        for i in self.cfg.conv_layers:
            win = self.uwin[i][seq]  # positions cur-window .. cur-1
            keep = win[: self.window - back]  # positions cur-window .. n-1
            self.backend.write(self.conv[i][seq], keep[keep.shape[0] - lm1 :] if lm1 else keep[:0])
            win[:] = np.concatenate([np.zeros((back, win.shape[1]), np.float32), keep])
        self.uvalid[seq] -= back
        self.lengths[seq] = n


__all__ = ["Session"]
