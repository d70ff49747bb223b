"""A served request: its prompt, sampling and limits, what it has produced so far, and the text
it turns into (incremental detokenization, stop strings, top-n logprobs).

The scheduler thread fills a request (`accept` per generated token) and hands each step's
output to the HTTP side as an Event through a thread-safe callback; the HTTP side only reads
events. Text: tokenizer.TextTracker, the one incremental decoder (also behind generate
--prompt), holding back a trailing incomplete UTF-8 character and any tail that could still
become a stop string; without a tokenizer (token-id models) each token reads " <id>".
The EOS token ends a request without adding text; it is counted in usage and token_ids.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from ..tokenizer import TextTracker  # noqa: F401  (GenRequest.text; re-exported)

_ids = itertools.count()


@dataclass
class Event:
    """One step's output of a request, or its end (finish_reason set)."""

    token_ids: list[int]
    text: str
    logprobs: list[dict]  # one {"id", "token", "logprob", "top": [(id, token, logprob)]} per token
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class GenRequest:
    """What the scheduler needs to run one request, and its progress."""

    prompt: list[int]
    max_tokens: int
    sampler: object  # sampling.Sampler for this request alone (request id 0)
    eos: frozenset
    text: TextTracker
    logprobs: int | None = None  # top-n logprobs per token; None: off
    emit: object = None  # emit(Event), thread-safe; set by the HTTP side
    rid: str = field(default_factory=lambda: f"{next(_ids):x}")
    # scheduler state
    slot: int | None = None
    fed: int = 0  # prompt tokens already in the cache
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    finish_reason: str | None = None
    t_arrival: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    checked: float = 0.0  # when the HTTP side last checked that the client is still there

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)

    @property
    def greedy(self) -> bool:
        return self.sampler.greedy

    def next_input(self, budget: int) -> list[int]:
        """Tokens to append this step: the next prompt chunk (at most `budget`), or the last token."""
        if self.prefilling:
            return self.prompt[self.fed : self.fed + budget]
        return [self.generated[-1]]

    def accept(self, logits: np.ndarray) -> Event:
        """Pick the next token from this request's last-position logits [V] and update the state."""
        tid = int(self.sampler.pick(logits[None], [0])[0])
        if self.t_first is None:
            self.t_first = time.perf_counter()
        self.generated.append(tid)
        lp = [self._logprobs(logits, tid)] if self.logprobs is not None else []
        if tid in self.eos:
            text = self.text.push(None)
            self.finish_reason = "stop"
        else:
            text = self.text.push(tid)
            if self.text.stopped:
                self.finish_reason = "stop"
            elif len(self.generated) >= self.max_tokens:
                self.finish_reason = "length"
                text += self.text.push(None)
        return Event([tid], text, lp, self.finish_reason)

    def _logprobs(self, logits: np.ndarray, tid: int) -> dict:
        z = logits.astype(np.float64)
        z = z - z.max()
        lp = z - np.log(np.exp(z).sum())
        top = []
        if self.logprobs:
            n = min(self.logprobs, lp.size)
            cand = np.argpartition(-lp, n - 1)[:n]
            top = sorted(cand.tolist(), key=lambda t: (-lp[t], t))
        tt = self.text.token_text
        return {"id": tid, "token": tt(tid), "logprob": float(lp[tid]),
                "top": [(int(t), tt(int(t)), float(lp[t])) for t in top]}
