"""lfm2engine: an MPI-first inference engine for LFM2 / LFM2-MoE with a C++/CUDA core.

Public API: LFM2Config, Engine (lazy: importing the package does not load the compiled
extension, so config/checkpoint/costs tools work without it), the error types.
"""

from .config import LFM2Config
from .errors import BackendError, CheckpointError, ConfigError, InputError, LFM2Error, ParallelError

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
