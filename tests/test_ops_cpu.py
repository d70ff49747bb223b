"""The CPU backend's own op tests: what tests/test_ops.py (every op case on every backend against the
NumPy reference, at every SIMD level) does not cover.

Shapes: tiny, awkward (not multiples of the SIMD width, T = 1, prime T, odd head counts) and the
real LFM2-8B-A1B sizes (D=2048, H=32, Hkv=8, Dh=64, F=7168, Fe=1792, E=32, K=4, L=3, V=65536;
the V x D and E x Fe x D tensors are built cheaply and only partly touched). Every SIMD path the
CPU has (avx512, avx2, scalar) is checked against the reference, the paths against each other,
and the row-batch invariance contract bit for bit. Tolerances come from tests/helpers.py.
"""

from __future__ import annotations

import ast
import os

import numpy as np
import pytest
from helpers import (ALL_SIMD_LEVELS, as_weight, assert_close, bf16_bits, bf16_to_f32, import_core, random_blocks,
                     reset_core, set_simd_level, simd_levels, weight_as_f64)
from lfm2engine import quant
from lfm2engine import reference as ref
from lfm2engine.backends import cases
from lfm2engine.backends.cases import QDTYPES, SHAPES, WDTYPES, i32, rand

_core = import_core()
cpu = _core.cpu

ALL_LEVELS = ALL_SIMD_LEVELS
LEVELS = simd_levels(_core)
# LFM2-8B-A1B
D, H, HKV, DH, F, FE, E, K, L, V = (getattr(cases.LFM2_8B, n) for n in "D H HKV DH F FE E K L V".split())


@pytest.fixture(autouse=True)
def _restore_core_state():
    yield
    reset_core(_core)


@pytest.fixture(params=LEVELS)
def level(request):
    return set_simd_level(_core, request.param)


# ----------------------------------------------------------------------------- module surface


def test_module_surface():
    assert isinstance(_core.__version__, str) and _core.__version__.count(".") >= 1
    assert isinstance(_core.has_cuda(), bool)
    feats = _core.cpu_features()
    assert isinstance(feats, list) and all(isinstance(f, str) for f in feats)
    assert _core.detected_simd_level() in ALL_LEVELS
    if _core.detected_simd_level() == "avx512":
        assert {"avx512f", "avx512bw", "avx512vl", "fma"} <= set(feats)
    _core.set_force_scalar(True)
    assert _core.simd_level() == "scalar"
    _core.set_force_scalar(False)
    assert _core.simd_level() == _core.detected_simd_level()
    with pytest.raises(ValueError, match="simd level"):
        _core.set_simd_level("sse9")
    _core.set_num_threads(1)
    assert _core.get_num_threads() == 1
    _core.set_num_threads(0)
    assert _core.get_num_threads() >= 1


@pytest.mark.parametrize(
    "env,want",
    [({"LFM2_FORCE_SCALAR": "1"}, "scalar"), ({"LFM2_SIMD": "avx2"}, "avx2"), ({"LFM2_FORCE_SCALAR": "0"}, None)],
)
def test_simd_env_overrides(env, want):
    import subprocess
    import sys

    code = "from lfm2engine import _core; print(_core.simd_level(), _core.detected_simd_level())"
    r = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    active, detected = r.stdout.split()
    order = list(ALL_LEVELS)
    want = detected if want is None else order[max(order.index(want), order.index(detected))]
    assert active == want


def test_cuda_submodule_without_gpu_is_safe():
    if _core.has_cuda():
        n = _core.cuda.device_count()
        assert isinstance(n, int) and n >= 0
        if n > 0:
            assert _core.cuda.selftest(0, 1000) == 0.0
        else:
            with pytest.raises(IndexError, match="device 0 does not exist"):
                _core.cuda.device_info(0)
    else:
        with pytest.raises(RuntimeError, match="built without CUDA"):
            _core.cuda.device_count()


def test_stub_lists_every_binding():
    """python/lfm2engine/_core.pyi names exactly the extension's public functions."""
    import lfm2engine

    candidates = [
        os.path.join(os.path.dirname(lfm2engine.__file__), "_core.pyi"),
        os.path.join(os.path.dirname(_core.__file__), "_core.pyi"),
    ]
    path = next(p for p in candidates if os.path.exists(p))
    with open(path) as f:
        tree = ast.parse(f.read())
    top, sub = set(), {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id == "__version__" or not node.target.id.startswith("_"):  # _X: type aliases
                top.add(node.target.id)
        elif isinstance(node, ast.ClassDef) and node.name in ("cpu", "cuda"):
            sub[node.name] = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}

    def public(m):
        return {n for n in dir(m) if not n.startswith("_")}

    assert top == (public(_core) - {"cpu", "cuda"}) | {"__version__"}
    assert sub["cpu"] == public(_core.cpu)
    assert sub["cuda"] == public(_core.cuda)


