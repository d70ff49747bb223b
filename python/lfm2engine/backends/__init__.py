"""Backends as values: the few primitives that really differ between devices.

An Engine and its Sessions are written once (engine.py, session.py) over a `Backend`. A backend
supplies the op namespace (`ops`: the op contract of csrc/cpu/ops.h, outputs first, written in
place), allocation, host transfers, the residual add and the row gather, and optionally a fast
path for plain forward passes (the fused C++ layer loop on the CPU, CUDA Graph replay on the
GPU). Everything else (weights layout, blocks, the layer loop, caches, trees, generation) is
shared. Backends:

  numpy  the op contract in plain NumPy (numpy_ops.py): the engine without the compiled core,
         row-batch invariant, slow; for tests and debugging
  cpu    `_core.cpu` (SIMD + OpenMP), with the fused layer loop `_core.cpu.Model`
  cuda   `_core.cuda` on one GPU, device tensors, CUDA Graphs for decode-shaped steps

Capabilities are attributes, checked in one place each by their users: `host_memory` (arrays
are NumPy arrays: the MPI expert/tensor-parallel executors need it) and `has_profile`.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

DEVICES = ("cpu", "cuda", "numpy")


class Backend:
    """The backend seam. Subclasses set `name`, `ops` and override what differs."""

    name = "?"
    host_memory = True  # arrays are numpy.ndarrays
    has_profile = False  # fused_model() offers set_profiling()/profile()

    # ------------------------------------------------------------- arrays
    def empty(self, shape, dtype="float32"):
        return np.empty(shape, dtype)

    def zeros(self, shape, dtype="float32"):
        return np.zeros(shape, dtype)

    def upload(self, a: np.ndarray):
        """A backend array holding `a` (C-contiguous, dtype kept). Host backends do not copy."""
        return np.ascontiguousarray(a)

    def download(self, x) -> np.ndarray:
        """x as a NumPy array: x itself on host backends, a copy from the device otherwise."""
        return x

    def write(self, dst, src: np.ndarray) -> None:
        """dst[...] = src (same shape); nothing to do where src is dst (a downloaded host view)."""
        if src is not dst:
            dst[...] = src

    def zero_(self, x) -> None:
        x[...] = 0

    def add_(self, x, y) -> None:
        """The residual add: x += y."""
        x += y

    def gather_rows(self, x, rows):
        """x[rows] as a new C-contiguous array; rows [R] int32 (a backend array)."""
        return np.ascontiguousarray(x[rows])

    def picked_values(self, logits, ids: np.ndarray) -> np.ndarray:
        """Host float32 [R]: logits[r, ids[r]] of backend logits [R, V] and host ids [R]."""
        return np.asarray(logits)[np.arange(len(ids)), ids]

    def release(self) -> None:
        """Give cached memory back (between large models); nothing on host backends."""

    # ------------------------------------------------------------- fast paths
    def fused_model(self, config, weights):
        """A whole-model forward for plain passes, or None (then the shared layer loop runs)."""
        return None

    def fast_forward(self, engine, session, ids, seq, pos, rows, u_out):
        """Logits of a plain pass (no tree, mask, skipped layer or replaced MoE) as a backend
        array, or None to run the shared layer loop. Host int32 arrays in."""
        return None


def get_backend(device) -> Backend:
    """The backend for a device name ('cpu', 'cuda', 'numpy'), or a Backend passed through."""
    if isinstance(device, Backend):
        return device
    if device == "cpu":
        from .cpu import CpuBackend

        return CpuBackend()
    if device == "cuda":
        from .cuda import CudaBackend

        return CudaBackend()
    if device == "numpy":
        from .cpu import NumpyBackend

        return NumpyBackend()
    raise InputError(f"device {device!r} is not supported; choose from {', '.join(DEVICES)}")


__all__ = ["Backend", "DEVICES", "get_backend"]
