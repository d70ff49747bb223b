"""Speculative decoding on the engine: a cheap draft proposes, the target verifies in one pass.

Lossless by construction: greedy mode returns exactly the target's greedy tokens, and sampling
mode uses the rejection rule of Leviathan et al. / Chen et al. (2023), extended to several
candidates per position (recursive rejection over i.i.d. draft samples, as in SpecInfer), so
that every committed token is distributed as the target's. Not a batched server: one sequence
at a time. Caches are rolled back with `Session.truncate` (chain mode) or advanced with
`Session.commit_tree` (tree mode); the short-conv state rollback lives in session.py (Session).
`python -m lfm2engine.specdecode` runs it, times plain decoding of the target in the same run,
and reports acceptance, histogram, rollbacks, latency, throughput and speed-up (docs/specdecode.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import log
from .errors import InputError
from .sampling import filter_probs, softmax

# ---------------------------------------------------------------------------------------- token trees


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
        every node sees the whole prefix and its own ancestor chain (model.Session.forward_tree)."""
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


# ---------------------------------------------------------------------------------------- acceptance rules


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


# ---------------------------------------------------------------------------------------- statistics


@dataclass
class SpecStats:
    """Counters of one or more speculative runs. A round = one target verification call."""

    k: int = 0
    rounds: int = 0
    drafted: int = 0  # draft tokens proposed along the main chain
    accepted: int = 0  # of those (or their tree alternatives) committed
    alternatives_used: int = 0  # tree mode: rounds that ended on a non-chain branch
    tree_nodes: int = 0  # verified nodes beyond the prefix token (chain mode: = drafted)
    histogram: list = field(default_factory=list)  # histogram[a]: rounds that accepted a draft tokens
    rollbacks: int = 0  # rounds that discarded at least one drafted token
    rolled_back: int = 0  # discarded draft tokens (chain) or tree nodes (tree)
    target_calls: int = 0
    draft_calls: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    other_s: float = 0.0

    def record(self, drafted: int, accepted: int, nodes: int, alt: bool):
        self.rounds += 1
        self.target_calls += 1
        if drafted == 0:
            return
        if len(self.histogram) < self.k + 1:
            self.histogram += [0] * (self.k + 1 - len(self.histogram))
        self.drafted += drafted
        self.accepted += accepted
        self.tree_nodes += nodes
        self.histogram[accepted] += 1
        self.alternatives_used += int(alt)
        if nodes > accepted:
            self.rollbacks += 1
            self.rolled_back += nodes - accepted

    def merge(self, o: SpecStats) -> None:
        for f in ("rounds", "drafted", "accepted", "alternatives_used", "tree_nodes", "rollbacks", "rolled_back",
                  "target_calls", "draft_calls", "new_tokens", "prefill_s", "draft_s", "verify_s", "other_s"):
            setattr(self, f, getattr(self, f) + getattr(o, f))
        n = max(len(self.histogram), len(o.histogram))
        self.histogram = [(self.histogram[i] if i < len(self.histogram) else 0)
                          + (o.histogram[i] if i < len(o.histogram) else 0) for i in range(n)]

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Draft tokens accepted per round that drafted."""
        n = sum(self.histogram)
        return self.accepted / n if n else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.new_tokens / self.rounds if self.rounds else 0.0

    def to_dict(self) -> dict:
        return dict(acceptance_rate=self.acceptance_rate, mean_accepted=self.mean_accepted,
                    tokens_per_round=self.tokens_per_round, histogram=list(self.histogram), rounds=self.rounds,
                    drafted=self.drafted, accepted=self.accepted, alternatives_used=self.alternatives_used,
                    tree_nodes=self.tree_nodes, rollbacks=self.rollbacks, rolled_back_tokens=self.rolled_back,
                    target_calls=self.target_calls, draft_calls=self.draft_calls, new_tokens=self.new_tokens,
                    prefill_seconds=self.prefill_s, draft_seconds=self.draft_s, verify_seconds=self.verify_s,
                    other_seconds=self.other_s)


# ---------------------------------------------------------------------------------------- the decoder


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


# ---------------------------------------------------------------------------------------- self-drafts


def parse_layer_list(text: str, n_layers: int) -> list[int]:
    """'2,5,7-9' -> [2, 5, 7, 8, 9]; every index must be a layer of the model."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise InputError(f"skip={text!r}: expected layer indices like 2,5,7-9 or auto:N") from None
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad:
        raise InputError(f"skip={text!r}: layers {bad} are outside [0, {n_layers})")
    return sorted(set(out))