# Ops of one backend's table without a twin in the other: name -> why. Empty: every op has both.
CPU_ONLY_OPS: dict[str, str] = {}
CUDA_ONLY_OPS: dict[str, str] = {}


def _stub_signatures():
    """{"cpu" | "cuda": {op: [(argument name, has a default)]}} from python/lfm2engine/_core.pyi."""
    import lfm2engine

    path = os.path.join(os.path.dirname(lfm2engine.__file__), "_core.pyi")
    with open(path) as f:
        tree = ast.parse(f.read())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in ("cpu", "cuda"):
            out[node.name] = {}
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef):
                    args = fn.args.args
                    first_default = len(args) - len(fn.args.defaults)
                    out[node.name][fn.name] = [(a.arg, i >= first_default) for i, a in enumerate(args)]
    return out


def test_op_tables_are_twins():
    """The op tables (csrc/bindings/op_table.h, exposed as _ops): every CPU op has its CUDA twin
    with the same argument names, unless listed above; both tables match _core.pyi, argument
    names and None defaults included (the CPU signature line says which arguments have one)."""
    import re

    cpu_ops, cuda_ops = dict(cpu._ops), dict(_core.cuda._ops)
    assert "qkv_split" in cpu_ops and "gemm" in cuda_ops
    assert set(CPU_ONLY_OPS) <= set(cpu_ops) and set(CUDA_ONLY_OPS) <= set(cuda_ops)
    assert set(cpu_ops) - set(CPU_ONLY_OPS) == set(cuda_ops) - set(CUDA_ONLY_OPS)
    stubs = _stub_signatures()
    for name, args in cpu_ops.items():
        assert callable(getattr(cpu, name)) and callable(getattr(_core.cuda, name)), name
        if name in cuda_ops:
            assert cuda_ops[name] == args, f"{name}: CPU {args} vs CUDA {cuda_ops[name]}"
        sig = cpu.__dict__[name].__doc__.splitlines()[0]
        defaults = set(re.findall(r"(\w+): [^,()]+ = None", sig))
        want = [(a, a in defaults) for a in args]
        assert stubs["cpu"][name] == want, f"_core.pyi cpu.{name}: {stubs['cpu'][name]} vs table {want}"
        if name in cuda_ops:
            assert stubs["cuda"][name] == want, f"_core.pyi cuda.{name}: {stubs['cuda'][name]} vs table {want}"
    for name, args in cuda_ops.items():
        assert [a for a, _ in stubs["cuda"][name]] == list(args), name


# ----------------------------------------------------------------------------- gemm

@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("t,n,k", [(1, F, D), (3, D, F), (4, 2 * FE, D), (2, D, FE)])
def test_gemm_real_shapes(wdtype, t, n, k, rng):
    x = rand(rng, t, k)
    w = as_weight(rand(rng, n, k, scale=0.02), wdtype)
    out = np.empty((t, n), np.float32)
    cpu.gemm(out, x, w)
    want = x.astype(np.float64) @ weight_as_f64(w).T
    assert_close(out, want, k=k, name=f"gemm {wdtype} {t}x{n}x{k}")
    _core.set_force_scalar(True)
    out_s = np.empty_like(out)
    cpu.gemm(out_s, x, w)
    assert_close(out_s, want, k=k, name=f"gemm scalar {wdtype} {t}x{n}x{k}")


