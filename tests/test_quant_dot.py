"""The quant-dot numerics mode for block-quantized weights (`_core.set_quant_dot`, LFM2_QUANT_DOT=1):
int8 activations per 32, integer dot products, fp32 scaling (csrc/cpu/gemm_qdot.h).

The mode is defined bit for bit (lfm2engine.quant_dot, NumPy), and every SIMD path (avx512 with
VNNI, avx2, scalar) must give exactly those bits: the activation quantization against
`quantize_activations`, the GEMM against `qdot_reference`, for each weight type, K tails (K a
multiple of 32 but not of 256 or 512), zero and non-finite blocks, and row-batch invariance
(rows alone, sub-batches, reordered, 1-3 threads). A bound check ties the mode to the exact
product: it may differ from it by no more than the activations' rounding explains.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_close, import_core, reset_core, set_simd_level, simd_levels
from lfm2engine import quant
from lfm2engine.errors import InputError
from lfm2engine.quant_dot import qdot_reference, quantize_activations

_core = import_core()
cpu = _core.cpu

LEVELS = simd_levels(_core)
TYPES = ("q8_0", "q4_0", "q4_k", "q6_k")


@pytest.fixture(autouse=True)
def _restore_core_state():
    was = _core.quant_dot()
    yield
    _core.set_quant_dot(was)
    reset_core(_core)


@pytest.fixture(params=LEVELS)
def level(request):
    return set_simd_level(_core, request.param)


@pytest.fixture
def quant_dot_on():
    _core.set_quant_dot(True)
    assert _core.quant_dot()


def weights(rng, name, n, k, zero_blocks=False):
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.01, 2.0, size=(n, 1)).astype(np.float32)
    if zero_blocks:  # whole blocks of zeros: d = 0 (and q4_k's dmin = 0)
        blk = quant.get(name).block
        w[::3, :blk] = 0
        w[1, :] = 0
    return quant.quantize(w, name)


def activations(rng, m, k):
    """Rows of very different sizes, some blocks zero, one below 2^-120, and exact .5 ties."""
    x = rng.standard_normal((m, k)).astype(np.float32) * np.float32(10.0) ** rng.integers(-3, 3, size=(m, 1))
    x = x.astype(np.float32)
    if m > 2 and k >= 64:
        x[1, 32:64] = 0
        x[2, :32] = np.float32(1e-37) * rng.standard_normal(32).astype(np.float32)
    if m > 3:  # amax = 127 so that x · (127 / amax) = x: halves round to even
        x[3, :32] = np.arange(32, dtype=np.float32) - np.float32(15.5)
        x[3, 0] = 127
    return x


def fast_gemm(x, w):
    out = np.full((x.shape[0], w.shape[0]), np.nan, np.float32)
    cpu.gemm(out, x, w)
    return out


# ----------------------------------------------------------------------------- activations


def test_activation_quantization_is_bit_exact(level, rng):
    x = activations(rng, 9, 512)
    x[4, 64:96] *= np.float32(1e30)                  # large but finite
    x[5, 100] = np.nan                               # a NaN block: d = NaN, q = 0
    x[6, 200] = -np.inf
    q, d = _core.quantize_activations(x)
    q_ref, d_ref = quantize_activations(x)
    assert q.dtype == np.int8 and d.dtype == np.float32 and d.shape == (9, 16)
    assert np.array_equal(q, q_ref)
    assert np.array_equal(d.view(np.uint32), d_ref.view(np.uint32))
    assert np.isnan(d[5, 3]) and not q[5, 96:128].any() and np.isnan(d[6, 6])
    assert d[1, 1] == 0 and d[2, 0] == 0 and not q[2, :32].any()  # zero and tiny blocks
    assert np.abs(q).max() == 127
    assert list(q[3, 1:6]) == [-14, -14, -12, -12, -10]  # -14.5 -> -14, -13.5 -> -14, ... (half to even)


def test_activation_quantization_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        _core.quantize_activations(np.zeros((2, 40), np.float32))
    with pytest.raises(InputError):
        quantize_activations(np.zeros((2, 40), np.float32))


# ----------------------------------------------------------------------------- gemm


# (M, N, K): K tails (q8_0 / q4_0: a multiple of 32 only; k-quants: of 256 but not 512), N not a
# multiple of any NR, M across the tile heights.
# K > 2048 runs in K blocks of regrouped weights (accumulators spilled between them).
SHAPES = {
    "q8_0": [(1, 7, 32), (5, 13, 96), (17, 33, 544), (3, 37, 1024), (3, 21, 2592)],
    "q4_0": [(1, 7, 32), (5, 13, 96), (17, 33, 544), (3, 37, 1024), (3, 21, 2592)],
    "q4_k": [(1, 5, 256), (6, 19, 768), (13, 35, 1792), (5, 17, 2816)],
    "q6_k": [(1, 5, 256), (6, 19, 768), (13, 35, 1792), (5, 17, 2816)],
}


@pytest.mark.parametrize("name", TYPES)
def test_gemm_equals_the_definition_bit_for_bit(level, quant_dot_on, name, rng):
    for m, n, k in SHAPES[name]:
        x = activations(rng, m, k)
        w = weights(rng, name, n, k, zero_blocks=True)
        out = fast_gemm(x, w)
        ref = qdot_reference(x, w)
        assert np.array_equal(out, ref), f"{name} {level} M={m} N={n} K={k}: max diff {np.abs(out - ref).max()}"


@pytest.mark.parametrize("name", TYPES)
def test_gemm_is_the_exact_product_up_to_activation_rounding(quant_dot_on, name, rng):
    """|fast - x·ŵ| ≤ Σ_k |x_k − q_k d_k| · |ŵ_k| (+ fp32 rounding): the mode really multiplies by
    these weights, and only the activations are rounded."""
    m, n, k = 4, 23, 1024
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = weights(rng, name, n, k)
    wd = quant.dequantize(w).astype(np.float64)
    q, d = quantize_activations(x)
    xr = q.astype(np.float64) * np.repeat(d.astype(np.float64), 32, axis=1)
    bound = np.abs(x - xr) @ np.abs(wd).T
    exact = x.astype(np.float64) @ wd.T
    out = fast_gemm(x, w)
    assert_close(out, xr @ wd.T, k=k, factor=8.0, name=f"{name}: the product with rounded activations")
    slack = 8 * np.finfo(np.float32).eps * np.sqrt(k) * (np.abs(x) @ np.abs(wd).T)
    assert (np.abs(out - exact) <= bound + slack).all()
    assert (np.abs(out - exact) > 0).any()  # and the mode is on: it is not the exact product


@pytest.mark.parametrize("name", TYPES)
def test_zero_and_non_finite_rows(quant_dot_on, name, rng):
    k = 512
    x = rng.standard_normal((4, k)).astype(np.float32)
    x[1] = 0
    x[2, 7] = np.nan
    w = weights(rng, name, 9, k, zero_blocks=True)
    out = fast_gemm(x, w)
    assert np.array_equal(out, qdot_reference(x, w), equal_nan=True)
    assert (out[1] == 0).all() and np.isnan(out[2]).all() and np.isfinite(out[[0, 3]]).all()
    assert (out[[0, 1, 3], 1] == 0).all()  # row 1 of w is all zero


@pytest.mark.parametrize("name", TYPES)
def test_row_batch_invariance(level, quant_dot_on, name, rng):
    """Every row is bit-identical alone, in sub-batches, reordered and at any thread count (sizes
    above the parallel threshold)."""
    m, n, k = 37, 61, 2816 if name in ("q4_k", "q6_k") else 544
    x = activations(rng, m, k)
    w = weights(rng, name, n, k)
    full = fast_gemm(x, w)
    for r in range(0, m, 5):
        assert np.array_equal(fast_gemm(x[r:r + 1], w)[0], full[r]), f"row {r} alone differs"
    for lo, hi in [(0, 3), (5, 6), (2, 19), (30, 37)]:
        assert np.array_equal(fast_gemm(np.ascontiguousarray(x[lo:hi]), w), full[lo:hi])
    perm = rng.permutation(m)
    assert np.array_equal(fast_gemm(np.ascontiguousarray(x[perm]), w), full[perm])
    for nt in (1, 2, 3):
        _core.set_num_threads(nt)
        assert np.array_equal(fast_gemm(x, w), full), f"{nt} threads differ"


def test_mode_switch_round_trip(rng):
    """Off: the exact mode (bit for bit as before); on: the definition; off again: exact again.
    Float weights never change with the mode."""
    x = rng.standard_normal((3, 256)).astype(np.float32)
    w = weights(rng, "q4_k", 11, 256)
    wf = rng.standard_normal((11, 256)).astype(np.float32)
    _core.set_quant_dot(False)
    exact, exact_f = fast_gemm(x, w), fast_gemm(x, wf)
    _core.set_quant_dot(True)
    assert _core.quant_dot()
    assert np.array_equal(fast_gemm(x, w), qdot_reference(x, w))
    assert not np.array_equal(fast_gemm(x, w), exact)
    assert np.array_equal(fast_gemm(x, wf), exact_f)
    _core.set_quant_dot(False)
    assert not _core.quant_dot()
    assert np.array_equal(fast_gemm(x, w), exact)


@pytest.mark.parametrize("value,want", [("1", "True"), ("0", "False"), ("", "False")])
def test_mode_from_the_environment(value, want):
    env = dict(os.environ, LFM2_QUANT_DOT=value)
    code = "from lfm2engine import _core; print(_core.quant_dot())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == want


def test_real_width_rows(quant_dot_on, rng):
    """LFM2-8B-A1B widths (K = 2048; the experts' down projection K = 1792) on a slice of rows."""
    for name, k in [("q4_0", 2048), ("q8_0", 2048), ("q4_k", 1792), ("q6_k", 2048)]:
        x = rng.standard_normal((2, k)).astype(np.float32)
        w = weights(rng, name, 96, k)
        assert np.array_equal(fast_gemm(x, w), qdot_reference(x, w)), name


def test_reference_argument_errors(rng):
    w = weights(rng, "q8_0", 4, 64)
    with pytest.raises(InputError, match="quantized block array"):
        qdot_reference(np.zeros((1, 64), np.float32), np.zeros((4, 64), np.float32))
    with pytest.raises(InputError, match="expected"):
        qdot_reference(np.zeros((1, 96), np.float32), w)


@pytest.mark.parametrize("name", ["q8_0", "q4_k"])
def test_moe_expert_rows_use_the_mode(level, quant_dot_on, name, rng):
    """The experts run the same gemm: each routed row equals gemm → swiglu → gemm composed from
    the ops, bit for bit, whatever the other rows and experts."""
    E, D, Fe, R = 3, 256, 256, 7
    w13 = quant.quantize(rng.standard_normal((E, 2 * Fe, D)).astype(np.float32), name)
    w2 = quant.quantize(rng.standard_normal((E, D, Fe)).astype(np.float32), name)
    x = rng.standard_normal((R, D)).astype(np.float32)
    eids = np.array([0, 2, 1, 2, 0, 1, 2], np.int32)
    out = np.full((R, D), np.nan, np.float32)
    cpu.moe_expert_rows(out, x, eids, w13, w2)
    for r, e in enumerate(eids):
        h = fast_gemm(x[r:r + 1], w13[e])
        a = np.empty((1, Fe), np.float32)
        cpu.swiglu(a, h)
        assert np.array_equal(out[r], fast_gemm(a, w2[e])[0]), f"row {r}"
    _core.set_quant_dot(False)
    exact = np.empty_like(out)
    cpu.moe_expert_rows(exact, x, eids, w13, w2)
    assert not np.array_equal(exact, out)


@pytest.mark.parametrize("dtype", ["q8_0", "q4_k"])
def test_whole_model_in_the_mode(dtype, tmp_path):
    """An engine quantized on load runs in the mode: each prompt's logits are the same bits alone as
    in a batch, they differ from the exact mode's, and the next token mostly agrees with it."""
    from lfm2engine import Engine
    from test_quant_engine import write_ckpt

    eng = Engine.from_pretrained(write_ckpt(str(tmp_path)), dtype=dtype)
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9], [10, 11, 12, 13, 14, 15, 16], [20, 30]]
    _core.set_quant_dot(True)
    batch = eng.logits(prompts)
    for i, p in enumerate(prompts):
        assert np.array_equal(eng.logits([p])[0], batch[i]), f"prompt {i} alone differs"
    _core.set_quant_dot(False)
    exact = eng.logits(prompts)
    assert not np.array_equal(exact, batch)
    assert np.isfinite(batch).all()
    assert (np.argmax(batch, axis=1) == np.argmax(exact, axis=1)).sum() >= len(prompts) - 1
