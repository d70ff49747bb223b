"""Continuous batching: the one thread that owns the sequence slots and steps the engine.

Every step the scheduler
  1. retires requests that finished or whose client went away (their slots are emptied in the
     same step's message, so every rank frees them too);
  2. admits waiting requests, first come first served, into free slots (the KV budget is
     slots × capacity; the rest wait in the queue, and past `max_queue` waiting requests new
     ones are refused by `submit`);
  3. builds one ragged batch: every running decode appends its last token, and prompts are fed
     in chunks from a per-step token budget (`step_tokens`, at least `min_chunk` when many
     decodes run), so a long prompt never stalls the running decodes for more than one chunk;
  4. runs the step on every rank (steps.StepExecutor) and, for each request whose prompt is
     complete, picks the next token from its own logits row with its own seeded sampler:
     nothing a request gets depends on what else is in the batch.
The HTTP event loop never runs compute: it calls submit / cancel (thread-safe) and reads the
events each request's `emit` delivers.
"""

from __future__ import annotations

import collections
import threading
import time

from ..errors import LFM2Error
from .request import Event, GenRequest


class QueueFull(Exception):
    """The waiting queue is at its limit (HTTP 429)."""


class ShuttingDown(Exception):
    """The scheduler has stopped (HTTP 503)."""


class Scheduler:
    def __init__(self, executor, max_queue: int = 256, step_tokens: int = 256, min_chunk: int = 16, metrics=None):
        self.ex = executor
        self.num_slots, self.capacity = executor.num_slots, executor.capacity
        self.max_queue, self.step_tokens, self.min_chunk = int(max_queue), int(step_tokens), int(min_chunk)
        self.metrics = metrics
        self.waiting: collections.deque[GenRequest] = collections.deque()
        self.running: list[GenRequest] = []  # admission order
        self.free = list(range(self.num_slots))
        self.cond = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.steps = 0

    # ------------------------------------------------------------------ called from the HTTP side
    def submit(self, req: GenRequest) -> None:
        with self.cond:
            if self.stopping or self.error:
                raise ShuttingDown(self.error or "the server is shutting down")
            queued = len(self.waiting) - len(self.free)  # beyond the slots that will take them at the next step
            if queued >= self.max_queue:
                raise QueueFull(f"{queued} requests are waiting for a slot (limit {self.max_queue}); retry later")
            self.waiting.append(req)
            self.cond.notify()

    def cancel(self, req: GenRequest) -> None:
        """The client went away: the request is retired at the next step, its slot freed."""
        with self.cond:
            req.cancelled = True
            self.cond.notify()

    def load(self) -> dict:
        """Queue depth, running batch and KV-cache use, for /metrics and /health."""
        with self.cond:
            used = sum(r.fed + max(len(r.generated) - 1, 0) for r in self.running)
            return {"waiting": len(self.waiting), "running": len(self.running), "slots": self.num_slots,
                    "kv_used_tokens": used, "kv_capacity_tokens": self.num_slots * self.capacity,
                    "steps": self.steps}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="lfm2-engine-step", daemon=True)
        self.thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        """The step loop (the engine thread). Ends on shutdown; an engine failure fails every
        request in flight and stops the loop (the other ranks are then told to stop)."""
        try:
            while True:
                with self.cond:
                    while not self.stopping and not self.waiting and not self.running:
                        self.cond.wait()
                    if self.stopping:
                        break
                self.step()
        except Exception as e:  # noqa: BLE001 - reported to every client, then the loop ends
            self.error = f"engine step failed: {type(e).__name__}: {e}"
            kind = "typed" if isinstance(e, LFM2Error) else "bug"
            with self.cond:
                pending = list(self.running) + list(self.waiting)
                self.running.clear()
                self.waiting.clear()
            for r in pending:
                r.emit(Event([], "", [], "error", error=self.error))
            self.ex.abort(self.error)  # under MPI the ranks are out of step now: end the job
            if kind == "bug":
                raise
        finally:
            with self.cond:
                self.stopping = True
                pending = list(self.running) + list(self.waiting)
                self.running.clear()
                self.waiting.clear()
            for r in pending:
                r.emit(Event([], "", [], "error", error="the server is shutting down"))
            self.ex.close()

    # ------------------------------------------------------------------ one step
    def step(self) -> None:
        released = []
        with self.cond:
            for r in [r for r in self.running if r.cancelled or r.finish_reason]:
                self.running.remove(r)
                self.free.append(r.slot)
                released.append(r.slot)
                if r.cancelled and not r.finish_reason and self.metrics:
                    self.metrics.request_done("cancelled")
            for r in [r for r in self.waiting if r.cancelled]:
                self.waiting.remove(r)
                if self.metrics:
                    self.metrics.request_done("cancelled")
            self.free.sort()
            while self.waiting and self.free:
                r = self.waiting.popleft()
                r.slot = self._take_slot()
                self.running.append(r)
            batch = list(self.running)
        if not batch:
            self.ex.release(released)
            return
        decodes = [r for r in batch if not r.prefilling]
        budget = max(self.step_tokens - len(decodes), self.min_chunk)
        entries = [(r, r.next_input(1)) for r in decodes]
        for r in batch:
            if r.prefilling and budget > 0:
                chunk = r.next_input(budget)
                budget -= len(chunk)
                entries.append((r, chunk))
        t0 = time.perf_counter()
        logits = self.ex.step([r.slot for r, _ in entries], [t for _, t in entries], released)
        dt = time.perf_counter() - t0
        self.steps += 1
        new_tokens = 0
        for j, (r, toks) in enumerate(entries):
            if r.prefilling:
                r.fed += len(toks)
                if r.prefilling:
                    continue  # the rest of the prompt comes in the next steps
            first = r.t_first is None
            ev = r.accept(logits[j])
            new_tokens += 1
            if self.metrics:
                if first:
                    self.metrics.first_token(r.t_first - r.t_arrival)
                if ev.finish_reason:
                    self.metrics.request_done(ev.finish_reason)
            if not r.cancelled:
                r.emit(ev)
        if self.metrics:
            self.metrics.step(dt, sum(len(t) for _, t in entries), new_tokens)

    def _take_slot(self) -> int:
        """A free slot on the rank with the most free slots (dp/ep spread requests over ranks)."""
        by_rank: dict[int, list[int]] = {}
        for s in self.free:
            by_rank.setdefault(self.ex.slot_rank(s), []).append(s)
        best = max(sorted(by_rank), key=lambda k: len(by_rank[k]))
        s = by_rank[best][0]
        self.free.remove(s)
        return s