@pytest.fixture(scope="module")
def head_bf16():
    """A [V, D] bf16 table: a random [1024, D] block tiled V/1024 times, column 0 unique per row."""
    rng = np.random.default_rng(7)
    block = bf16_bits(rng.standard_normal((1024, D)).astype(np.float32) * 0.02)
    table = np.tile(block, (V // 1024, 1))
    col0 = bf16_bits(((np.arange(V) % 4099) / 4099.0 - 0.5).astype(np.float32))
    table[:, 0] = col0
    return block, table


def test_gemm_lm_head_real(head_bf16, rng):
    block, table = head_bf16
    x = rand(rng, 2, D)
    out = np.empty((2, V), np.float32)
    cpu.gemm(out, x, table)
    b64 = bf16_to_f32(block).astype(np.float64)
    want = np.tile(x[:, 1:].astype(np.float64) @ b64[:, 1:].T, (1, V // 1024))
    want += x[:, :1].astype(np.float64) * bf16_to_f32(table[:, 0]).astype(np.float64)[None, :]
    assert_close(out, want, k=D, name="lm head gemm")


@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("k", [100, D, 1037])  # 1037: K-blocked full tiles (K > 512) with a tail
def test_gemm_row_batch_invariance(level, wdtype, k, rng):
    m, n = 37, 301
    check_row_batch_invariance(rand(rng, m, k), as_weight(rand(rng, n, k), wdtype), rng)


def check_row_batch_invariance(x, w, rng):
    """Every row of gemm(x, w) is bit-identical alone, in sub-batches, reordered, at any thread count."""
    m, n = x.shape[0], w.shape[0]
    full = np.empty((m, n), np.float32)
    cpu.gemm(full, x, w)
    for r in range(m):  # one row per call
        one = np.empty((1, n), np.float32)
        cpu.gemm(one, x[r : r + 1], w)
        assert np.array_equal(one[0], full[r]), f"row {r} alone differs"
    for lo, hi in [(0, 3), (5, 6), (2, 19), (30, 37)]:  # sub-batches at other positions and tails
        part = np.empty((hi - lo, n), np.float32)
        cpu.gemm(part, np.ascontiguousarray(x[lo:hi]), w)
        assert np.array_equal(part, full[lo:hi])
    perm = rng.permutation(m)  # rows reordered
    shuffled = np.empty_like(full)
    cpu.gemm(shuffled, np.ascontiguousarray(x[perm]), w)
    assert np.array_equal(shuffled, full[perm])
    for nt in (1, 2, 3):
        _core.set_num_threads(nt)
        again = np.empty_like(full)
        cpu.gemm(again, x, w)
        assert np.array_equal(again, full), f"{nt} threads differ"


needs_bf16_dot = pytest.mark.skipif(not _core.bf16_dot_available(), reason="this CPU has no AVX512_BF16")


@pytest.fixture
def bf16_dot_mode():
    _core.set_bf16_dot(True)
    assert _core.bf16_dot()
    yield
    _core.set_bf16_dot(False)


@needs_bf16_dot
@pytest.mark.parametrize("t,n,k", SHAPES["gemm"] + [(7, 13, 31), (3, 5, 33), (9, 300, 256)])
def test_gemm_bf16_dot_matches_rounded_reference(bf16_dot_mode, t, n, k, rng):
    """bf16-dot mode = the exact product of bf16-rounded x and bf16 w, up to fp32 accumulation;
    and it is really on: the exact-x reference is farther away than rounding x explains."""
    x = rand(rng, t, k)
    w = bf16_bits(rand(rng, n, k))
    out = np.full((t, n), np.nan, np.float32)
    cpu.gemm(out, x, w)
    wf = bf16_to_f32(w).astype(np.float64)
    want = bf16_to_f32(bf16_bits(x)).astype(np.float64) @ wf.T
    assert_close(out, want, k=k, name=f"gemm bf16-dot T={t} N={n} K={k}")
    if k >= 5:
        exact = x.astype(np.float64) @ wf.T
        assert np.abs(out - want).max() < np.abs(out - exact).max()


@needs_bf16_dot
@pytest.mark.parametrize("k", [100, 1037])
def test_gemm_bf16_dot_row_batch_invariance(bf16_dot_mode, k, rng):
    m, n = 37, 301
    check_row_batch_invariance(rand(rng, m, k), bf16_bits(rand(rng, n, k)), rng)


def test_bf16_dot_mode_is_off_by_default_and_refused_without_avx512bf16():
    assert not _core.bf16_dot()
    _core.set_simd_level("avx2" if "avx2" in _core.cpu_features() else "scalar")
    with pytest.raises(ValueError, match="AVX512_BF16"):
        _core.set_bf16_dot(True)
    assert not _core.bf16_dot()
    _core.set_bf16_dot(False)  # turning it off is always allowed


# ----------------------------------------------------------------------------- quantized weights (exact mode)
# csrc/cpu/gemm_quant.cpp: weights decoded in registers for T <= 16 (T <= 4 for q4_k / q6_k on
# AVX-512), into fp32 panels above; both must give exactly gemm's bits on the dequantized float32
# weights at the same SIMD level.


def check_equals_dequantized(x, w):
    out, want = np.full((x.shape[0], w.shape[0]), np.nan, np.float32), np.empty((x.shape[0], w.shape[0]), np.float32)
    cpu.gemm(out, x, w)
    cpu.gemm(want, x, quant.dequantize(w))
    assert np.array_equal(out, want), f"max |diff| {np.nanmax(np.abs(out - want)):.3g}"


@pytest.mark.parametrize("qtype", QDTYPES)
@pytest.mark.parametrize("t,n,k", [(1, 5, 256), (2, 4, 512), (4, 9, 768), (13, 17, 256), (16, 33, 512), (17, 9, 1280),
                                   (48, 20, 2048), (3, 2 * FE, D), (1, D, FE)])
def test_gemm_quant_bit_identical_to_dequantized(level, qtype, t, n, k, rng):
    check_equals_dequantized(rand(rng, t, k), as_weight(rand(rng, n, k, scale=0.05), qtype))


@pytest.mark.parametrize("qtype", QDTYPES)
def test_gemm_quant_random_blocks(level, qtype, rng):
    """Every code, packed scale and sign pattern, f16 scales from subnormal to 65504 (helpers.random_blocks):
    bit-identical to the dequantized weights, in registers (T = 3) and in panels (T = 20)."""
    w = random_blocks(rng, qtype, 23, 512)
    for t in (3, 20):
        check_equals_dequantized(rand(rng, t, 512), w)


@pytest.mark.parametrize("qtype", QDTYPES)
def test_gemm_quant_decodes_exact_weights(level, qtype, rng):
    """x = rows of the identity: out[m, n] = w[n, m] exactly (1·w plus zeros), so each decoder (the
    SIMD registers for 16-row slices, the panels for the whole identity) must yield
    quant.dequantize's values themselves."""
    k = 256
    w = random_blocks(rng, qtype, 9, k)
    want = quant.dequantize(w).T
    eye = np.eye(k, dtype=np.float32)
    full = np.full((k, 9), np.nan, np.float32)
    cpu.gemm(full, eye, w)
    assert np.array_equal(full, want)
    for m0 in range(0, k, 16):
        part = np.full((16, 9), np.nan, np.float32)
        cpu.gemm(part, eye[m0 : m0 + 16], w)
        assert np.array_equal(part, want[m0 : m0 + 16]), f"rows {m0}.."


@pytest.mark.parametrize("qtype", QDTYPES)
@pytest.mark.parametrize("k", [256, 1280])  # 1280: the panels' K-blocked fp32 tiles with a tail
def test_gemm_quant_row_batch_invariance(level, qtype, k, rng):
    """A row's bits never depend on M (M = 1..13 prefixes, and 37: the panel driver; single rows:
    the register driver), its position, the order of rows, or the thread count."""
    m, n = 37, 301
    x, w = rand(rng, m, k), as_weight(rand(rng, n, k), qtype)
    check_row_batch_invariance(x, w, rng)
    full = np.empty((m, n), np.float32)
    cpu.gemm(full, x, w)
    for mm in range(1, 14):
        part = np.empty((mm, n), np.float32)
        cpu.gemm(part, x[:mm], w)
        assert np.array_equal(part, full[:mm]), f"M={mm} differs"


def test_gemm_quant_strided_expert_slices(level, rng):
    """The experts call gemm_raw on one expert's slice of a block array [E, N, K]: a slice view works
    and equals the dequantized slice bit for bit."""
    w = as_weight(rand(rng, 3, 24, 256), "q4_k")
    x = rand(rng, 5, 256)
    for e in range(3):
        check_equals_dequantized(x, w[e])


def test_gemm_column_invariance(level, rng):
    """An output column is the same whatever N: full register tiles (4-way reduction) and the
    column tail (single reduction) must sum in the same order."""
    m, k = 5, 100
    x = rand(rng, m, k)
    w = rand(rng, 9, k)
    full = np.empty((m, 9), np.float32)
    cpu.gemm(full, x, w)
    for n in range(1, 9):
        part = np.empty((m, n), np.float32)
        cpu.gemm(part, x, np.ascontiguousarray(w[:n]))
        assert np.array_equal(part, full[:, :n]), f"N={n} differs"


# ----------------------------------------------------------------------------- embedding


def test_embedding_real_vocab(head_bf16):
    _, table = head_bf16
    ids = i32([0, 1, 65535, 4099, 33333, 65535, 7])
    out = np.empty((len(ids), D), np.float32)
    cpu.embedding(out, table, ids)
    assert np.array_equal(out, bf16_to_f32(table[ids]))


@pytest.mark.parametrize("bad", [-1, 97, 1 << 30])
def test_embedding_rejects_bad_id(bad):
    table = np.zeros((97, 8), np.float32)
    out = np.full((3, 8), 5.0, np.float32)
    with pytest.raises(IndexError, match=f"token id {bad} at position 1"):
        cpu.embedding(out, table, i32([3, bad, 4]))
    assert (out == 5.0).all(), "nothing may be written when an id is bad"


def test_embedding_rejects_out_overlapping_the_table():
    """Found by tests/test_fuzz.py: out aliasing the table gathered rows already overwritten."""
    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    for out, ids in ((table, [5, 0, 1, 2, 3, 4]), (table[2:5], [5, 0, 1])):
        with pytest.raises(ValueError, match="'out' overlaps 'table'"):
            cpu.embedding(out, table, i32(ids))
    assert np.array_equal(table, np.arange(12, dtype=np.float32).reshape(6, 2))


# ----------------------------------------------------------------------------- rmsnorm


def test_rmsnorm_row_invariance(level, rng):
    x = rand(rng, 29, 200)
    w = rand(rng, 200)
    full = np.empty_like(x)
    cpu.rmsnorm(full, x, w, 1e-6)
    for i in range(29):
        one = np.empty((1, 200), np.float32)
        cpu.rmsnorm(one, x[i : i + 1], w, 1e-6)
        assert np.array_equal(one[0], full[i])
    _core.set_num_threads(1)
    again = np.empty_like(x)
    cpu.rmsnorm(again, x, w, 1e-6)
    assert np.array_equal(again, full)


# ----------------------------------------------------------------------------- rope


def test_rope_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="must be even"):
        cpu.rope(np.zeros((2, 3, 5), np.float32), i32([0, 1]), 1e6)


# ----------------------------------------------------------------------------- qkv_split


def test_qkv_split_is_the_engines_and_checks(rng):
    from lfm2engine.backends import get_backend

    assert get_backend("cpu").ops.qkv_split is cpu.qkv_split  # the C++ op, no Python stand-in
    q, k, v = np.empty((2, 4, 3), np.float32), np.empty((2, 2, 3), np.float32), np.empty((2, 2, 3), np.float32)
    qkv = rand(rng, 2, 24)
    with pytest.raises(ValueError, match="argument 'qkv' has shape"):
        cpu.qkv_split(q, k, v, rand(rng, 2, 25))
    with pytest.raises(ValueError, match="argument 'v'"):
        cpu.qkv_split(q, k, np.empty((2, 1, 3), np.float32), qkv)
    with pytest.raises(ValueError, match="argument 'k'"):
        cpu.qkv_split(q, np.empty((2, 2, 4), np.float32), v, qkv)
    with pytest.raises(TypeError, match="argument 'qkv'"):
        cpu.qkv_split(q, k, v, qkv.astype(np.float16))
    buf = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        cpu.qkv_split(q, buf.reshape(2, 2, 3), buf.reshape(2, 2, 3), qkv)


# ----------------------------------------------------------------------------- kv cache + attention


def test_kv_write_checks(rng):
    b, hkv, smax, dh, t = 3, 2, 11, 6, 5
    kc = rand(rng, b, hkv, smax, dh)
    vc = np.zeros_like(kc)
    k, v = rand(rng, t, hkv, dh), rand(rng, t, hkv, dh)
    seq, pos = i32([0, 0, 2, 1, 2]), i32([0, 1, 10, 4, 3])
    before = kc.copy()
    with pytest.raises(IndexError, match="pos"):
        cpu.kv_write(kc, vc, k, v, seq, i32([0, 1, 11, 4, 3]))
    with pytest.raises(IndexError, match="seq"):
        cpu.kv_write(kc, vc, k, v, i32([0, 3, 0, 0, 0]), pos)
    assert np.array_equal(kc, before), "a rejected write must not touch the cache"


def test_attention_token_invariance(level, rng):
    _, q, kc, vc, seq, pos, _ = cases.attention(rng, 9, 8, 2, 64, 2, 100).args
    full = np.empty_like(q)
    cpu.attention(full, q, kc, vc, seq, pos)
    for t in range(9):
        one = np.empty_like(q[:1])
        cpu.attention(one, q[t : t + 1], kc, vc, seq[t : t + 1], pos[t : t + 1])
        assert np.array_equal(one[0], full[t])
    _core.set_num_threads(1)
    again = np.empty_like(q)
    cpu.attention(again, q, kc, vc, seq, pos)
    assert np.array_equal(again, full)


def test_attention_checks():
    q = np.zeros((2, 6, 8), np.float32)
    kc = np.zeros((1, 4, 10, 8), np.float32)
    with pytest.raises(ValueError, match="multiple"):
        cpu.attention(np.empty_like(q), q, kc, kc.copy(), i32([0, 0]), i32([0, 1]))
    kc = np.zeros((1, 3, 10, 8), np.float32)
    with pytest.raises(IndexError, match="pos"):
        cpu.attention(np.empty_like(q), q, kc, kc.copy(), i32([0, 0]), i32([0, 10]))
    with pytest.raises(ValueError, match="mask"):
        cpu.attention(np.empty_like(q), q, kc, kc.copy(), i32([0, 0]), i32([0, 1]), np.ones((2, 9), np.uint8))


# ----------------------------------------------------------------------------- shortconv


def test_shortconv_prefill_equals_decode(level, rng):
    d, t = 70, 6
    bcx, conv_w = rand(rng, t, 3 * d), rand(rng, d, L)
    s_pre = np.zeros((1, L - 1, d), np.float32)
    pre = np.empty((t, d), np.float32)
    cpu.shortconv(pre, bcx, conv_w, s_pre, i32([0] * t))
    s_dec = np.zeros_like(s_pre)
    for i in range(t):
        one = np.empty((1, d), np.float32)
        cpu.shortconv(one, bcx[i : i + 1], conv_w, s_dec, i32([0]))
        assert np.array_equal(one[0], pre[i])
    assert np.array_equal(s_dec, s_pre)


def test_shortconv_checks(rng):
    d = 4
    bcx, conv_w, state = rand(rng, 3, 3 * d), rand(rng, d, L), np.zeros((2, L - 1, d), np.float32)
    out = np.empty((3, d), np.float32)
    with pytest.raises(ValueError, match="not contiguous"):
        cpu.shortconv(out, bcx, conv_w, state, i32([0, 1, 0]))
    with pytest.raises(IndexError, match="seq"):
        cpu.shortconv(out, bcx, conv_w, state, i32([0, 0, 2]))
    with pytest.raises(ValueError, match="state"):
        cpu.shortconv(out, bcx, conv_w, np.zeros((2, L, d), np.float32), i32([0, 0, 1]))


# ----------------------------------------------------------------------------- swiglu


# ----------------------------------------------------------------------------- moe


def test_moe_route_rejects_k_above_e():
    logits = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match="top-k"):
        cpu.moe_route(np.empty((2, 9), np.int32), np.empty((2, 9), np.float32), logits, None, True, 1.0)


@pytest.mark.parametrize("wdtype", ["bfloat16", "float32"])
def test_moe_expert_rows_real_shapes(wdtype, rng):
    used = [0, 31]  # the first and last expert of the real E = 32 stride
    w13, w2 = cases.experts(rng, E, D, FE, wdtype, used)
    x = rand(rng, 5, D)
    eids = i32([31, 0, -1, 0, 31])
    out = np.empty((5, D), np.float32)
    cpu.moe_expert_rows(out, x, eids, w13, w2)
    assert (out[2] == 0).all()
    for e in used:
        rows = np.nonzero(eids == e)[0]
        gu = x[rows].astype(np.float64) @ weight_as_f64(w13[e]).T  # [n, 2Fe]
        want = ref.swiglu(gu[:, :FE], gu[:, FE:]) @ weight_as_f64(w2[e]).T  # [n, D]
        assert_close(out[rows], want, k=D + FE, factor=8.0, name=f"real expert {e}")


@pytest.mark.parametrize("wdtype,d,fe", [("bfloat16", 40, 36), ("q4_0", 64, 32), ("q6_k", 256, 256)])
def test_moe_expert_rows_batch_invariance(level, wdtype, d, fe, rng):
    """The EP/TP building block: a row's output is bit-identical however rows are grouped."""
    e, n = 6, 23
    w13, w2 = cases.experts(rng, e, d, fe, wdtype)
    x = rand(rng, n, d)
    eids = i32(rng.integers(-1, e, n))
    full = np.empty((n, d), np.float32)
    cpu.moe_expert_rows(full, x, eids, w13, w2)
    for i in range(n):
        one = np.empty((1, d), np.float32)
        cpu.moe_expert_rows(one, x[i : i + 1], eids[i : i + 1], w13, w2)
        assert np.array_equal(one[0], full[i])
    perm = rng.permutation(n)
    shuffled = np.empty_like(full)
    cpu.moe_expert_rows(shuffled, np.ascontiguousarray(x[perm]), eids[perm], w13, w2)
    assert np.array_equal(shuffled, full[perm])
    _core.set_num_threads(1)
    again = np.empty_like(full)
    cpu.moe_expert_rows(again, x, eids, w13, w2)
    assert np.array_equal(again, full)


def test_moe_expert_rows_rejects_bad_expert(rng):
    w13, w2 = cases.experts(rng, 3, 8, 4, "float32")
    with pytest.raises(IndexError, match="eids"):
        cpu.moe_expert_rows(np.empty((2, 8), np.float32), rand(rng, 2, 8), i32([0, 3]), w13, w2)
    with pytest.raises(ValueError, match="w13"):
        cpu.moe_expert_rows(np.empty((2, 8), np.float32), rand(rng, 2, 8), i32([0, 1]), w13[:, :7], w2)


def test_moe_experts_skips_negative_ids_and_is_invariant(level, rng):
    t, e, k, d, fe = 9, 5, 3, 32, 16
    w13, w2 = cases.experts(rng, e, d, fe, "float32")
    x = rand(rng, t, d)
    ids = i32(rng.integers(0, e, (t, k)))
    ids[2, 1] = -1
    ids[4, :] = -1
    w = rand(rng, t, k)
    out = np.empty((t, d), np.float32)
    cpu.moe_experts(out, x, ids, w, w13, w2)
    rows = np.empty((t * k, d), np.float32)
    cpu.moe_expert_rows(rows, np.repeat(x, k, axis=0), ids.reshape(-1), w13, w2)
    rows = rows.reshape(t, k, d)
    acc = np.zeros((t, d), np.float32)
    for j in range(k):  # the contract's combine, in slot order
        acc += np.where(ids[:, j : j + 1] >= 0, w[:, j : j + 1] * rows[:, j], np.float32(0))
    assert np.array_equal(out, acc)
    assert (out[4] == 0).all()
    for i in range(t):
        one = np.empty((1, d), np.float32)
        cpu.moe_experts(one, x[i : i + 1], ids[i : i + 1], w[i : i + 1], w13, w2)
        assert np.array_equal(one[0], out[i])


# ----------------------------------------------------------------------------- convert (dtype.h)


def test_convert_bit_exact():
    all16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    f = np.empty(all16.shape, np.float32)
    cpu.convert(f, all16)  # every bf16 pattern -> f32
    want = bf16_to_f32(all16)
    assert np.array_equal(f.view(np.uint32), want.view(np.uint32))
    h = all16.view(np.float16)
    cpu.convert(f, h)  # every f16 pattern -> f32 (NaN payloads kept)
    assert np.array_equal(f.view(np.uint32), h.astype(np.float32).view(np.uint32))
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    special = np.array(
        [
            0,
            0x80000000,
            0x7F800000,
            0xFF800000,
            0x7F7FFFFF,
            0x00000001,
            0x477FEFFF,
            0x477FF000,
            0x33000000,
            0x33000001,
            0x38800000,
            0x387FFFFF,
            0x7FC00001,
            0xFFFFFFFF,
            0x3F808000,
            0x3F818000,
            0x3F80FFFF,
        ],
        np.uint32,
    )
    x = np.concatenate([bits, special]).view(np.float32)
    b = np.empty(x.shape, np.uint16)
    cpu.convert(b, x)
    assert np.array_equal(b, bf16_bits(x))
    hh = np.empty(x.shape, np.float16)
    cpu.convert(hh, x)
    with np.errstate(over="ignore"):
        want_h = x.astype(np.float16)
    nan = np.isnan(x)
    assert np.array_equal(hh.view(np.uint16)[~nan], want_h.view(np.uint16)[~nan])
    assert np.isnan(hh[nan]).all()


# ----------------------------------------------------------------------------- SIMD vs scalar, per op


def run_every_op(rng):
    """One call of every op on awkward shapes; returns {name: outputs} (fresh inputs per seed)."""
    r = {}
    x, w = rand(rng, 5, 100), bf16_bits(rand(rng, 37, 100))
    o = np.empty((5, 37), np.float32)
    cpu.gemm(o, x, w)
    r["gemm"] = o
    table = rand(rng, 50, 33)
    o = np.empty((4, 33), np.float32)
    cpu.embedding(o, table, i32([0, 49, 7, 7]))
    r["embedding"] = o
    x = rand(rng, 7, 45)
    o = np.empty_like(x)
    cpu.rmsnorm(o, x, rand(rng, 45), 1e-5)
    r["rmsnorm"] = o
    x = rand(rng, 3, 5, 22)
    cpu.rope(x, i32([0, 9, 1000]), 1e6)
    r["rope"] = x
    _, q, kc, vc, seq, pos, _ = cases.attention(rng, 5, 6, 2, 20, 2, 40).args
    cpu.kv_write(kc, vc, rand(rng, 5, 2, 20), rand(rng, 5, 2, 20), seq, pos)
    r["kv_write"] = kc
    o = np.empty_like(q)
    cpu.attention(o, q, kc, vc, seq, pos)
    r["attention"] = o
    o, st = np.empty((6, 19), np.float32), rand(rng, 2, 2, 19)
    cpu.shortconv(o, rand(rng, 6, 57), rand(rng, 19, 3), st, i32([1, 1, 1, 0, 0, 0]))
    r["shortconv"] = np.concatenate([o.ravel(), st.ravel()])
    o = np.empty((3, 29), np.float32)
    cpu.swiglu(o, rand(rng, 3, 58, scale=3.0))
    r["swiglu"] = o
    ids, wts = np.empty((6, 2), np.int32), np.empty((6, 2), np.float32)
    cpu.moe_route(ids, wts, rand(rng, 6, 5), rand(rng, 5), True, 1.0)
    r["moe_route"] = np.concatenate([ids.ravel(), wts.ravel()])
    w13, w2 = cases.experts(rng, 5, 24, 20, "float16")
    x = rand(rng, 6, 24)
    o = np.empty_like(x)
    cpu.moe_expert_rows(o, x, ids[:, 0].copy(), w13, w2)
    r["moe_expert_rows"] = o
    o = np.empty_like(x)
    cpu.moe_experts(o, x, ids, wts, w13, w2)
    r["moe_experts"] = o
    o = np.empty(3, np.int32)
    cpu.argmax(o, rand(rng, 3, 77))
    r["argmax"] = o
    return r


@pytest.mark.parametrize("other", [lv for lv in LEVELS if lv != LEVELS[0]] or ["scalar"])
def test_simd_paths_agree_for_every_op(other):
    best = run_every_op(np.random.default_rng(11))
    _core.set_simd_level(other)
    alt = run_every_op(np.random.default_rng(11))
    assert (
        best.keys()
        == alt.keys()
        == {
            "gemm",
            "embedding",
            "rmsnorm",
            "rope",
            "kv_write",
            "attention",
            "shortconv",
            "swiglu",
            "moe_route",
            "moe_expert_rows",
            "moe_experts",
            "argmax",
        }
    )
    exact = {"embedding", "rope", "kv_write", "shortconv", "argmax", "moe_route"}
    for name in best:
        if name in exact:
            assert np.array_equal(best[name], alt[name]), f"{name}: {LEVELS[0]} vs {other} differ"
        else:
            assert_close(best[name], alt[name], k=100, factor=8.0, name=f"{name} {LEVELS[0]} vs {other}")


# ----------------------------------------------------------------------------- argument errors


def test_wrong_dtype_is_type_error(rng):
    x, w = rand(rng, 2, 8), rand(rng, 3, 8)
    with pytest.raises(TypeError, match="argument 'x'.*float64"):
        cpu.gemm(np.empty((2, 3), np.float32), x.astype(np.float64), w)
    with pytest.raises(TypeError, match="argument 'w'"):
        cpu.gemm(np.empty((2, 3), np.float32), x, w.astype(np.int32))
    with pytest.raises(TypeError, match="argument 'ids'"):
        cpu.embedding(np.empty((2, 8), np.float32), w, np.array([0, 1], np.int64))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        cpu.gemm(np.empty((2, 3), np.float32), x.tolist(), w)
    with pytest.raises(TypeError, match="argument 'out'"):
        cpu.rmsnorm(np.empty((2, 8), np.float16), x, np.ones(8, np.float32), 1e-5)


def test_wrong_shape_or_layout_is_value_error(rng):
    x, w = rand(rng, 2, 8), rand(rng, 3, 8)
    with pytest.raises(ValueError, match="argument 'w' has shape \\[3, 7\\]"):
        cpu.gemm(np.empty((2, 3), np.float32), x, np.ascontiguousarray(w[:, :7]))
    with pytest.raises(ValueError, match="argument 'out'"):
        cpu.gemm(np.empty((2, 4), np.float32), x, w)
    with pytest.raises(ValueError, match="argument 'x' must be C-contiguous"):
        cpu.gemm(np.empty((2, 3), np.float32), rand(rng, 8, 2).T, w)
    ro = np.empty((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        cpu.gemm(ro, x, w)
    with pytest.raises(ValueError, match="overlaps"):
        buf = np.zeros(16, np.float32)
        cpu.gemm(buf[:6].reshape(2, 3), buf[:16].reshape(2, 8), w)
    with pytest.raises(ValueError, match="argument 'w'"):
        cpu.rmsnorm(np.empty_like(x), x, np.ones(7, np.float32), 1e-5)
    with pytest.raises(ValueError, match="even"):
        cpu.swiglu(np.empty((2, 3), np.float32), rand(rng, 2, 7))
