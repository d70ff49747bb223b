"""Engines with block-quantized weights for the CUDA backend's tests (tests/test_ops_cuda.py on a
GPU, tests/test_backend_cuda_emulated.py everywhere), built from a float32 engine's host weights
with lfm2engine.quant, so that they need nothing of the quantized loading path.

`quantized(w, name)` quantizes every projection matrix (fused q|k|v, out_proj, conv in/out
projections, the dense gate|up, the expert stacks, the embedding and so the tied head) to block
type `name`; norms, conv taps, router and expert bias stay float32, as for bf16. The dense FFN's
down projection stays float32 too: the layer loop reads the FFN width from its shape, which a
block array gives in blocks. `dequantized(w)` is the same model with every block array replaced
by its float32 values (quant.dequantize): the exact numerics mode's reference.
"""

from __future__ import annotations

import numpy as np
from lfm2engine import Engine, quant
from lfm2engine.backends import get_backend
from lfm2engine.weights import Weights

LAYER_MATRICES = ("wqkv", "wo", "in_proj", "out_proj", "w13", "ew13", "ew2")  # quantized; "w2" stays float32


def _map(w: Weights, fn) -> Weights:
    """A mutable copy of host weights `w` with fn applied to the embedding/head and each layer matrix."""
    layers = []
    for lw in w.layers:
        c = lw.copy()
        for name in LAYER_MATRICES:
            a = getattr(c, name)
            if a is not None:
                setattr(c, name, fn(a))
        layers.append(c)
    out = w.with_layers(layers)
    tied = w.head is w.embed
    out.embed = fn(w.embed)
    out.head = out.embed if tied else fn(w.head)
    return out


def quantized(w: Weights, name: str) -> Weights:
    return _map(w, lambda a: np.ascontiguousarray(quant.quantize(np.asarray(a, np.float32), name)))


def dequantized(w: Weights) -> Weights:
    return _map(w, lambda a: np.ascontiguousarray(quant.dequantize(a)))


def uploaded(w: Weights, backend) -> Weights:
    """w (host arrays) with every array handed to `backend.upload`."""
    def up(a):
        return None if a is None else backend.upload(a)

    layers = []
    for lw in w.layers:
        c = lw.copy()
        for name in c.NAMES:
            setattr(c, name, up(getattr(c, name)))
        layers.append(c)
    out = w.with_layers(layers)
    tied = w.head is w.embed
    out.embed, out.final_norm = up(w.embed), up(w.final_norm)
    out.head = out.embed if tied else up(w.head)
    return out


def engine_pair(base: Engine, name: str, backend) -> tuple[Engine, Engine]:
    """(engine on `backend` with base's weights quantized to `name`, float32 CPU engine on their
    dequantized values). base: a float32 engine on the CPU (host weights); backend: a name or Backend."""
    backend = get_backend(backend)
    q = quantized(base.w, name)
    quant_engine = Engine(base.config, uploaded(q, backend), backend)
    reference = Engine(base.config, dequantized(q), "cpu")
    return quant_engine, reference
