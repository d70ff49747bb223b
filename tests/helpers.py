"""Shared test helpers: tolerances derived from precision (STYLE.md 6), never magic numbers.

assert_close(actual, ref, dtype=..., k=...) accepts |actual - ref| <= tol * (|ref| + scale) with
tol = factor * eps(dtype) * sqrt(k): eps is the unit roundoff of the computation's dtype, k the
length of the longest reduction feeding one output (the random-walk growth of rounding error),
and scale the RMS of ref (so outputs that cancel to ~0 are judged against the size of their
terms, not against themselves). On failure it reports the max abs / rel error, the worst index
and the first mismatching pairs.
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import pytest
from lfm2engine import quant
from lfm2engine.backends.cases import as_weight  # noqa: F401  (re-exported: float32 weights as f32 / bf16 bits / f16)

# Unit roundoff (machine epsilon) per dtype name; bf16 keeps 8 significant bits.
_EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
}


def eps(dtype) -> float:
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return _EPS[name]


def tolerance(dtype=np.float32, k: int = 1, factor: float = 4.0) -> float:
    """Relative tolerance of a length-k fp reduction in `dtype`: factor * eps * sqrt(k)."""
    return factor * eps(dtype) * math.sqrt(max(int(k), 1))


def assert_close(actual, ref, *, dtype=np.float32, k: int = 1, factor: float = 4.0, scale=None, name: str = "") -> None:
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, f"{name}: shape {actual.shape} != reference shape {ref.shape}"
    if actual.size == 0:
        return
    same_nan = np.isnan(actual) == np.isnan(ref)
    assert same_nan.all(), f"{name}: NaN pattern differs at {np.argwhere(~same_nan)[:5].tolist()}"
    fin = ~np.isnan(ref)
    a, r = actual[fin], ref[fin]
    inf = np.isinf(r)
    assert np.array_equal(a[inf], r[inf]), f"{name}: infinities differ"
    a, r = a[~inf], r[~inf]
    if a.size == 0:
        return
    if scale is None:
        scale = float(np.sqrt(np.mean(r * r)))
    tol = tolerance(dtype, k, factor)
    err = np.abs(a - r)
    bound = tol * (np.abs(r) + scale) + np.finfo(np.float64).tiny
    bad = err > bound
    if bad.any():
        full_err = np.zeros(actual.shape)
        full_err[fin] = np.where(np.isinf(ref[fin]), 0.0, np.abs(actual[fin] - ref[fin]))
        worst = np.unravel_index(int(np.argmax(full_err)), actual.shape)
        rel = err / np.maximum(np.abs(r), scale if scale > 0 else 1.0)
        idx = np.argwhere(bad)[:5].ravel().tolist()
        pairs = [(float(a[i]), float(r[i])) for i in idx]
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.size} elements outside tol={tol:.3g} (dtype={np.dtype(dtype).name if not isinstance(dtype, str) else dtype}, "
            f"k={k}, scale={scale:.3g}); max abs err {err.max():.3g}, max rel err {rel.max():.3g}, "
            f"worst index {tuple(int(i) for i in worst)}; first (actual, ref) pairs {pairs}"
        )


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even (NaN -> 0x7FC0)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32)
    out = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    out[np.isnan(a)] = 0x7FC0
    return out


def bf16_to_f32(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def weight_as_f64(w: np.ndarray) -> np.ndarray:
    """The exact value of a weight array (f32, f16, bf16 bits in uint16, or a quantized block array:
    its dequantized float32 values, lfm2engine.quant.dequantize) as float64."""
    if quant.is_quantized(w):
        return quant.dequantize(w).astype(np.float64)
    if w.dtype == np.uint16:
        return bf16_to_f32(w).astype(np.float64)
    return w.astype(np.float64)


def random_blocks(rng, qtype: str, rows: int, k: int) -> np.ndarray:
    """A [rows, k / block] block array of quantized type `qtype` with every byte random (codes, packed
    scales, signs) except the f16 scales d / dmin, which are random FINITE halves (subnormal to 65504,
    either sign); row 0's first block is all zero bytes. Covers values no quantizer would write."""
    q = quant.get(qtype)
    a = rng.integers(0, 256, (rows, k // q.block * q.nbytes), dtype=np.uint8).view(q.dtype).reshape(rows, -1)
    for field in ("d", "dmin"):
        if field in q.dtype.names:
            bits = rng.integers(0, 1 << 16, a.shape, dtype=np.uint16)
            bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF  # exponent all ones (inf / NaN) -> a finite value
            a[field] = bits.view(np.float16)
    a[0, 0] = np.zeros((), q.dtype)
    return a


# ----------------------------------------------------------------------------- what may skip


def gpu_visible() -> bool:
    """An NVIDIA device node exists (a driver is loaded), whatever lfm2engine was built with."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def core_required() -> str | None:
    """Why a missing or broken C++ core must FAIL here rather than skip, or None where it may skip:
    in CI (CI=true), under scripts/test.sh (it builds the core and sets LFM2_REQUIRE_CORE=1), and
    wherever a GPU is visible."""
    if os.environ.get("CI", "").lower() == "true":
        return "CI=true"
    if os.environ.get("LFM2_REQUIRE_CORE") == "1":
        return "LFM2_REQUIRE_CORE=1 (scripts/test.sh builds the core)"
    if gpu_visible():
        return "a GPU is visible"
    return None


def import_core():
    """lfm2engine._core; a module-level skip only where core_required() allows it."""
    try:
        from lfm2engine import _core
    except ImportError as e:
        why = core_required()
        if why:
            pytest.fail(f"lfm2engine._core does not import ({e}); {why}, so a broken build fails instead of "
                        "skipping", pytrace=False)
        pytest.skip(f"lfm2engine._core is not built ({e})", allow_module_level=True)
    return _core


def cuda_missing(core) -> str | None:
    """Why CUDA tests cannot run here (None: they run). A build without CUDA, or a CUDA build that
    sees no device, on a host where a GPU is visible fails instead of skipping."""
    why = (not core.has_cuda() and "lfm2engine was built without CUDA (no nvcc at build time)") or (
        core.cuda.device_count() == 0 and "no CUDA GPU is visible (_core.cuda.device_count() == 0)") or None
    if why and gpu_visible():
        pytest.fail(f"{why}, but /dev/nvidia* exists: rebuild with LFM2_CUDA=ON (CUDA tests must not skip on a "
                    "GPU host)", pytrace=False)
    return why


def small_model():
    """A 3-layer MoE config (conv, attention, conv; 4 experts, D = 32, V = 50) and its synthetic
    float32 tensors {name: array}: the checkpoint tests' smallest complete model."""
    from lfm2engine.checkpoint import expected_tensors
    from lfm2engine.synthetic import make_tensor, preset_config

    cfg = preset_config("default").replace(num_hidden_layers=3, layer_types=("conv", "full_attention", "conv"),
                                           num_experts=4, hidden_size=32, num_attention_heads=4,
                                           num_key_value_heads=2, vocab_size=50, intermediate_size=24,
                                           moe_intermediate_size=8)
    return cfg, {n: make_tensor(cfg, n, s) for n, s in expected_tensors(cfg).items()}


ALL_SIMD_LEVELS = ("avx512", "avx2", "scalar")


def simd_levels(core) -> tuple[str, ...]:
    """The SIMD levels this CPU runs, best first: CPU tests run at each of them."""
    return ALL_SIMD_LEVELS[ALL_SIMD_LEVELS.index(core.detected_simd_level()):]


def set_simd_level(core, level: str) -> str:
    core.set_simd_level(level)
    assert core.simd_level() == level
    return level


def reset_core(core) -> None:
    """Back to the CPU's best SIMD level and the default thread count (after a test changed them)."""
    core.set_simd_level(core.detected_simd_level())
    core.set_num_threads(0)
