"""Rank-aware logging: humans read stderr, programs read stdout.

info() prints on rank 0 only; warning()/error() print on every rank with a [rank r] prefix.
Level: 0 quiet, 1 normal (default), 2 verbose.
"""

from __future__ import annotations

import sys

_state = {"rank": 0, "size": 1, "level": 1}


def configure(rank: int = 0, size: int = 1, level: int = 1) -> None:
    _state.update(rank=rank, size=size, level=level)


def info(msg: str, level: int = 1) -> None:
    if _state["rank"] == 0 and _state["level"] >= level:
        print(f"[lfm2engine] {msg}", file=sys.stderr, flush=True)


def debug(msg: str) -> None:
    info(msg, level=2)


def warning(msg: str) -> None:
    pre = f"[rank {_state['rank']}] " if _state["size"] > 1 else ""
    print(f"[lfm2engine] {pre}warning: {msg}", file=sys.stderr, flush=True)


def error(msg: str) -> None:
    pre = f"[rank {_state['rank']}/{_state['size']}] " if _state["size"] > 1 else ""
    print(f"{pre}{msg}", file=sys.stderr, flush=True)
