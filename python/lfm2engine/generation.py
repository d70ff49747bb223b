"""The one generation loop: prefill, then pick / append / stop, step by step.

Used by Engine.generate (one process) and by the parallel plans (parallel/data_parallel.py),
which pass `agree` and `idle`: under expert parallelism every rank must take part in every MoE
collective, so a rank whose sequences have all stopped (or that holds none) makes idle passes,
and the ranks stop together once none has a live sequence. Greedy steps ask the backend for
argmax ids only (on a GPU, the logits stay on the device). No token is drawn from NaN/Inf
logits: every pass is checked (Engine.forward_tokens) and the error names the step.
"""

from __future__ import annotations

from .errors import NumericsError


def decode_loop(eng, prompts, max_new_tokens: int, sampler, stop_at_eos: bool = False, on_step=None,
                agree=None, idle=None, on_token=None) -> list[list[int]]:
    """Tokens generated for each of `prompts` (validated int32 arrays; may be empty on a rank of
    a parallel plan). sampler: sampling.Sampler; on_step(step, live) after each step with live
    sequences; on_token(b, token) as each token is appended to sequence b (streaming); agree(n) ->
    the number of sequences still running on any rank (default n);
    idle() makes one pass without tokens (default: nothing)."""
    n = len(prompts)
    out: list[list[int]] = [[] for _ in range(n)]
    if max_new_tokens == 0:
        return out
    greedy = sampler.greedy
    s = None
    if n:
        s = eng.session(n, max(len(p) for p in prompts) + max_new_tokens)
        picked = _step(0, s.prefill, prompts, argmax=greedy)
    elif idle is not None:
        idle()
    live = list(range(n))
    eos = set(eng.config.eos_ids) if stop_at_eos else set()
    for step in range(max_new_tokens):
        nxt = []
        if live:
            toks = picked if greedy else sampler.pick(picked, live)
            for j, b in enumerate(live):
                out[b].append(int(toks[j]))
                if on_token is not None:
                    on_token(b, int(toks[j]))
                if int(toks[j]) not in eos and step + 1 < max_new_tokens:
                    nxt.append((b, int(toks[j])))
            if on_step is not None:
                on_step(step + 1, len(live))
        if (len(nxt) if agree is None else agree(len(nxt))) == 0:
            break
        live = [b for b, _ in nxt]
        if live:
            picked = _step(step + 1, s.forward, live, [[t] for _, t in nxt], argmax=greedy)
        elif idle is not None:
            idle()
    return out


def _step(step: int, fn, *args, **kw):
    """fn(*args, **kw); its NumericsError (NaN/Inf logits: Engine.forward_tokens checks every
    pass) names the generation step whose token would have been drawn from them."""
    try:
        return fn(*args, **kw)
    except NumericsError as e:
        raise NumericsError(f"generation step {step} (token {step + 1}): {e}") from None


__all__ = ["decode_loop"]
