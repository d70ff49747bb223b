"""Counters of speculative runs: rounds, acceptance, histogram, rollbacks, calls and timings.

`SpecStats.to_dict` gives the keys of the CLI's JSON report (docs/specdecode.md, "Output").
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