def calibration_sequence(target, n_prompt: int = 16, n_new: int = 48, seed: int = 1234) -> list[int]:
    """A fixed random prompt and the target's own greedy continuation of it."""
    cfg = target.config
    lo = 2 if cfg.vocab_size > 2 else 0
    prompt = np.random.default_rng(seed).integers(lo, cfg.vocab_size, n_prompt).tolist()
    n_new = min(n_new, cfg.max_position_embeddings - n_prompt)
    return prompt + target.generate([prompt], n_new)[0]


def draft_agreement(target, draft, seq: list[int], n_prompt: int = 16) -> tuple[float, float]:
    """Teacher-forced agreement of a draft with the target on `seq`: (fraction of positions with
    the same argmax, mean sum_x min(p, q), the sampling acceptance rate at temperature 1)."""
    pt = target.session(1, len(seq)).forward([0], [seq], all_logits=True)[n_prompt - 1 : -1]
    pd = draft.session(1, len(seq)).forward([0], [seq], all_logits=True)[n_prompt - 1 : -1]
    agree = float((np.argmax(pt, 1) == np.argmax(pd, 1)).mean())
    alpha = float(np.minimum(softmax(pt), softmax(pd)).sum(1).mean())
    return agree, alpha


def skip_order(target, n: int, seq=None, verbose: bool = False) -> list[int]:
    """Layers to skip, in the order a greedy search adds them: each step adds the layer whose removal
    keeps the draft's argmax closest to the target's on a calibration sequence (ties: higher sampling
    acceptance). The first m entries are the calibrated choice for skip=auto:m. Self-speculative
    layer skipping as in Draft & Verify (Zhang et al., 2023), with a greedy search instead of theirs."""
    nl = target.config.num_hidden_layers
    if not 1 <= n < nl:
        raise InputError(f"skip=auto:{n}: choose between 1 and {nl - 1} layers to skip")
    seq = calibration_sequence(target) if seq is None else seq
    chosen: list[int] = []
    for _ in range(n):
        best = None
        for i in range(nl):
            if i in chosen:
                continue
            score = draft_agreement(target, target.derive(skip_layers=chosen + [i]), seq)
            if best is None or score > best[0]:
                best = (score, i)
        chosen.append(best[1])
        if verbose:
            log.info(f"calibrating skip layers: {sorted(chosen)} keep argmax agreement {best[0][0]:.2f}")
    return chosen


def calibrate_skip_layers(target, n: int, seq=None, verbose: bool = False) -> list[int]:
    """The n layers chosen by skip_order, sorted."""
    return sorted(skip_order(target, n, seq, verbose))


