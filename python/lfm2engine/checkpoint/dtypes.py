"""Safetensors dtype tags and the conversions between them (F32, F16, BF16).

BF16 tensors are handled as their uint16 bit patterns; float32 is the compute format.
"""

from __future__ import annotations

import numpy as np

# safetensors dtype tag -> (numpy storage dtype, bytes per element)
DTYPE_TAGS = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}
# safetensors dtype tag <-> the dtype name of config.json ("torch_dtype" / "dtype")
TAG_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def as_f32(arr: np.ndarray, tag: str) -> np.ndarray:
    """An array stored with dtype tag `tag` (bf16 as uint16 bits) as float32."""
    return bf16_to_f32(arr) if tag == "BF16" else arr.astype(np.float32, copy=False)


def f32_to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even; NaN stays NaN."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bf16_to_f32(a: np.ndarray) -> np.ndarray:
    """bf16 bits (uint16) -> float32, exactly."""
    return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode(a: np.ndarray, tag: str) -> np.ndarray:
    """float32 (or bf16 bits, kept as they are) -> the storage array of dtype tag `tag`."""
    if a.dtype == np.uint16:  # already bf16 bits
        return np.ascontiguousarray(a)
    a32 = np.ascontiguousarray(a, dtype=np.float32)
    if tag == "F32":
        return a32
    return a32.astype(np.float16) if tag == "F16" else f32_to_bf16(a32)


# exponent bits of each storage dtype: all ones <=> Inf or NaN
_EXPONENT = {np.dtype(np.float32): (np.uint32, 0x7F800000), np.dtype(np.float16): (np.uint16, 0x7C00),
             np.dtype(np.uint16): (np.uint16, 0x7F80)}  # uint16: bf16 bits
_CHUNK = 1 << 20


def all_finite(a: np.ndarray) -> bool:
    """True when no element of a float32, float16 or bf16-bits (uint16) array is NaN or Inf.

    Vectorized over the exponent bits, in chunks of 1 Mi elements (no full-size temporary):
    about 10 GB/s on one core, so a check of every weight costs a fraction of reading it."""
    bits, mask = _EXPONENT[a.dtype]
    flat = np.ascontiguousarray(a).reshape(-1).view(bits)
    buf = np.empty(min(_CHUNK, flat.size), bits)
    for i in range(0, flat.size, _CHUNK):
        part = buf[: min(_CHUNK, flat.size - i)]
        np.bitwise_and(flat[i : i + _CHUNK], bits(mask), out=part)
        if part.max() == mask:
            return False
    return True
