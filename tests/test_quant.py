"""lfm2engine.quant (GGUF block types q8_0, q4_0, q4_k, q6_k) against the `gguf` package, an
independent NumPy implementation of GGML's formats, and the C++ core's dequantization against
lfm2engine.quant's.

- dequantize: bit for bit equal to gguf.quants.dequantize on random block bytes (every code, packed
  scale and sign pattern; finite f16 scales from subnormal to 65504) and on quantize's own output.
- quantize: q8_0 and q4_0 bit for bit equal to gguf.quants.quantize (GGML's reference rounding) on
  random data with zero blocks, tiny and huge scales, ties and constant blocks; q4_k and q6_k (our own
  one-pass fit; gguf has no NumPy quantizer for them) within the error bound their fit guarantees.
- the core: the embedding op on a quantized table equals quant.dequantize bit for bit.
- every dequantized weight is its exact formula rounded once (docs/ops.md, "Quantized weights").
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gq
from helpers import import_core, random_blocks
from lfm2engine import quant
from lfm2engine.errors import InputError

QTYPES = tuple(quant.QTYPES)


def gguf_type(name):
    return GGMLQuantizationType(quant.get(name).ggml_id)


def gguf_dequantize(a):
    """gguf's dequantization of block array a [rows, nb] (it takes the raw bytes, [rows, nb * nbytes])."""
    raw = np.ascontiguousarray(a).view(np.uint8).reshape(a.shape[0], -1)
    return gq.dequantize(raw, gguf_type(quant.qtype_of(a).name))


def test_block_types_match_gguf():
    for name, q in quant.QTYPES.items():
        block, nbytes = gq.GGML_QUANT_SIZES[gguf_type(name)]
        assert (q.block, q.nbytes, q.ggml) == (block, nbytes, gguf_type(name).name), name
        assert quant.BY_GGML[q.ggml] is q and quant.BY_GGML_ID[q.ggml_id] is q


@pytest.mark.parametrize("name", QTYPES)
def test_dequantize_random_blocks_matches_gguf(name, rng):
    a = random_blocks(rng, name, 37, 4 * quant.get(name).block)
    got = quant.dequantize(a)
    assert got.dtype == np.float32 and got.shape == (37, 4 * quant.get(name).block)
    assert np.isfinite(got).all()
    assert np.array_equal(got, gguf_dequantize(a))
    assert (got[0, : quant.get(name).block] == 0).all(), "an all-zero block is zeros"


