"""Typed errors of lfm2engine.

Every user-facing failure is one of these, with a message naming the file, key, tensor or
argument, expected vs found. Value-like problems subclass ValueError; backend/parallel
failures subclass RuntimeError.
"""


class LFM2Error(Exception):
    """Base class of every lfm2engine error."""


class ConfigError(LFM2Error, ValueError):
    """config.json is missing, malformed, or describes an unsupported model."""


class CheckpointError(LFM2Error, ValueError):
    """A safetensors checkpoint is missing, truncated, corrupt, or does not match the config."""


class InputError(LFM2Error, ValueError):
    """Bad user input: token ids, prompt lengths, workload files, CLI arguments."""


class BackendError(LFM2Error, RuntimeError):
    """The compute backend cannot do what was asked (no CUDA, no extension, kernel failure)."""


class ParallelError(LFM2Error, RuntimeError):
    """An MPI plan cannot run: bad world size, ranks disagree, a peer failed."""


class NumericsError(BackendError):
    """A computation produced NaN or Inf (logits): the result would be wrong, so it is refused."""
