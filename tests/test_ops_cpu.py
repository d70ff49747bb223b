"""Every CPU op of lfm2engine._core.cpu against the NumPy reference (python/lfm2engine/reference.py).

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
from helpers import as_weight, assert_close, bf16_bits, bf16_to_f32, import_core, weight_as_f64
from lfm2engine import reference as ref

_core = import_core()
cpu = _core.cpu

ALL_LEVELS = ("avx512", "avx2", "scalar")
LEVELS = ALL_LEVELS[ALL_LEVELS.index(_core.detected_simd_level()) :]
WDTYPES = ("float32", "bfloat16", "float16")

# LFM2-8B-A1B
D, H, HKV, DH, F, FE, E, K, L, V = 2048, 32, 8, 64, 7168, 1792, 32, 4, 3, 65536


@pytest.fixture(autouse=True)
def _restore_core_state():
    yield
    _core.set_simd_level(_core.detected_simd_level())
    _core.set_num_threads(0)


@pytest.fixture(params=LEVELS)
def level(request):
    _core.set_simd_level(request.param)
    assert _core.simd_level() == request.param
    return request.param


def rand(rng, *shape, scale=1.0):
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)


def i32(a):
    return np.ascontiguousarray(a, dtype=np.int32)


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


# ----------------------------------------------------------------------------- gemm

GEMM_SHAPES = [(1, 1, 1), (1, 7, 5), (3, 17, 33), (13, 31, 47), (2, 16, 16), (5, 9, 100), (31, 45, 129), (1, 64, 2048),
               (13, 21, 1037), (8, 12, 1536)]  # the last two: K-blocked tiles


@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("t,n,k", GEMM_SHAPES)
def test_gemm_matches_reference(level, wdtype, t, n, k, rng):
    x = rand(rng, t, k)
    w = as_weight(rand(rng, n, k), wdtype)
    out = np.full((t, n), np.nan, np.float32)
    cpu.gemm(out, x, w)
    want = ref.gemm(x.astype(np.float64), weight_as_f64(w))
    assert_close(out, want, k=k, name=f"gemm {level} {wdtype} T={t} N={n} K={k}")


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
@pytest.mark.parametrize("t,n,k", GEMM_SHAPES + [(7, 13, 31), (3, 5, 33), (9, 300, 256)])
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


@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("v,d,t", [(1, 1, 1), (97, 40, 7), (131, 33, 13), (64, 2048, 3)])
def test_embedding_matches_reference(level, wdtype, v, d, t, rng):
    table = as_weight(rand(rng, v, d), wdtype)
    ids = i32(rng.integers(0, v, t))
    ids[0] = v - 1
    out = np.empty((t, d), np.float32)
    cpu.embedding(out, table, ids)
    assert np.array_equal(out, ref.embedding(weight_as_f64(table), ids).astype(np.float32))


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


@pytest.mark.parametrize("r,d", [(1, 1), (3, 5), (7, 33), (13 * 32, DH), (5, D), (1, F)])
def test_rmsnorm_matches_reference(level, r, d, rng):
    x = rand(rng, r, d, scale=3.0)
    w = rand(rng, d)
    out = np.empty_like(x)
    cpu.rmsnorm(out, x, w, 1e-5)
    want = ref.rmsnorm(x.astype(np.float64), w.astype(np.float64), 1e-5)
    assert_close(out, want, k=d, name=f"rmsnorm {level} {r}x{d}")
    inplace = x.copy()
    cpu.rmsnorm(inplace, inplace, w, 1e-5)
    assert np.array_equal(inplace, out), "in place must equal out of place"


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


@pytest.mark.parametrize("theta", [1e6, 1e4])
@pytest.mark.parametrize("t,h,dh", [(1, 1, 2), (5, 3, 6), (7, 5, 40), (13, H, DH), (3, HKV, DH)])
def test_rope_matches_reference(level, theta, t, h, dh, rng):
    x = rand(rng, t, h, dh)
    pos = i32(rng.integers(0, 40000, t))
    pos[0] = 0
    want = ref.rope(x, pos, theta)  # float32, cos/sin from double, as the op
    got = x.copy()
    cpu.rope(got, pos, theta)
    assert_close(got, want, k=1, factor=2.0, name=f"rope {level}")
    assert np.array_equal(got[0], x[0]), "position 0 is the identity"


def test_rope_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="must be even"):
        cpu.rope(np.zeros((2, 3, 5), np.float32), i32([0, 1]), 1e6)


# ----------------------------------------------------------------------------- kv cache + attention


def test_kv_write_scatters_and_checks(rng):
    b, hkv, smax, dh, t = 3, 2, 11, 6, 5
    kc = np.zeros((b, hkv, smax, dh), np.float32)
    vc = np.zeros_like(kc)
    k, v = rand(rng, t, hkv, dh), rand(rng, t, hkv, dh)
    seq, pos = i32([0, 0, 2, 1, 2]), i32([0, 1, 10, 4, 3])
    cpu.kv_write(kc, vc, k, v, seq, pos)
    kw, vw = np.zeros_like(kc), np.zeros_like(vc)
    for i in range(t):
        kw[seq[i], :, pos[i]] = k[i]
        vw[seq[i], :, pos[i]] = v[i]
    assert np.array_equal(kc, kw) and np.array_equal(vc, vw)
    before = kc.copy()
    with pytest.raises(IndexError, match="pos"):
        cpu.kv_write(kc, vc, k, v, seq, i32([0, 1, 11, 4, 3]))
    with pytest.raises(IndexError, match="seq"):
        cpu.kv_write(kc, vc, k, v, i32([0, 3, 0, 0, 0]), pos)
    assert np.array_equal(kc, before), "a rejected write must not touch the cache"


def attention_ref(q, kc, vc, seq, pos, mask=None):
    """float64 reference: reference.attention per token over its visible cache rows."""
    out = np.empty(q.shape, np.float64)
    for t in range(q.shape[0]):
        vis = np.nonzero(mask[t])[0] if mask is not None else np.arange(pos[t] + 1)
        if len(vis) == 0:
            out[t] = 0.0
            continue
        k = kc[seq[t]][:, vis].transpose(1, 0, 2).astype(np.float64)  # [Hkv, S, Dh] -> [S, Hkv, Dh]
        v = vc[seq[t]][:, vis].transpose(1, 0, 2).astype(np.float64)
        out[t] = ref.attention(q[t : t + 1].astype(np.float64), k, v, np.array([len(vis) - 1]))[0]
    return out


def make_attention_case(rng, t, h, hkv, dh, b, smax):
    q = rand(rng, t, h, dh)
    kc, vc = rand(rng, b, hkv, smax, dh), rand(rng, b, hkv, smax, dh)
    seq = i32(rng.integers(0, b, t))
    pos = i32(rng.integers(0, smax, t))
    pos[0] = 0
    return q, kc, vc, seq, pos


ATTN_SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (7, 6, 3, 20, 2, 37),
    (5, 5, 1, 24, 3, 19),
    (11, 3, 3, 8, 1, 50),
    (3, H, HKV, DH, 2, 300),
]


@pytest.mark.parametrize("t,h,hkv,dh,b,smax", ATTN_SHAPES)
def test_attention_causal_matches_reference(level, t, h, hkv, dh, b, smax, rng):
    q, kc, vc, seq, pos = make_attention_case(rng, t, h, hkv, dh, b, smax)
    out = np.full_like(q, np.nan)
    cpu.attention(out, q, kc, vc, seq, pos)
    assert_close(out, attention_ref(q, kc, vc, seq, pos), k=dh, factor=8.0, name=f"attention {level}")


@pytest.mark.parametrize("t,h,hkv,dh,b,smax", ATTN_SHAPES[1:])
def test_attention_mask_matches_reference(level, t, h, hkv, dh, b, smax, rng):
    q, kc, vc, seq, pos = make_attention_case(rng, t, h, hkv, dh, b, smax)
    mask = (rng.random((t, smax)) < 0.4).astype(np.uint8)
    mask[np.arange(t), pos] = 1
    mask[-1] = 0  # nothing visible -> zeros
    out = np.full_like(q, np.nan)
    cpu.attention(out, q, kc, vc, seq, pos, mask)
    assert_close(out, attention_ref(q, kc, vc, seq, pos, mask), k=dh, factor=8.0, name=f"masked attention {level}")
    assert (out[-1] == 0).all()
    causal = (np.arange(smax)[None, :] <= pos[:, None]).astype(np.uint8)
    a, c = np.empty_like(q), np.empty_like(q)
    cpu.attention(a, q, kc, vc, seq, pos, causal)
    cpu.attention(c, q, kc, vc, seq, pos)
    assert np.array_equal(a, c), "a causal mask must give the causal path's bits"


def test_attention_token_invariance(level, rng):
    q, kc, vc, seq, pos = make_attention_case(rng, 9, 8, 2, 64, 2, 100)
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


def shortconv_ref(bcx, conv_w, state, seq):
    """reference.shortconv applied to each sequence's run; returns (out, new_state, u)."""
    d = bcx.shape[1] // 3
    out = np.empty((bcx.shape[0], d), np.float32)
    state = state.copy()
    t = 0
    while t < len(seq):
        e = t
        while e < len(seq) and seq[e] == seq[t]:
            e += 1
        out[t:e], state[seq[t]] = ref.shortconv(bcx[t:e], conv_w, state[seq[t]])
        t = e
    return out, state, bcx[:, :d] * bcx[:, 2 * d :]