def write_pruned_checkpoint(src_dir: str, drop_layers, out_dir: str) -> str:
    """A separate, smaller checkpoint: the source with whole layers removed (a layer-pruned draft
    that shares the vocabulary and embeddings). Its logits equal Engine.derive(skip_layers=drop)."""
    from .checkpoint import Checkpoint, save_pretrained

    ck = Checkpoint(src_dir)
    cfg = ck.config
    drop = set(int(i) for i in drop_layers)
    keep = [i for i in range(cfg.num_hidden_layers) if i not in drop]
    if not keep or any(not 0 <= i < cfg.num_hidden_layers for i in drop):
        raise InputError(f"prune: cannot drop layers {sorted(drop)} of a {cfg.num_hidden_layers}-layer model")
    changes = {"num_hidden_layers": len(keep), "layer_types": tuple(cfg.layer_types[i] for i in keep)}
    if cfg.is_moe:  # dense layers come first and stay first
        changes["num_dense_layers"] = sum(1 for i in keep if i < cfg.num_dense_layers)
    new_cfg = cfg.replace(**changes)
    tensors = {}
    for name in ck.names():
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            if int(i) in drop:
                continue
            name_out = f"model.layers.{keep.index(int(i))}.{rest}"
        else:
            name_out = name
        tensors[name_out] = ck.f32(name)
    dt = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}.get(cfg.torch_dtype, "F32")
    save_pretrained(new_cfg, tensors, out_dir, dtype=dt)
    return out_dir


def make_self_draft(target, spec: str, model_dir: str | None = None, threads: int | None = None,
                    verbose: bool = False):
    """A draft built from the target itself, no extra weights. spec: items joined by '+':
    topk=N (N active experts per token), skip=LIST or skip=auto:N (layers bypassed; auto:N picks
    them by calibration), dtype=bfloat16|float16 (a second engine with reduced-precision weights,
    loaded from model_dir). Returns (engine, canonical description)."""
    from .engine import DTYPES, Engine

    items = [s.strip() for s in spec.split("+") if s.strip()]
    if not items:
        raise InputError("--self-draft is empty; examples: topk=1, skip=auto:4, dtype=bfloat16, topk=2+skip=21")
    opts: dict[str, str] = {}
    for it in items:
        key, eq, val = it.partition("=")
        key = key.strip().lower()
        if key in ("bf16", "f16") and not eq:
            key, val = "dtype", {"bf16": "bfloat16", "f16": "float16"}[key]
        elif not eq or key not in ("topk", "skip", "dtype"):
            raise InputError(f"--self-draft item {it!r}: expected topk=N, skip=LIST, skip=auto:N or dtype=NAME")
        if key in opts:
            raise InputError(f"--self-draft {spec!r}: {key} given twice")
        opts[key] = val.strip()
    eng, desc = target, []
    if "dtype" in opts:
        if opts["dtype"] not in DTYPES:
            raise InputError(f"--self-draft dtype={opts['dtype']}: choose from {', '.join(DTYPES)}")
        if opts["dtype"] != target.dtype:
            if model_dir is None:
                raise InputError("--self-draft dtype=...: needs the target's checkpoint directory to reload")
            eng = Engine.from_pretrained(model_dir, dtype=opts["dtype"], num_threads=threads)
        desc.append(f"dtype={opts['dtype']}")
    top_k = None
    if "topk" in opts:
        try:
            top_k = int(opts["topk"])
        except ValueError:
            raise InputError(f"--self-draft topk={opts['topk']!r}: expected an integer") from None
        if not target.config.is_moe:
            raise InputError(f"--self-draft topk={top_k}: the target ({target.config.model_type}) has no experts")
        desc.append(f"topk={top_k}")
    skip: list[int] = []
    if "skip" in opts:
        v = opts["skip"]
        if v.startswith("auto"):
            try:
                n = int(v.partition(":")[2])
            except ValueError:
                raise InputError(f"--self-draft skip={v!r}: expected auto:N, e.g. auto:4") from None
            skip = calibrate_skip_layers(target, n, verbose=verbose)
        else:
            skip = parse_layer_list(v, target.config.num_hidden_layers)
        if len(skip) >= target.config.num_hidden_layers:
            raise InputError(f"--self-draft skip={v}: cannot skip every layer")
        desc.append("skip=" + ",".join(map(str, skip)))
    if top_k is not None or skip:
        eng = eng.derive(top_k=top_k, skip_layers=skip)
    return eng, "self:" + "+".join(desc)


