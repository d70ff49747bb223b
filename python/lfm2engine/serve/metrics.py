"""Server metrics in the Prometheus text exposition format (version 0.0.4), no client library.

Counters and the time-to-first-token histogram are updated by the scheduler thread and read
by /metrics on the HTTP thread under one lock; gauges (queue depth, running batch, KV-cache
use) are read from the scheduler when the page is rendered. tokens/s is the generation rate
over the last `window` seconds.
"""

from __future__ import annotations

import collections
import threading
import time

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PREFIX = "lfm2"


class Metrics:
    def __init__(self, window: float = 10.0):
        self.lock = threading.Lock()
        self.window = window
        self.requests: collections.Counter = collections.Counter()  # finish reason / status -> count
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.steps = 0
        self.step_seconds = 0.0
        self.ttft_counts = [0] * len(TTFT_BUCKETS)
        self.ttft_sum = 0.0
        self.ttft_n = 0
        self.recent: collections.deque = collections.deque()  # (time, new tokens)

    def request_done(self, status: str) -> None:
        with self.lock:
            self.requests[status] += 1

    def prompt(self, n: int) -> None:
        with self.lock:
            self.prompt_tokens += n

    def first_token(self, seconds: float) -> None:
        with self.lock:
            self.ttft_sum += seconds
            self.ttft_n += 1
            for k, b in enumerate(TTFT_BUCKETS):
                if seconds <= b:
                    self.ttft_counts[k] += 1

    def step(self, seconds: float, tokens_in: int, tokens_out: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.steps += 1
            self.step_seconds += seconds
            self.generation_tokens += tokens_out
            self.recent.append((now, tokens_out))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self.recent and self.recent[0][0] < now - self.window:
            self.recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self.lock:
            self._trim(now)
            return sum(n for _, n in self.recent) / self.window

    def render(self, load: dict) -> str:
        """The /metrics page; `load` is Scheduler.load()."""
        tps = self.tokens_per_second()
        p = PREFIX
        lines: list[str] = []

        def metric(name, kind, help_, samples):
            lines.append(f"# HELP {p}_{name} {help_}")
            lines.append(f"# TYPE {p}_{name} {kind}")
            for labels, v in samples:
                lab = "{" + ",".join(f'{k}="{val}"' for k, val in labels.items()) + "}" if labels else ""
                lines.append(f"{p}_{name}{lab} {v:g}" if isinstance(v, float) else f"{p}_{name}{lab} {v}")

        with self.lock:
            reqs = sorted(self.requests.items())
            metric("requests_total", "counter", "Requests ended, by finish reason or status.",
                   [({"status": k}, v) for k, v in reqs] or [({"status": "stop"}, 0)])
            metric("prompt_tokens_total", "counter", "Prompt tokens admitted.", [({}, self.prompt_tokens)])
            metric("generation_tokens_total", "counter", "Tokens generated.", [({}, self.generation_tokens)])
            metric("engine_steps_total", "counter", "Engine steps run.", [({}, self.steps)])
            metric("engine_step_seconds_total", "counter", "Seconds spent in engine steps.",
                   [({}, float(self.step_seconds))])
            lines.append(f"# HELP {p}_time_to_first_token_seconds Time from arrival to the first generated token.")
            lines.append(f"# TYPE {p}_time_to_first_token_seconds histogram")
            for b, c in zip(TTFT_BUCKETS, self.ttft_counts):  # cumulative: first_token counts every bucket >= t
                lines.append(f'{p}_time_to_first_token_seconds_bucket{{le="{b:g}"}} {c}')
            lines.append(f'{p}_time_to_first_token_seconds_bucket{{le="+Inf"}} {self.ttft_n}')
            lines.append(f"{p}_time_to_first_token_seconds_sum {self.ttft_sum:g}")
            lines.append(f"{p}_time_to_first_token_seconds_count {self.ttft_n}")
        metric("generation_tokens_per_second", "gauge", f"Tokens generated per second over the last "
               f"{self.window:g} s.", [({}, float(tps))])
        metric("queue_depth", "gauge", "Requests waiting for a slot.", [({}, load["waiting"])])
        metric("running_requests", "gauge", "Requests in the running batch.", [({}, load["running"])])
        metric("slots", "gauge", "Sequence slots (the most requests that run at once).", [({}, load["slots"])])
        metric("kv_cache_used_tokens", "gauge", "Token positions held in the KV cache.", [({}, load["kv_used_tokens"])])
        metric("kv_cache_capacity_tokens", "gauge", "KV-cache budget: slots x context.",
               [({}, load["kv_capacity_tokens"])])
        use = load["kv_used_tokens"] / max(load["kv_capacity_tokens"], 1)
        metric("kv_cache_usage_ratio", "gauge", "Fraction of the KV-cache budget in use.", [({}, float(use))])
        return "\n".join(lines) + "\n"
