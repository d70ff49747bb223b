"""Wrong answers never pass as right ones (issue 16, item 2): NaN/Inf outputs or answers are
INVALID, non-finite weights are refused at load naming the tensor, non-finite logits raise a
NumericsError naming the step, and no token is ever drawn from them."""

import numpy as np
import pytest

import fake_cuda
from helpers import small_model
from lfm2engine import Engine
from lfm2engine.backends.cuda import CudaBackend
from lfm2engine.checkpoint import all_finite, f32_to_bf16, save_pretrained
from lfm2engine.errors import CheckpointError, NumericsError
from lfm2engine.workload import validate

NAN, INF = np.float32(np.nan), np.float32(np.inf)


@pytest.mark.parametrize("poison", [NAN, INF, -INF])
@pytest.mark.parametrize("where", ["outputs", "answers"])
def test_validation_treats_non_finite_as_invalid(poison, where):
    ans = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    out = ans.copy()
    assert validate(out, ans)["valid"]
    (out if where == "outputs" else ans)[1, 4] = poison
    res = validate(out, ans)
    assert not res["valid"] and res["mismatches"] == 1 and res["non_finite"] == 1
    assert res["first_mismatch"]["sample"] == 1 and res["first_mismatch"]["index"] == 4


def test_all_nan_run_is_invalid():
    ans = np.zeros((4, 8), np.float32)
    res = validate(np.full((4, 8), np.nan, np.float32), ans)
    assert not res["valid"] and res["mismatches"] == 32


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bf16"])
def test_all_finite_finds_every_non_finite_pattern(dtype, rng):
    """Every NaN payload and both infinities, in every position of a chunk, are found."""
    x = rng.standard_normal(3 * (1 << 20) + 5).astype(np.float32)

    def enc(a):
        return f32_to_bf16(a) if dtype == "bf16" else a.astype(dtype)

    assert all_finite(enc(x))
    bits = {np.float32: [0x7F800000, 0xFF800000, 0x7F800001, 0xFFFFFFFF, 0x7FC00000],
            np.float16: [0x7C00, 0xFC00, 0x7C01, 0xFFFF], "bf16": [0x7F80, 0xFF80, 0x7F81, 0xFFFF]}[dtype]
    for pos in (0, (1 << 20) - 1, 1 << 20, x.size - 1):
        for b in bits:
            y = enc(x).copy()
            y.view(np.uint32 if dtype == np.float32 else np.uint16)[pos] = b
            assert not all_finite(y), (hex(b), pos)
    big = np.array([65504.0, -65504.0], np.float32)  # float16's largest finite values
    assert all_finite(big.astype(np.float16)) and all_finite(f32_to_bf16(np.array([3.38e38], np.float32)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg, tensors = small_model()

    def write(name, edit=None, dtype="F32"):
        d = tmp_path_factory.mktemp(name)
        t = {n: a.copy() for n, a in tensors.items()}
        if edit:
            edit(t)
        save_pretrained(cfg, t, str(d), dtype=dtype)
        return str(d)

    return write


@pytest.mark.parametrize("engine_dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_non_finite_weight_refused_at_load(tiny, engine_dtype, poison):
    name = "model.layers.2.feed_forward.experts.3.w2.weight"

    def edit(t):
        t[name][5, 1] = poison

    d = tiny(f"poison-{engine_dtype}-{poison}", edit)
    with pytest.raises(CheckpointError, match=f"tensor '{name}' holds 1 non-finite value\\(s\\) .* index \\[5, 1\\]"):
        Engine.from_pretrained(d, dtype=engine_dtype)


def test_weight_overflowing_float16_refused(tiny):
    name = "model.layers.1.self_attn.q_proj.weight"

    def edit(t):
        t[name][0, 0] = 1e5  # finite in float32 and bfloat16, Inf in float16

    d = tiny("f16-overflow", edit)
    Engine.from_pretrained(d, dtype="bfloat16")
    with pytest.raises(CheckpointError, match=f"tensor '{name}' does not fit float16 .* 1e\\+05"):
        Engine.from_pretrained(d, dtype="float16")


@pytest.fixture(scope="module")
def overflowing(tiny):
    """Finite weights whose logits overflow: the final norm's weight is 1e38 and the (tied) output
    head's entries are ~1e4, so every logit is far beyond float32."""
    def edit(t):
        t["model.embedding_norm.weight"][:] = 1e38
        t["model.embed_tokens.weight"][:] = 1e4 * np.sign(t["model.embed_tokens.weight"] + 1e-30)

    return tiny("overflow", edit)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")  # numpy backend: expected here
@pytest.mark.parametrize("device", ["cpu", "numpy", "fake_cuda"])
def test_non_finite_logits_raise_naming_the_step(overflowing, device):
    dev = CudaBackend(fake_cuda) if device == "fake_cuda" else device
    eng = Engine.from_pretrained(overflowing, device=dev)
    with pytest.raises(NumericsError, match="non-finite logits .* sequence 0 position 3"):
        eng.logits([[3, 4, 5, 6]])
    for kw in ({}, {"temperature": 0.9, "top_k": 5, "seed": 1}):  # greedy (argmax on the backend) and sampling
        with pytest.raises(NumericsError, match="generation step 0 \\(token 1\\): non-finite logits .* "
                                                "sequence 1 position 1"):
            eng.generate([[3, 4, 5], [7, 8]], max_new_tokens=4, **kw)


def test_no_token_printed_from_nan_logits(overflowing, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "lfm2engine.generate", "--model", overflowing, "--prompt-ids",
                        "3,4,5", "--max-new-tokens", "3"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 2, r.stderr
    assert "NumericsError: generation step 0" in r.stderr
    assert r.stdout.strip() == "", r.stdout  # nothing generated is printed


def test_rmsnorm_overflow():
    """Found by tests/test_fuzz.py: a finite row whose float32 sum of squares overflows (RMS beyond
    ~1.8e19) is rescaled by max|x| instead of normalizing to zeros, in the C++ op (every SIMD level),
    the fused loop's norms (the same op) and the reference alike; ordinary rows keep their bits."""
    from lfm2engine import reference as ref
    from lfm2engine.backends.cpu import core

    _core = core()
    x = np.full((3, 16), 1e19, np.float32)
    x[1, ::2] = -3e38  # near float32's largest value
    x[2] = np.linspace(-2.0, 3.0, 16, dtype=np.float32)  # an ordinary row beside them
    w = np.linspace(0.5, 1.5, 16, dtype=np.float32)
    want = ref.rmsnorm(x.astype(np.float64), w.astype(np.float64), 1e-5)
    assert np.allclose(want[0], w) and np.isfinite(want).all()
    got32 = ref.rmsnorm(x, w, 1e-5)
    assert np.isfinite(got32).all() and np.allclose(got32, want, rtol=1e-5)
    ordinary = np.empty((1, 16), np.float32)
    for level in ("avx512", "avx2", "scalar")[("avx512", "avx2", "scalar").index(_core.detected_simd_level()):]:
        _core.set_simd_level(level)
        out = np.empty_like(x)
        _core.cpu.rmsnorm(out, x, w, 1e-5)
        assert np.all(np.isfinite(out)) and np.allclose(out, want, rtol=1e-5), level
        _core.cpu.rmsnorm(ordinary, x[2:], w, 1e-5)
        assert np.array_equal(ordinary[0], out[2]), "an ordinary row's bits do not depend on its neighbours"
    _core.set_simd_level(_core.detected_simd_level())
    inf = x.copy()
    inf[0, 3] = np.inf
    out = np.empty_like(x)
    _core.cpu.rmsnorm(out, inf, w, 1e-5)
    assert not np.isfinite(out[0]).all(), "a row holding inf stays non-finite (the logits check names it)"