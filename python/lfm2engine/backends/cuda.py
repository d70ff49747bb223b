"""The `cuda` backend: `_core.cuda` ops on one NVIDIA GPU.

Weights, KV caches and conv states are `_core.cuda.Tensor`s uploaded once; per forward call only
the int32 ids / slots / positions go up (one upload) and the requested logits (or, for greedy
decoding, only their argmax ids) come down. Decode-shaped calls (one new token per sequence,
every row's logits) are captured as a CUDA Graph the second time a batch size is seen in a
session and replayed afterwards (LFM2_CUDA_GRAPHS=0 turns this off).

Precision by weight dtype: float32 GEMMs run on CUDA cores in fp32; float16 weights run on the
Tensor Cores (activations rounded to f16 per GEMM, fp32 accumulation); bfloat16 weights are
widened on CUDA cores; block-quantized weights (q8_0, q4_0, q4_k, q6_k block arrays of
lfm2engine.quant) are uploaded as they are (a device Tensor of the block dtype with NumPy's
block shape [..., K / block]) and dequantized inside the kernels to exactly their fp32 values
(fp32 activations and accumulation, CUDA cores), graph capture included. Unlike the CPU kernels, the bits of a row may depend on how many rows
share the call (kernels are chosen by shape); values agree with the CPU within rounding.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import BackendError
from . import Backend
from .cpu import core

GRAPH_MAX_TOKENS = 512  # decode steps up to this many rows are captured as graphs


class CudaBackend(Backend):
    name = "cuda"
    host_memory = False

    def __init__(self, module=None):
        """module: the `_core.cuda` namespace (default); tests pass a host emulation of it."""
        if module is None:
            c = core()
            if not c.has_cuda():
                raise BackendError("device='cuda': lfm2engine was built without CUDA (no nvcc at build time); "
                                   "rebuild with LFM2_CUDA=ON, or use device='cpu'")
            module = c.cuda
        if module.device_count() == 0:
            raise BackendError("device='cuda': no CUDA GPU is visible (_core.cuda.device_count() == 0); use "
                               "device='cpu'")
        self.ops = module
        self.Tensor = module.Tensor
        self.use_graphs = os.environ.get("LFM2_CUDA_GRAPHS", "1") != "0"

    def set_num_threads(self, n: int) -> None:
        pass

    # ------------------------------------------------------------- arrays
    def empty(self, shape, dtype="float32"):
        return self.Tensor.empty(tuple(shape), dtype)

    def zeros(self, shape, dtype="float32"):
        return self.Tensor.zeros(tuple(shape), dtype)

    def upload(self, a: np.ndarray):
        return self.Tensor.from_numpy(np.ascontiguousarray(a))

    def download(self, x) -> np.ndarray:
        return x.to_numpy()

    def write(self, dst, src: np.ndarray) -> None:
        dst.copy_(np.ascontiguousarray(src))

    def zero_(self, x) -> None:
        x.zero_()

    def add_(self, x, y) -> None:
        self.ops.add(x, y)

    def gather_rows(self, x, rows):
        out = self.empty((rows.shape[0], x.shape[1]))
        self.ops.embedding(out, x, rows)  # x [T, D] serves as the table
        return out

    def picked_values(self, logits, ids: np.ndarray) -> np.ndarray:
        """R floats come down (not the logits): the rows of logits [R, V] as a table [R V, 1]."""
        r, v = logits.shape
        flat = self.upload((np.arange(r, dtype=np.int64) * v + ids).astype(np.int32))
        return self.download(self.gather_rows(logits.reshape(r * v, 1), flat)).reshape(r)

    def release(self) -> None:
        self.ops.empty_cache()

    # ------------------------------------------------------------- CUDA Graphs
    def fast_forward(self, engine, session, ids, seq, pos, rows, u_out):
        """Decode-shaped steps through one CUDA Graph per row count T and session: the first
        call at a T runs eagerly (None: the shared loop), the second captures and replays."""
        t_ = len(ids)
        if (not self.use_graphs or u_out is not None or t_ > GRAPH_MAX_TOKENS
                or not np.array_equal(rows, np.arange(t_))):
            return None
        graphs = session.backend_cache.setdefault("graphs", {})  # T -> (graph, int32 buffer [3T], logits)
        packed = np.concatenate([ids, seq, pos]).astype(np.int32)
        g = graphs.get(t_)
        if g is None:
            if not graphs.setdefault(("seen", t_), False):
                graphs[("seen", t_)] = True
                return None
            buf = self.upload(packed)  # allocated and filled before the capture
            graph = self.ops.Graph()
            graph.begin()
            try:
                logits = engine.layer_loop(session, buf[0:t_], buf[t_ : 2 * t_], buf[2 * t_ :])
            finally:
                graph.end()
            graphs[t_] = g = (graph, buf, logits)
        else:
            g[1].copy_(packed)
        g[0].replay()
        return g[2]


__all__ = ["CudaBackend"]