@pytest.mark.parametrize(
    "d,lk,seq",
    [
        (1, 1, [0]),
        (5, 3, [0]),
        (40, 3, [0, 0, 0, 0, 0, 0, 0]),
        (33, 3, [2, 2, 2, 0, 1, 1, 3]),  # batched prefill: runs of 3, 1, 2, 1
        (300, 4, [1, 0, 0, 0, 0, 0, 2, 2]),
        (D, L, [0, 1, 2, 3, 4]),  # batched decode
        (D, L, [3] * 13 + [1] * 2),
    ],
)
def test_shortconv_matches_reference_exactly(level, d, lk, seq, rng):
    seq = i32(seq)
    b = int(seq.max()) + 1
    bcx, conv_w = rand(rng, len(seq), 3 * d), rand(rng, d, lk)
    state = rand(rng, b, lk - 1, d)
    want_out, want_state, want_u = shortconv_ref(bcx, conv_w, state, seq)
    out, u = np.full((len(seq), d), np.nan, np.float32), np.empty((len(seq), d), np.float32)
    cpu.shortconv(out, bcx, conv_w, state, seq, u)
    assert np.array_equal(out, want_out)
    assert np.array_equal(state, want_state)
    assert np.array_equal(u, want_u)


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


@pytest.mark.parametrize("t,f", [(1, 1), (3, 7), (17, 33), (2, F), (5, FE)])
def test_swiglu_matches_reference(level, t, f, rng):
    gu = rand(rng, t, 2 * f, scale=4.0)
    gu[0, 0] = -100.0  # exp overflow side
    gu[-1, f - 1] = 90.0
    out = np.empty((t, f), np.float32)
    cpu.swiglu(out, gu)
    g64 = gu.astype(np.float64)
    want = ref.swiglu(g64[:, :f], g64[:, f:])
    assert_close(out, want, k=1, factor=8.0, name=f"swiglu {level}")