# ---------------------------------------------------------------------------------------- measuring


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


def forward_ms(engine, prompt, n_tokens: int = 1, repeats: int = 5) -> float:
    """Median time of one forward call appending n_tokens after `prompt`: n_tokens = 1 is a decode
    step; n_tokens = k + 1 is what a verification costs."""
    prompt = list(map(int, prompt))
    s = engine.session(1, len(prompt) + n_tokens, rollback=n_tokens)
    s.forward([0], [prompt])
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        s.forward([0], [[prompt[-1]] * n_tokens])
        ts.append(time.perf_counter() - t0)
        s.truncate(0, len(prompt))
    return 1e3 * _median(ts)


def expected_tokens_per_round(alpha: float, k: int) -> float:
    """E[tokens per round] for i.i.d. acceptance alpha and draft length k: (1 - a^(k+1)) / (1 - a)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


# ---------------------------------------------------------------------------------------- CLI

DEFAULT_SELF_DRAFT = "dtype=float16"  # measured best on the built-in model (analysis/specdecode.md)
DEFAULT_K = 16


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lfm2engine.specdecode",
        description="Speculative decoding: a cheap draft proposes k tokens, the target verifies them in one "
                    "forward pass. Output is exactly the target's (greedy) or distributed as the target's "
                    "(sampling). Reports acceptance and the speed-up over plain decoding measured in the same run. "
                    "Lists (-k 1-8, --threshold 0,0.5, repeated --draft/--self-draft) run a sweep.")
    ap.add_argument("--target", help="target checkpoint directory (default: the built-in synthetic model)")
    ap.add_argument("--draft", action="append", default=[], metavar="DIR",
                    help="draft checkpoint sharing the target's vocabulary (e.g. LFM2-350M for LFM2-8B-A1B); "
                         "repeat to compare drafts")
    ap.add_argument("--self-draft", action="append", default=[], metavar="SPEC",
                    help="draft made from the target itself, items joined by '+': topk=N (fewer experts), "
                         "skip=2,5,7-9 or skip=auto:N (bypass layers; auto picks them by calibration), "
                         f"dtype=bfloat16 (reduced-precision copy). Repeatable. Default: {DEFAULT_SELF_DRAFT}")
    ap.add_argument("-k", default=str(DEFAULT_K), metavar="N",
                    help=f"max draft tokens per round (default {DEFAULT_K}); a list or range sweeps: 1-8, 1,2,4")
    ap.add_argument("--threshold", default="0",
                    help="stop drafting after a token whose draft probability is below this (dynamic draft "
                         "length; default 0 = always k); a list sweeps: 0,0.3,0.6")
    ap.add_argument("--tree-width", default="1", metavar="W",
                    help="candidates per drafted position: 1 = chain; W > 1 = tree verification of the chain plus "
                         "W-1 alternatives per depth in one pass (default 1); a list sweeps")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt", help="prompt text (needs tokenizer.json in the target directory)")
    ap.add_argument("--prompt-ids", help="prompt as comma-separated token ids (default: 16 fixed random ids)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    mode.add_argument("--temperature", type=float, default=0.0, help="> 0: sampling with rejection verification")
    ap.add_argument("--top-k", type=int, default=0, help="sampling: keep the k most likely tokens")
    ap.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus mass")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="weight dtype of the target (and of --draft checkpoints)")
    ap.add_argument("--threads", type=int, default=None, help="threads for the C++ ops (default: all cores)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs per configuration, alternating with plain decoding; medians are reported "
                         "(default 3)")
    ap.add_argument("--stop-at-eos", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    ap.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    return ap


def parse_int_list(text: str, name: str) -> list[int]:
    out: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise InputError(f"{name} {text!r}: expected an integer, a list 1,2,4 or a range 1-8") from None
    if not out:
        raise InputError(f"{name} is empty")
    return out


def parse_float_list(text: str, name: str) -> list[float]:
    try:
        out = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{name} {text!r}: expected a number or a list 0,0.3,0.6") from None
    if not out:
        raise InputError(f"{name} is empty")
    return out


def _check_args(args, ks, thresholds, widths):
    bad_k = [k for k in ks if k < 1]
    if bad_k:
        raise InputError(f"-k must be >= 1 (draft tokens per round), found {bad_k[0]}")
    bad_t = [t for t in thresholds if not 0.0 <= t < 1.0]
    if bad_t:
        raise InputError(f"--threshold must be in [0, 1), found {bad_t[0]}")
    bad_w = [w for w in widths if w < 1]
    if bad_w:
        raise InputError(f"--tree-width must be >= 1, found {bad_w[0]}")
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, found {args.max_new_tokens}")
    if args.repeats < 1:
        raise InputError(f"--repeats must be >= 1, found {args.repeats}")
    if args.temperature < 0:
        raise InputError(f"--temperature must be >= 0, found {args.temperature}")
    if args.prompt is not None and args.prompt_ids is not None:
        raise InputError("give either --prompt or --prompt-ids, not both")


def _same_tokenizer(target_dir: str, draft_dir: str) -> None:
    a, b = os.path.join(target_dir, "tokenizer.json"), os.path.join(draft_dir, "tokenizer.json")
    if os.path.isfile(a) and os.path.isfile(b):
        from .tokenizer import Tokenizer

        if Tokenizer(a).tok.get_vocab() != Tokenizer(b).tok.get_vocab():
            raise InputError(f"{draft_dir}/tokenizer.json differs from the target's {target_dir}/tokenizer.json: "
                             "the draft must share the target's vocabulary")


def _main(args) -> int:
    from .generate import parse_ids
    from .engine import Engine

    log.configure(0, 1, 0 if args.quiet else 1)
    ks = parse_int_list(args.k, "-k")
    thresholds = parse_float_list(args.threshold, "--threshold")
    widths = parse_int_list(args.tree_width, "--tree-width")
    _check_args(args, ks, thresholds, widths)
    if args.target:
        if not os.path.isdir(args.target):
            raise InputError(f"--target {args.target}: not a directory")
        tdir = args.target
    else:
        from .synthetic import default_model_dir

        tdir = default_model_dir("default", verbose=not args.quiet)
    for d in args.draft:
        if not os.path.isdir(d):
            raise InputError(f"--draft {d}: not a directory")
    t0 = time.perf_counter()
    target = Engine.from_pretrained(tdir, dtype=args.dtype, num_threads=args.threads)
    log.info(f"target {tdir} ({target.config.model_type}, {target.config.num_hidden_layers} layers, "
             f"V={target.config.vocab_size}, {args.dtype}) loaded in {time.perf_counter() - t0:.2f} s")
    tok = None
    if args.prompt is not None:
        from .tokenizer import load_tokenizer

        tok = load_tokenizer(tdir)
        if tok is None:
            raise InputError(f"--prompt needs {tdir}/tokenizer.json; this checkpoint has none: use --prompt-ids")
        if not args.prompt:
            raise InputError("--prompt is empty")
        prompt = tok.encode(args.prompt, add_bos=target.config.bos_token_id)
    elif args.prompt_ids is not None:
        prompt = parse_ids(args.prompt_ids)
    else:
        v = target.config.vocab_size
        prompt = np.random.default_rng(0).integers(min(2, v - 1), v, 16).tolist()
    target.check_prompts([prompt], args.max_new_tokens)

    drafts = []  # (description, engine)
    for d in args.draft:
        _same_tokenizer(tdir, d)
        eng = Engine.from_pretrained(d, dtype=args.dtype, num_threads=args.threads)
        check_compatible(target, eng)
        drafts.append((f"ckpt:{d}", eng))
    specs = list(args.self_draft) or ([] if args.draft else [DEFAULT_SELF_DRAFT])
    for spec in specs:
        t1 = time.perf_counter()
        eng, desc = make_self_draft(target, spec, tdir, args.threads, verbose=not args.quiet)
        log.info(f"draft {desc} ready in {time.perf_counter() - t1:.2f} s")
        drafts.append((desc, eng))

    temp = 0.0 if args.greedy else args.temperature
    samp = {"temperature": temp, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    if temp > 0:  # validate the sampling arguments once, before any timing
        SpeculativeDecoder(target, drafts[0][1], 1, **samp)
    runs = []
    grid = [(d, k, th, w) for d in drafts for k in ks for th in thresholds for w in widths]
    log.info(f"{len(grid)} configuration(s), each timed against plain decoding of the target "
             f"({args.repeats} alternating run(s) of {args.max_new_tokens} tokens after a {len(prompt)}-token prompt)")
    for n, ((desc, eng), k, th, w) in enumerate(grid):
        rep = measure(target, eng, [prompt], args.max_new_tokens, k, th, w, repeats=args.repeats,
                      stop_at_eos=args.stop_at_eos, **samp)
        rep["draft"] = desc
        rep["draft_step_ms"] = forward_ms(eng, prompt)
        runs.append(rep)
        lossless = "" if temp > 0 else ("  identical to plain" if rep["matches_plain"] else "  MISMATCH")
        log.info(f"[{n + 1}/{len(grid)}] {desc} k={k} thr={th:g} W={w}: acceptance {rep['acceptance_rate']:.2f}, "
                 f"{rep['tokens_per_round']:.2f} tokens/round, {rep['spec_ms_per_token']:.2f} ms/token "
                 f"(plain {rep['plain_ms_per_token']:.2f}), speed-up {rep['speedup']:.2f}x{lossless}")
    best = max(runs, key=lambda r: r["speedup"])
    summary = dict(best)
    summary.update(target=tdir, dtype=args.dtype, prompt_ids=list(map(int, prompt)),
                   max_new_tokens=args.max_new_tokens, target_step_ms=forward_ms(target, prompt))
    if tok is not None:
        summary["text"] = tok.decode(best["tokens"])
    if len(runs) > 1:
        summary["sweep"] = [{k: v for k, v in r.items() if k not in ("tokens", "plain_tokens")} for r in runs]
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        _print_table(runs, temp > 0)
        if tok is not None:
            print(summary["text"], flush=True)
        else:
            print("tokens: " + " ".join(map(str, best["tokens"])), flush=True)
    if temp == 0 and not all(r["matches_plain"] for r in runs):  # pragma: no cover - would be a bug
        log.error("speculative greedy output differs from plain greedy decoding")
        return 1
    return 0


def _print_table(runs, sampling: bool) -> None:
    head = f"{'draft':<28} {'k':>2} {'thr':>4} {'W':>2} {'accept':>6} {'tok/rnd':>7} {'rollbk':>6} " \
           f"{'ms/tok':>7} {'plain':>7} {'speedup':>7}  histogram"
    print(head)
    for r in runs:
        print(f"{r['draft'][:28]:<28} {r['k']:>2} {r['threshold']:>4.2g} {r['width']:>2} {r['acceptance_rate']:>6.2f} "
              f"{r['tokens_per_round']:>7.2f} {r['rollbacks']:>6} {r['spec_ms_per_token']:>7.2f} "
              f"{r['plain_ms_per_token']:>7.2f} {r['speedup']:>6.2f}x  {r['histogram']}")
    if not sampling:
        same = all(r["matches_plain"] for r in runs)
        print("greedy output identical to plain decoding: " + ("yes" if same else "NO"))


def main(argv=None) -> int:
    from .parallel import run_guarded

    args = build_parser().parse_args(argv)
    return run_guarded(lambda comm: _main(args))


if __name__ == "__main__":
    sys.exit(main())
