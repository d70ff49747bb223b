"""Scaling laws of the form L(N, D) = A / N^alpha + B / D^beta + E: loss, compute-optimal allocation, fits.

What it is: the closed-form optimum of L under the training-compute constraint C = 6 N D, an
independent numerical optimum (golden-section search in log N) that checks it, iso-FLOP curves,
and a fit of the five constants to (N, D, loss) observations. What it is not: a trainer or a
statement that these constants describe any model of ours. Defaults are the constants the course
uses (Chinchilla's approach-3 fit, Hoffmann et al. 2022, with beta rounded to 0.29).
Pure Python; `fit` alone needs NumPy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import InputError

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, found {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a finite number > 0, found {value!r}")
    return float(value)


@dataclass(frozen=True)
class ScalingLaw:
    """L(N, D) = A / N^alpha + B / D^beta + E  (N parameters, D training tokens, L nats/token)."""

    A: float = 406.4
    alpha: float = 0.34
    B: float = 410.7
    beta: float = 0.29
    E: float = 1.69

    def __post_init__(self):
        for name in ("A", "alpha", "B", "beta"):
            _positive(name, getattr(self, name))
        e = self.E
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e < 0:
            raise InputError(f"E must be a finite number >= 0, found {e!r}")

    def loss(self, n: float, d: float) -> float:
        """Predicted loss for N parameters trained on D tokens."""
        n = _positive("N", n)
        d = _positive("D", d)
        return self.A / n**self.alpha + self.B / d**self.beta + self.E

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_LAW = ScalingLaw()


def _check_compute(c) -> float:
    return _positive("compute C (FLOPs)", c)


def optimal_allocation(compute: float, law: ScalingLaw = DEFAULT_LAW) -> tuple[float, float]:
    """(N_opt, D_opt) minimising L(N, D) subject to 6 N D = C, in closed form.

    With D = C / (6N), dL/dN = 0 gives alpha A N^-alpha = beta B D^-beta, whence
    N_opt = G (C/6)^(beta/(alpha+beta)),  D_opt = (C/6)^(alpha/(alpha+beta)) / G,
    G = (alpha A / (beta B))^(1/(alpha+beta)).  N_opt * D_opt = C / 6 exactly.
    """
    c6 = _check_compute(compute) / 6.0
    s = law.alpha + law.beta
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / s)
    n = g * c6 ** (law.beta / s)
    d = c6 ** (law.alpha / s) / g
    return n, d


def loss_at_compute(n: float, compute: float, law: ScalingLaw = DEFAULT_LAW) -> float:
    """L(N, C / 6N): the loss along the iso-FLOP curve of budget C."""
    n = _positive("N", n)
    return law.loss(n, _check_compute(compute) / (6.0 * n))


def optimal_allocation_numeric(compute: float, law: ScalingLaw = DEFAULT_LAW, rel_tol: float = 1e-12,
                               max_iter: int = 400) -> tuple[float, float]:
    """(N_opt, D_opt) found by golden-section search of L(N, C/6N) over log N.

    Independent of the closed form. L(N, C/6N) is strictly convex in log N (a sum of two
    exponentials in log N plus a constant), so the bracket [1, C/6] (at least one parameter and
    at least one token) holds a single minimum. The search stops when the bracket in log N is
    narrower than rel_tol, i.e. N is known to a relative error of about rel_tol.
    """
    c = _check_compute(compute)
    _positive("rel_tol", rel_tol)
    lo, hi = 0.0, math.log(c / 6.0)
    if hi <= lo:
        raise InputError(f"compute C = {c:g} FLOPs is too small: it must exceed 6 (one parameter, one token)")

    def f(x: float) -> float:
        return loss_at_compute(math.exp(x), c, law)

    a, b = lo, hi
    x1 = b - _GOLDEN * (b - a)
    x2 = a + _GOLDEN * (b - a)
    f1, f2 = f(x1), f(x2)
    for _ in range(max_iter):
        if b - a <= rel_tol:
            break
        if f1 <= f2:  # minimum lies in [a, x2]
            b, x2, f2 = x2, x1, f1
            x1 = b - _GOLDEN * (b - a)
            f1 = f(x1)
        else:  # minimum lies in [x1, b]
            a, x1, f1 = x1, x2, f2
            x2 = a + _GOLDEN * (b - a)
            f2 = f(x2)
    n = math.exp(0.5 * (a + b))
    return n, c / (6.0 * n)


def isoflop_curve(compute: float, n_values, law: ScalingLaw = DEFAULT_LAW) -> list[float]:
    """Loss at each N in n_values for a fixed budget C (D = C / 6N)."""
    return [loss_at_compute(n, compute, law) for n in n_values]


def fit(n, d, loss, alphas=None, betas=None, refine: int = 3) -> ScalingLaw:
    """Least-squares fit of (A, alpha, B, beta, E) to observed losses.

    Variable projection: for fixed (alpha, beta) the model is linear in (A, B, E), solved exactly by
    least squares; (alpha, beta) is searched on a grid, then the grid is narrowed around the best
    point `refine` times. Observations: three equal-length sequences, all entries > 0, at least 5.
    Raises InputError when the data cannot determine the law (too few points, fitted A, B <= 0).
    """
    import numpy as np

    n = np.asarray(n, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    if not (n.ndim == d.ndim == y.ndim == 1) or not (n.shape == d.shape == y.shape):
        raise InputError(f"fit needs three 1-D sequences of equal length, found shapes {n.shape}, {d.shape}, {y.shape}")
    if n.size < 5:
        raise InputError(f"fit needs at least 5 observations for 5 constants, found {n.size}")
    for name, arr in (("N", n), ("D", d), ("loss", y)):
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise InputError(f"fit: every {name} must be finite and > 0")
    ln_n, ln_d = np.log(n), np.log(d)
    alphas = np.linspace(0.05, 1.0, 40) if alphas is None else np.asarray(alphas, dtype=np.float64)
    betas = np.linspace(0.05, 1.0, 40) if betas is None else np.asarray(betas, dtype=np.float64)

    def solve(a: float, b: float):
        x = np.stack([np.exp(-a * ln_n), np.exp(-b * ln_d), np.ones_like(y)], axis=1)  # [n_obs, 3]
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        r = x @ coef - y
        return float(r @ r), coef

    best = None
    for level in range(refine + 1):
        for a in alphas:
            for b in betas:
                err, coef = solve(float(a), float(b))
                if best is None or err < best[0]:
                    best = (err, float(a), float(b), coef)
        if level < refine:  # zoom: the new grid spans two old grid steps either side of the best point
            da = 2 * (alphas[1] - alphas[0]) if alphas.size > 1 else 0.0
            db = 2 * (betas[1] - betas[0]) if betas.size > 1 else 0.0
            alphas = np.linspace(max(best[1] - da, 1e-3), best[1] + da, 21)
            betas = np.linspace(max(best[2] - db, 1e-3), best[2] + db, 21)
    _, a, b, (ca, cb, ce) = best
    if ca <= 0 or cb <= 0:
        raise InputError(f"fit: the data do not determine a decreasing law (fitted A={ca:.4g}, B={cb:.4g})")
    return ScalingLaw(A=float(ca), alpha=a, B=float(cb), beta=b, E=max(float(ce), 0.0))