# ----------------------------------------------------------------------------- moe


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "t,e,k,norm,scale",
    [(1, 6, 3, True, 1.0), (17, E, K, True, 1.0), (5, 7, 2, False, 1.5), (13, 5, 1, True, 2.0), (3, 4, 4, True, 1.0)],
)
def test_moe_route_matches_reference(bias, t, e, k, norm, scale, rng):
    logits = rand(rng, t, e, scale=2.0)
    b = rand(rng, e, scale=0.5) if bias else None
    ids, w = np.empty((t, k), np.int32), np.empty((t, k), np.float32)
    cpu.moe_route(ids, w, logits, b, norm, scale)
    want_ids, want_w = ref.moe_route(logits, b, k, norm, scale)
    assert np.array_equal(ids, want_ids)
    assert_close(w, want_w, k=k, factor=2.0, name="route weights")


def test_moe_route_ties_go_to_lower_id():
    logits = np.zeros((2, 8), np.float32)  # all scores equal
    bias = np.zeros(8, np.float32)
    bias[[5, 6]] = 0.25  # two equal winners, then ties among the rest
    ids, w = np.empty((2, 4), np.int32), np.empty((2, 4), np.float32)
    cpu.moe_route(ids, w, logits, bias, True, 1.0)
    assert ids.tolist() == [[5, 6, 0, 1]] * 2
    want_ids, want_w = ref.moe_route(logits, bias, 4, True, 1.0)
    assert np.array_equal(ids, want_ids) and np.allclose(w, want_w, rtol=1e-7)
    with pytest.raises(ValueError, match="top-k"):
        cpu.moe_route(np.empty((2, 9), np.int32), np.empty((2, 9), np.float32), logits, None, True, 1.0)


def expert_ref(x64, e, w13, w2):
    fe = w2.shape[2]
    gu = weight_as_f64(w13[e]) @ x64
    return weight_as_f64(w2[e]) @ ref.swiglu(gu[:fe], gu[fe:])


def make_experts(rng, e, d, fe, wdtype, used=None):
    """w13 [E, 2Fe, D], w2 [E, D, Fe]; with `used`, only those experts are filled (the rest are
    untouched, lazily allocated pages: the real E=32 stride without 1 GB of random numbers)."""
    if used is None:
        return (
            as_weight(rand(rng, e, 2 * fe, d, scale=0.05), wdtype),
            as_weight(rand(rng, e, d, fe, scale=0.05), wdtype),
        )
    dt = np.uint16 if wdtype == "bfloat16" else np.dtype(wdtype)
    w13, w2 = np.empty((e, 2 * fe, d), dt), np.empty((e, d, fe), dt)
    for i in used:
        w13[i] = as_weight(rand(rng, 2 * fe, d, scale=0.05), wdtype)
        w2[i] = as_weight(rand(rng, d, fe, scale=0.05), wdtype)
    return w13, w2


