"""Drafts made from the target itself, and the layer-skip calibration that picks them.

`make_self_draft` reads a --self-draft spec (topk=N, skip=LIST, skip=auto:N, dtype=NAME, joined
by '+'): fewer experts and bypassed layers share the target's weights (Engine.derive); a dtype
loads a second, reduced-precision engine. `skip_order` is the greedy calibration search behind
skip=auto:N; `draft_agreement` scores a draft against the target, teacher-forced.
"""

from __future__ import annotations

import numpy as np

from .. import log
from ..cli import parse_list
from ..errors import InputError
from ..sampling import softmax


def layer_list(text: str, n_layers: int) -> list[int]:
    """'2,5,7-9' -> [2, 5, 7, 8, 9], sorted and without repeats; every index must be a layer of the model."""
    out = parse_list(text, "skip=", ranges=True, expected="layer indices like 2,5,7-9 or auto:N")
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


def make_self_draft(target, spec: str, model_dir: str | None = None, threads: int | None = None,
                    verbose: bool = False):
    """A draft built from the target itself, no extra weights. spec: items joined by '+':
    topk=N (N active experts per token), skip=LIST or skip=auto:N (layers bypassed; auto:N picks
    them by calibration), dtype=bfloat16|float16|q8_0|q4_0|q4_k (a second engine with reduced-precision
    or block-quantized weights, loaded from model_dir). Returns (engine, canonical description)."""
    from .. import Engine
    from ..weights import DTYPES

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
            skip = layer_list(v, target.config.num_hidden_layers)
        if len(skip) >= target.config.num_hidden_layers:
            raise InputError(f"--self-draft skip={v}: cannot skip every layer")
        desc.append("skip=" + ",".join(map(str, skip)))
    if top_k is not None or skip:
        eng = eng.derive(top_k=top_k, skip_layers=skip)
    return eng, "self:" + "+".join(desc)
