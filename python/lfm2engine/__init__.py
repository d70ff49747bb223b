"""lfm2engine: an MPI-first inference engine for LFM2 / LFM2-MoE with a C++/CUDA core.

Public API: LFM2Config, Engine (lazy: importing the package does not load the compiled
extension, so config/checkpoint/costs tools work without it), the error types.

Importing the package sets OMP_WAIT_POLICY=PASSIVE unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is
already set: OpenMP workers then sleep between parallel regions instead of spinning, so on a
busy machine they neither take cores from the threads doing the work nor wait for a descheduled
spinner (a 20-token generate on a loaded 2-core box: see analysis/cpu_performance.md). It must
happen before the OpenMP runtime is loaded with lfm2engine._core.
"""

import os as _os

if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from .config import LFM2Config  # noqa: E402
from .errors import BackendError, CheckpointError, ConfigError, InputError, LFM2Error, ParallelError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "LFM2Config",
    "Engine",
    "load_model",
    "LFM2Error",
    "ConfigError",
    "CheckpointError",
    "InputError",
    "BackendError",
    "ParallelError",
    "__version__",
]


def __getattr__(name):
    if name in ("Engine", "load_model"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'lfm2engine' has no attribute {name!r}")