@pytest.mark.parametrize("name", QTYPES)
def test_dequantize_of_quantize_matches_gguf(name, rng):
    x = rng.standard_normal((5, 3, 512), dtype=np.float32)
    a = quant.quantize(x, name)
    assert a.shape == (5, 3, 512 // quant.get(name).block) and quant.qtype_of(a) is quant.get(name)
    assert quant.logical_shape(a) == x.shape
    got = quant.dequantize(a)
    assert got.shape == x.shape
    assert np.array_equal(got.reshape(15, 512), gguf_dequantize(a.reshape(15, -1)))


def awkward_rows(rng, k):
    """Rows of k floats, 32-weight blocks of: normals, zeros, tiny (1e-30: the scale underflows f16),
    subnormal-scale (1e-6), huge (1e6, near f16's 65504 · 127), over f16's range (1e7: the scale
    overflows), a constant, exact rounding ties (multiples of 0.5 of a power of two), one outlier."""
    x = rng.standard_normal((9, k), dtype=np.float32)
    x[1] = 0.0
    x[2] *= np.float32(1e-30)
    x[3] *= np.float32(1e-6)
    x[4] *= np.float32(1e6)
    x[5] *= np.float32(1e7)
    x[6] = np.float32(-2.75)
    x[7] = (rng.integers(-16, 16, k) * 0.5).astype(np.float32)
    x[8, 5::37] = 1000.0
    x[0, :32] = 0.0  # and one zero block among normals
    return x


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_quantize_matches_gguf_bit_for_bit(name, rng):
    x = awkward_rows(rng, 256)
    got = quant.quantize(x, name).view(np.uint8).reshape(x.shape[0], -1)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        want = gq.quantize(x, gguf_type(name))
    assert want.dtype == np.uint8 and want.shape == got.shape
    bad = [r for r in range(x.shape[0]) if not np.array_equal(got[r], want[r])]
    assert not bad, f"{name}: rows {bad} differ from gguf's quantizer"


@pytest.mark.parametrize("name", QTYPES)
def test_quantize_error_bound(name, rng):
    """Every weight within the bound of its type's fit (a packing error would break it by far):
    q8_0 / q4_0 half a step d (q4_0: a step d at the block's extreme); q4_k
    (d·sc)/2 + 7.5·d + dmin/2 per sub-block of 32 (rounding of the code, plus the 6-bit rounding of
    the sub-block scale and min to d and dmin that can push the top code past 15);
    q6_k (d·sc)/2 + 16·d per sub-block of 16 (likewise for a code past 31)."""
    x = awkward_rows(rng, 512)[[0, 1, 2, 3, 6, 7, 8]]  # finite-scale rows
    a = quant.quantize(x, name)
    err = np.abs(quant.dequantize(a).astype(np.float64) - x)
    b = a.reshape(-1)
    if name in ("q8_0", "q4_0"):
        d = np.abs(b["d"].astype(np.float64))[:, None]
        bound = d * (0.5 if name == "q8_0" else 1.0)
        amax = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
        bound = bound + amax * 2.0**-10  # the f16 rounding of d, scaled by the largest code
        err = err.reshape(-1, 32)
    elif name == "q4_k":
        sc, m = quant._k4_scale_min(b["scales"])
        d, dmin = b["d"].astype(np.float64)[:, None], b["dmin"].astype(np.float64)[:, None]
        bound = (d * sc / 2 + 7.5 * d + dmin / 2).reshape(-1, 1)
        err = err.reshape(-1, 32)
    else:
        d = b["d"].astype(np.float64)[:, None]
        bound = (np.abs(d * b["scales"]) / 2 + 16 * d).reshape(-1, 1)
        err = err.reshape(-1, 16)
    slack = 1e-6 * np.abs(x).max() + 1e-38
    assert (err <= bound + slack).all(), f"{name}: max excess {(err - bound).max():.3g}"
    # and the fit is not trivially loose: the RMS error of normal data is a small part of its RMS
    bits = {"q8_0": 8, "q4_0": 4, "q4_k": 4, "q6_k": 6}[name]
    rel = np.sqrt(np.mean(err.reshape(x.shape)[0] ** 2)) / np.sqrt(np.mean(x[0] ** 2))
    assert rel < 2.0 ** (2 - bits), f"{name}: relative RMS error {rel:.3g}"


def test_quantize_refuses_bad_input():
    with pytest.raises(InputError, match="multiple of 256"):
        quant.quantize(np.zeros((2, 300), np.float32), "q4_k")
    with pytest.raises(InputError, match="NaN or Inf"):
        quant.quantize(np.full((1, 32), np.inf, np.float32), "q8_0")
    with pytest.raises(InputError, match="unknown quantized type"):
        quant.quantize(np.zeros((1, 32), np.float32), "q5_k")


@pytest.mark.parametrize("name", QTYPES)
def test_core_dequantization_is_quant_dequantize(name, rng):
    """The C++ core's dequant_row (embedding on a quantized table) = quant.dequantize, bit for bit."""
    _core = import_core()
    table = random_blocks(rng, name, 50, 2 * quant.get(name).block)
    ids = np.array([0, 49, 7, 7, 23, 1], np.int32)
    out = np.full((len(ids), 2 * quant.get(name).block), np.nan, np.float32)
    _core.cpu.embedding(out, table, ids)
    assert np.array_equal(out, quant.dequantize(table)[ids])


@pytest.mark.parametrize("name", QTYPES)
def test_dequantized_weights_are_correctly_rounded(name, rng):
    """docs/ops.md: each weight is its exact formula rounded once to float32 (q8_0, q4_0, q6_k: exact;
    q4_k: one rounding in the subtraction), so kernels may fuse or reassociate inside dequantization."""
    a = random_blocks(rng, name, 200, 512)
    b = a.reshape(-1)
    got = quant.dequantize(a).reshape(len(b), -1)
    d = b["d"].astype(np.float64)[:, None]
    if name == "q8_0":
        exact = d * b["qs"]
    elif name == "q4_0":
        exact = d * (np.concatenate([b["qs"] & 15, b["qs"] >> 4], axis=1).astype(np.float64) - 8)
    elif name == "q4_k":
        sc, m = quant._k4_scale_min(b["scales"])
        qs = b["qs"].reshape(-1, 4, 32)
        nib = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 8, 32)
        dmin = b["dmin"].astype(np.float64)[:, None]
        exact = ((d * sc)[:, :, None] * nib - (dmin * m)[:, :, None]).reshape(len(b), -1)
    else:
        codes = quant._q6_values(b).reshape(-1, 16, 16).astype(np.float64) - 32
        exact = ((d * b["scales"])[:, :, None] * codes).reshape(len(b), -1)
    if name != "q4_k":
        assert np.array_equal(exact, got), "not exact"
    assert np.array_equal(exact.astype(np.float32), got)
