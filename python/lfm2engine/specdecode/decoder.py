"""The speculative decoder: a cheap draft proposes, the target verifies in one pass.

One sequence at a time. Each round drafts up to k tokens (a chain, or with width W > 1 a token
tree of the chain plus W - 1 alternatives per depth), verifies them with one target call
(Session.forward, or Session.forward_tree), keeps what the acceptance rule accepts plus the
target's own next token, and rolls both caches back to that point (Session.truncate, or
Session.commit_tree). Greedy output equals the target's greedy output token for token.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import InputError
from ..sampling import filter_probs, softmax
from .acceptance import walk_tree_greedy, walk_tree_sampling
from .stats import SpecStats
from .tree import build_tree


def check_compatible(target, draft) -> None:
    """The draft must speak the target's vocabulary (same ids, same size)."""
    vt, vd = target.config.vocab_size, draft.config.vocab_size
    if vt != vd:
        raise InputError(f"draft vocabulary size {vd} != target vocabulary size {vt}: speculative decoding needs a "
                         "draft that shares the target's tokenizer (e.g. LFM2-350M for LFM2-8B-A1B)")


class SpeculativeDecoder:
    """Draft k tokens with `draft`, verify them with `target` in one forward, keep the agreeing
    prefix plus the target's own next token, roll both caches back; repeat.

    k: maximum draft length per round (>= 1). threshold: stop drafting after a token whose draft
    probability is below it (dynamic draft length; 0 = always k). width: candidates per drafted
    position; 1 = a chain verified with Session.forward + truncate; W > 1 = the chain plus W - 1
    alternatives at every depth (greedy: the draft's next-best tokens; sampling: further i.i.d.
    draft samples) merged into a prefix tree and verified with Session.forward_tree + commit_tree.
    temperature 0 = greedy; else temperature / top_k / top_p sampling, applied to target and
    draft alike, with a generator seeded by `seed`."""

    def __init__(self, target, draft, k: int = 4, threshold: float = 0.0, width: int = 1,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k (draft tokens per round) must be an integer >= 1, found {k!r}")
        if not 0.0 <= threshold < 1.0:
            raise InputError(f"threshold must be in [0, 1), found {threshold!r}")
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
            raise InputError(f"tree width must be an integer >= 1, found {width!r}")
        if not temperature >= 0:
            raise InputError(f"temperature must be >= 0, found {temperature!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise InputError(f"top_k must be an integer >= 0, found {top_k!r}")
        if not 0.0 < top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], found {top_p!r}")
        check_compatible(target, draft)
        self.target, self.draft = target, draft
        self.k, self.threshold, self.width = int(k), float(threshold), int(width)
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.seed = int(seed)
        self.rng = np.random.default_rng([self.seed, 0x5bec])
        self.target_session = self.draft_session = None  # of the last sequence, for inspection

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def _probs(self, logits: np.ndarray) -> np.ndarray:
        return filter_probs(softmax(logits, self.temperature), self.top_k, self.top_p)

    def generate(self, prompts, max_new_tokens: int, stop_at_eos: bool = False, on_round=None):
        """Continue each prompt (one at a time). Returns (token lists, SpecStats summed over prompts)."""
        prompts = self.target.check_prompts(prompts, max_new_tokens)
        self.draft.check_prompts(prompts, max_new_tokens)
        total = SpecStats(k=self.k)
        outs = []
        for p in prompts:
            out, st = self._generate_one([int(t) for t in p], int(max_new_tokens), stop_at_eos, on_round)
            outs.append(out)
            total.merge(st)
        return outs, total

    def _draft_round(self, ds, pending: list[int], kk: int, st: SpecStats):
        """Up to kk draft tokens after feeding `pending` to the draft session. Returns the chain,
        the per-depth alternatives (trial lists in sampling mode) and the draft distributions."""
        chain, alts, qs = [], [], []
        feed = pending
        for j in range(kk):
            lg = ds.forward([0], [feed])[0]
            st.draft_calls += 1
            if self.greedy:
                if self.width > 1:
                    top = np.argsort(-lg, kind="stable")[: self.width]
                    x, extra = int(top[0]), [int(t) for t in top[1:]]
                else:
                    x, extra = int(np.argmax(lg)), []
                conf = float(softmax(lg)[x]) if self.threshold > 0 else 1.0
                q = None
            else:
                q = self._probs(lg)
                draws = self.rng.choice(q.shape[0], size=self.width, p=q)
                x, extra = int(draws[0]), [int(t) for t in draws[1:]]
                conf = float(q[x])
            chain.append(x)
            alts.append(extra)
            qs.append(q)
            if conf < self.threshold:
                break
            feed = [x]
        return chain, alts, qs

    def _generate_one(self, prompt: list[int], max_new: int, stop_at_eos: bool, on_round):
        tgt, drf = self.target, self.draft
        st = SpecStats(k=self.k)
        out: list[int] = []
        if max_new == 0:
            return out, st
        eos = set(tgt.config.eos_ids) if stop_at_eos else set()
        maxpos = tgt.config.max_position_embeddings
        cap_t = min(maxpos, len(prompt) + max_new + self.k * self.width)
        ts = tgt.session(1, cap_t, rollback=self.k)
        ds = drf.session(1, min(drf.config.max_position_embeddings, len(prompt) + max_new), rollback=self.k)
        self.target_session, self.draft_session = ts, ds
        t0 = time.perf_counter()
        # Invariant between rounds: both caches hold committed[:-1] at most; the target holds exactly
        # that, and committed[-1] (the last token, not yet run) starts the next verification.
        committed = list(prompt)
        if len(prompt) > 1:
            ts.forward([0], [prompt[:-1]])
            ds.forward([0], [prompt[:-1]])
        st.prefill_s += time.perf_counter() - t0
        while len(out) < max_new:
            t1 = time.perf_counter()
            n_d = int(ds.lengths[0])
            pending = committed[n_d:]
            n0 = len(committed) - 1  # target cache length
            # positions stay inside prompt + max_new; the tree also fits the session capacity
            kk = min(self.k, max_new - len(out) - 1, (cap_t - n0 - 1) // self.width)
            chain, alts, qs = self._draft_round(ds, pending, kk, st) if kk > 0 else ([], [], [])
            t2 = time.perf_counter()
            st.draft_s += t2 - t1
            cands = [chain] + [chain[:j] + [a] for j, al in enumerate(alts) for a in al if a != chain[j]]
            tree = build_tree(cands)
            if self.width == 1:
                lg = ts.forward([0], [[committed[-1]] + chain], all_logits=True)  # [m + 1, V]
            else:
                parents = [-1] + [int(p) + 1 for p in tree.parents]  # node 0 = committed[-1], the root
                lg = ts.forward_tree(0, [committed[-1]] + tree.tokens.tolist(), parents)
            t3 = time.perf_counter()
            st.verify_s += t3 - t2
            if self.greedy:
                path, nxt = walk_tree_greedy(tree, lg)
            else:
                chain_nodes = tree.paths[0]
                trials = {(-1 if j == 0 else chain_nodes[j - 1]): [chain[j]] + alts[j] for j in range(len(chain))}
                qd = {(-1 if j == 0 else chain_nodes[j - 1]): qs[j] for j in range(len(chain))}
                path, nxt = walk_tree_sampling(tree, lambda t, lg=lg: self._probs(lg[t + 1]), trials, qd, self.rng)
            acc = [int(tree.tokens[n]) for n in path]
            if self.width == 1:
                ts.truncate(0, n0 + 1 + len(path))
            else:
                ts.commit_tree([0] + [n + 1 for n in path])
            alt = bool(path) and path[-1] not in tree.paths[0]
            st.record(len(chain), len(path), len(tree) if self.width > 1 else len(chain), alt)
            # The draft ran pending + chain[:-1]; keep what agrees with the new committed tokens.
            new = acc + [nxt]
            ran = chain[:-1]
            same = 0  # (< len(new): the newest token always stays pending, as the invariant says)
            while same < len(ran) and same < len(new) - 1 and ran[same] == new[same]:
                same += 1
            if ran:
                ds.truncate(0, n_d + len(pending) + same)
            committed += new
            out += new
            st.other_s += time.perf_counter() - t3
            if on_round is not None:
                on_round(len(out), st)
            if eos and any(t in eos for t in new):
                break
        if eos:
            for i, t in enumerate(out):
                if t in eos:
                    out = out[: i + 1]
                    break
        out = out[:max_new]
        st.new_tokens = len(out)
        return out, st
