"""Host-memory backends: `cpu` (the compiled `_core.cpu` ops, SIMD + OpenMP, and the fused C++
layer loop as its fast path) and `numpy` (the op contract in plain NumPy, numpy_ops.py).

Arrays are NumPy arrays on both, so uploads and downloads cost nothing and the MPI executors
(parallel/executors.py) can slice weights and exchange rows directly.
"""

from __future__ import annotations

from ..errors import BackendError
from . import Backend


def core():
    """The compiled extension, or a BackendError that says how to build it."""
    try:
        from .. import _core
    except ImportError as e:  # pragma: no cover - depends on the build
        raise BackendError(
            f"the compiled extension lfm2engine._core is not available ({e}); "
            "hint: install the package with `pip install -e .` so CMake builds it, or use device='numpy'"
        ) from None
    return _core


class CpuBackend(Backend):
    name = "cpu"
    has_profile = True

    def __init__(self):
        self.core = core()
        self.ops = self.core.cpu

    def set_num_threads(self, n: int) -> None:
        self.core.set_num_threads(int(n))

    def fused_model(self, config, weights):
        return self.ops.Model(config, weights)

    def fast_forward(self, engine, session, ids, seq, pos, rows, u_out):
        return engine.fused_model().forward(ids, seq, pos, session.k, session.v, session.conv, u_out, rows)


class NumpyBackend(Backend):
    """The engine on the NumPy op contract: no compiled code, row-batch invariant (numpy_ops)."""

    name = "numpy"

    def __init__(self):
        from . import numpy_ops

        self.ops = numpy_ops

    def set_num_threads(self, n: int) -> None:
        pass


__all__ = ["CpuBackend", "NumpyBackend", "core"]
