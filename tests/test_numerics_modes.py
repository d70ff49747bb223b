"""Every numerics mode of the CPU engine against an exact model-level reference (issue 16, item 10).

The reference is the float64 NumPy model (reference.py) run on exactly what the mode computes
with: the projection weights rounded to the storage dtype (bfloat16 or float16; norms, conv taps,
router and expert_bias stay float32, weights.py), and for the bf16-dot mode every projection's
input activations rounded to bfloat16 as the kernel does (RNE, once per GEMM). What remains is
float32 accumulation error, so the bound is fp32's (helpers.assert_close with the longest
reduction), and each test also shows that the bound separates the mode from its neighbours: the
engine is far outside it against the unrounded reference.

bf16-dot caveat: the engine rounds its own float32 activations, the reference its float64 ones;
where the two straddle a bf16 rounding midpoint they round one bf16 ulp apart (a fraction of
about eps32 / eps_bf16 = 2^-16 of the elements), an error of ~2^-9 of one term that the fp32
bound would not absorb. The data here has no such element (the tests are deterministic: fixed
checkpoints and prompts); a change of data that meets one shows up as a single-term error.
"""

import contextlib

import numpy as np
import pytest
from helpers import bf16_bits, bf16_to_f32, import_core, tolerance
from lfm2engine import Engine
from lfm2engine import reference as ref
from lfm2engine.checkpoint import Checkpoint

_core = import_core()

PROJ = tuple(f"{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"))


def is_projection(name: str) -> bool:
    """Stored in the engine's dtype (weights.py `proj`/`host`); everything else stays float32."""
    return name.endswith(PROJ) or name in ("model.embed_tokens.weight", "lm_head.weight")


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    a = np.asarray(a, np.float32)
    if dtype == "bfloat16":
        return bf16_to_f32(bf16_bits(a))
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float32)
    return a


def rounded_weights(ck: Checkpoint, dtype: str) -> dict:
    return {n: round_to(a, dtype if is_projection(n) else "float32").astype(np.float64)
            for n, a in ck.state_dict_f32().items()}


def bf16_act(x: np.ndarray) -> np.ndarray:
    """float64 activations as the bf16-dot kernel sees them: float32, then bf16 (RNE)."""
    return bf16_to_f32(bf16_bits(np.asarray(x, np.float32))).astype(np.float64)


@contextlib.contextmanager
def bf16_activations(monkeypatch, wts: dict):
    """reference.py with every projection GEMM fed bf16-rounded activations (router: float32)."""
    proj_ids = {id(a) for n, a in wts.items() if is_projection(n)}
    gemm, swiglu = ref.gemm, ref.swiglu

    def gemm_rounded(x, w):
        return gemm(bf16_act(x) if id(w) in proj_ids else x, w)

    def experts_rounded(x, ids, weights, w1, w3, w2):
        out = np.zeros_like(x)
        for t in range(x.shape[0]):
            xt = bf16_act(x[t])
            for j in range(ids.shape[1]):
                e = ids[t, j]
                h = swiglu(w1[e] @ xt, w3[e] @ xt)
                out[t] += weights[t, j] * (w2[e] @ bf16_act(h))
        return out

    with monkeypatch.context() as m:
        m.setattr(ref, "gemm", gemm_rounded)
        m.setattr(ref, "moe_experts", experts_rounded)
        yield


def rel_err(got, want) -> float:
    return float(np.abs(got - want).max() / np.sqrt(np.mean(want * want)))


@pytest.fixture(scope="module")
def cases(hf_ckpt):
    rng = np.random.default_rng(7)
    out = {}
    for name in ("moe_a", "dense"):
        ck = Checkpoint(hf_ckpt(name))
        out[name] = (hf_ckpt(name), ck, [rng.integers(0, ck.config.vocab_size, n).tolist() for n in (3, 11)])
    return out


def engine_logits(path, dtype, prompts):
    eng = Engine.from_pretrained(path, dtype=dtype)
    return eng.logits(prompts)


def reference_logits(ck, wts, prompts):
    return np.stack([ref.forward(wts, ck.config, p) for p in prompts])


def fp32_bound(cfg) -> float:
    """Relative (to the logits' RMS) bound of float32 accumulation through the model: the longest
    reduction is the FFN width / hidden size; a factor per layer for the residual stream."""
    k = max(cfg.hidden_size, cfg.ffn_dim, cfg.moe_intermediate_size or 1)
    return tolerance(np.float32, k, factor=4.0) * (cfg.num_hidden_layers + 1)


@pytest.mark.parametrize("name", ["moe_a", "dense"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_rounded_weight_modes_equal_the_reference_on_rounded_weights(cases, name, dtype):
    path, ck, prompts = cases[name]
    got = engine_logits(path, dtype, prompts)
    exact = reference_logits(ck, rounded_weights(ck, dtype), prompts)
    unrounded = reference_logits(ck, rounded_weights(ck, "float32"), prompts)
    bound = fp32_bound(ck.config)
    err, err_f32 = rel_err(got, exact), rel_err(got, unrounded)
    print(f"{name} {dtype}: vs rounded-weight reference {err:.2e} (bound {bound:.2e}); vs float32 weights "
          f"{err_f32:.2e}")
    assert err <= bound
    assert err_f32 > 10 * bound  # the bound tells this mode from float32 weights


@pytest.mark.skipif(not _core.bf16_dot_available(), reason="this CPU has no AVX512_BF16 (vdpbf16ps)")
@pytest.mark.parametrize("name", ["moe_a", "dense"])
def test_bf16_dot_mode_equals_the_reference_on_rounded_activations(cases, name, monkeypatch):
    path, ck, prompts = cases[name]
    was = _core.bf16_dot()
    try:
        _core.set_bf16_dot(True)
        got = engine_logits(path, "bfloat16", prompts)
    finally:
        _core.set_bf16_dot(was)
    wts = rounded_weights(ck, "bfloat16")
    with bf16_activations(monkeypatch, wts):
        exact = reference_logits(ck, wts, prompts)
    weights_only = reference_logits(ck, wts, prompts)  # the exact bf16 mode's reference
    bound = fp32_bound(ck.config)
    err, err_w = rel_err(got, exact), rel_err(got, weights_only)
    print(f"{name} bf16-dot: vs rounded-activation reference {err:.2e} (bound {bound:.2e}); vs rounded weights "
          f"only {err_w:.2e}")
    assert err <= bound
    assert err_w > 10 * bound  # the bound tells bf16-dot from the exact bf16 mode
