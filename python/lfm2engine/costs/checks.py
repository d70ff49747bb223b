"""Argument checks shared by the costs modules: an integer or a finite number within bounds.

What it is: two validators that turn a bad function argument into an InputError naming it. What
it is not: config.json checking (configs.py and lfm2engine.config raise ConfigError for that).
"""

from __future__ import annotations

import math

from ..cli import at_least
from ..errors import InputError


def check_int(name: str, v, minimum: int = 1) -> int:
    """v if it is an int (not a bool) >= minimum, else InputError naming `name`."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"{name} must be an integer, found {v!r}")
    at_least(name, v, minimum)
    return v


def check_number(name: str, v, minimum: float = 0.0, strict: bool = True, maximum: float | None = None) -> float:
    """float(v) if v is a finite number above minimum (or at it when strict=False) and <= maximum."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{name} must be a finite number, found {v!r}")
    if (v <= minimum) if strict else (v < minimum):
        raise InputError(f"{name} must be {'>' if strict else '>='} {minimum:g}, found {v!r}")
    if maximum is not None and v > maximum:
        raise InputError(f"{name} must be <= {maximum:g}, found {v!r}")
    return float(v)