@pytest.mark.parametrize("wdtype", WDTYPES)
def test_moe_expert_rows_matches_reference(level, wdtype, rng):
    e, d, fe, n = 5, 24, 20, 11
    w13, w2 = make_experts(rng, e, d, fe, wdtype)
    x = rand(rng, n, d)
    eids = i32(rng.integers(-1, e, n))
    eids[:2] = [4, -1]
    out = np.full((n, d), np.nan, np.float32)
    cpu.moe_expert_rows(out, x, eids, w13, w2)
    want = np.array(
        [expert_ref(x[i].astype(np.float64), eids[i], w13, w2) if eids[i] >= 0 else np.zeros(d) for i in range(n)]
    )
    assert_close(out, want, k=d + fe, factor=8.0, name=f"expert rows {level} {wdtype}")
    assert (out[eids < 0] == 0).all()


@pytest.mark.parametrize("wdtype", ["bfloat16", "float32"])
def test_moe_expert_rows_real_shapes(wdtype, rng):
    used = [0, 31]  # the first and last expert of the real E = 32 stride
    w13, w2 = make_experts(rng, E, D, FE, wdtype, used)
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


def test_moe_expert_rows_batch_invariance(level, rng):
    """The EP/TP building block: a row's output is bit-identical however rows are grouped."""
    e, d, fe, n = 6, 40, 36, 23
    w13, w2 = make_experts(rng, e, d, fe, "bfloat16")
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
    w13, w2 = make_experts(rng, 3, 8, 4, "float32")
    with pytest.raises(IndexError, match="eids"):
        cpu.moe_expert_rows(np.empty((2, 8), np.float32), rand(rng, 2, 8), i32([0, 3]), w13, w2)
    with pytest.raises(ValueError, match="w13"):
        cpu.moe_expert_rows(np.empty((2, 8), np.float32), rand(rng, 2, 8), i32([0, 1]), w13[:, :7], w2)


@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("t,e,k,d,fe", [(1, 6, 3, 40, 24), (7, 5, 1, 48, 20), (13, 7, 2, 36, 28)])
def test_moe_experts_matches_reference(level, wdtype, t, e, k, d, fe, rng):
    w13, w2 = make_experts(rng, e, d, fe, wdtype)
    x = rand(rng, t, d)
    logits = rand(rng, t, e)
    ids, w = ref.moe_route(logits, None, k, True, 1.0)
    out = np.full((t, d), np.nan, np.float32)
    cpu.moe_experts(out, x, i32(ids), w, w13, w2)
    w13_64, w2_64 = weight_as_f64(w13), weight_as_f64(w2)
    want = ref.moe_experts(x.astype(np.float64), ids, w.astype(np.float64), w13_64[:, :fe], w13_64[:, fe:], w2_64)
    assert_close(out, want, k=d + fe, factor=8.0, name=f"moe_experts {level} {wdtype}")


def test_moe_experts_skips_negative_ids_and_is_invariant(level, rng):
    t, e, k, d, fe = 9, 5, 3, 32, 16
    w13, w2 = make_experts(rng, e, d, fe, "float32")
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


# ----------------------------------------------------------------------------- argmax


@pytest.mark.parametrize("t,v", [(1, 1), (3, 17), (5, 100), (2, V)])
def test_argmax_matches_numpy(level, t, v, rng):
    logits = rand(rng, t, v)
    out = np.empty(t, np.int32)
    cpu.argmax(out, logits)
    assert np.array_equal(out, np.argmax(logits, axis=-1))


def test_argmax_ties_nan_inf(level):
    x = np.full((5, 40), -np.inf, np.float32)
    x[0, [3, 20, 39]] = 7.0  # tie: first
    x[1, [35, 39]] = 2.0  # tie inside the tail
    x[2, 17] = np.nan  # NaN wins, as numpy
    x[2, 30] = np.inf
    x[2, 33] = np.nan
    x[4, [0, 1]] = [-0.0, 0.0]
    out = np.empty(5, np.int32)
    cpu.argmax(out, x)
    assert out.tolist() == np.argmax(x, axis=-1).tolist() == [3, 35, 17, 0, 0]


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
    q, kc, vc, seq, pos = make_attention_case(rng, 5, 6, 2, 20, 2, 40)
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
    w13, w2 = make_experts(rng, 5, 24, 20, "float16")
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
