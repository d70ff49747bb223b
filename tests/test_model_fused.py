"""The fused C++ layer loop (_core.cpu.Model) against the Python layer loop of Engine.forward_tokens.

Both compose the same ops in the same order, so logits, KV caches, conv states and the u history
must be bit-identical: prefill of a ragged batch, then decode steps, for every tiny config and
every weight dtype; the fused path must also be the one actually taken.
"""

from __future__ import annotations

import numpy as np
import pytest
from hf_oracle import CONFIGS
from helpers import import_core
from lfm2engine import Engine

_core = import_core()


def python_path(eng: Engine) -> Engine:
    """The same engine forced onto the Python layer loop (moe_impl no longer local_moe)."""
    import copy

    e = copy.copy(eng)
    e.moe_impl = lambda i, h: Engine.local_moe(e, i, h)
    return e


def run(eng: Engine, prompts, steps: int, rng_seed: int):
    rng = np.random.default_rng(rng_seed)
    s = eng.session(len(prompts), max(map(len, prompts)) + steps + 1, rollback=2)
    outs = [s.prefill(prompts)]
    outs.append(s.forward(range(len(prompts)), [[1]] * len(prompts), all_logits=True))
    for _ in range(steps):
        toks = rng.integers(0, eng.config.vocab_size, len(prompts))
        outs.append(s.decode(list(toks)))
    return outs, s


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_equals_python_loop_bitwise(name, dtype, hf_ckpt, rng):
    eng = Engine.from_pretrained(hf_ckpt(name), dtype=dtype)
    prompts = [rng.integers(0, eng.config.vocab_size, n).tolist() for n in (1, 9, 4)]
    fused, s1 = run(eng, prompts, 3, 7)
    assert eng.fused_model() is not None, "the fused path was not taken"
    py, s2 = run(python_path(eng), prompts, 3, 7)
    for a, b in zip(fused, py):
        np.testing.assert_array_equal(a, b)
    for i in s1.k:
        np.testing.assert_array_equal(s1.k[i], s2.k[i])
        np.testing.assert_array_equal(s1.v[i], s2.v[i])
    for i in s1.conv:
        np.testing.assert_array_equal(s1.conv[i], s2.conv[i])
        np.testing.assert_array_equal(s1.uwin[i], s2.uwin[i])


def test_fused_follows_derived_top_k(hf_ckpt, rng):
    eng = Engine.from_pretrained(hf_ckpt("moe_a"))
    prompts = [rng.integers(0, eng.config.vocab_size, 6).tolist()]
    full = eng.logits(prompts)
    d = eng.derive(top_k=1)
    got = d.logits(prompts)
    want = python_path(d).logits(prompts)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, full)


def test_fused_rejects_bad_rows(hf_ckpt):
    eng = Engine.from_pretrained(hf_ckpt("moe_b"))
    eng.logits([[1, 2]])
    s = eng.session(1, 4)
    m = eng.fused_model()
    ids = np.array([1, 2], np.int32)
    z = np.zeros(2, np.int32)
    with pytest.raises(IndexError, match="out_rows"):
        m.forward(
            ids,
            z,
            np.arange(2, dtype=np.int32),
            s.k,
            s.v,
            s.conv,
            None,
            np.array([2], np.int32),
        )
    with pytest.raises(TypeError, match="argument 'out_rows' has dtype int64"):
        m.forward(
            ids,
            z,
            np.arange(2, dtype=np.int32),
            s.k,
            s.v,
            s.conv,
            None,
            np.array([0], np.int64),
        )


@pytest.mark.parametrize("name", ["moe_a", "dense"])
def test_fused_stage_profile(name, hf_ckpt, rng):
    """set_profiling(True) times every stage without changing a bit; off, nothing accumulates."""
    eng = Engine.from_pretrained(hf_ckpt(name))
    prompts = [rng.integers(0, eng.config.vocab_size, 7).tolist()]
    plain = eng.logits(prompts)
    m = eng.fused_model()
    idle = m.profile()
    assert idle["calls"] == 0 and all(v == 0.0 for k, v in idle.items() if k != "calls")
    m.set_profiling(True)
    s = eng.session(1, 16)
    profiled = s.prefill(prompts)
    s.decode([3])
    p = m.profile()
    m.set_profiling(False)
    np.testing.assert_array_equal(profiled, plain)
    assert p["calls"] == 2
    cfg = eng.config
    expect = {"embedding", "rmsnorm", "residual", "head"}
    expect |= {"attn_qkv_gemm", "attn_core", "attn_out_gemm"} if cfg.attention_layers else set()
    expect |= {"conv_in_gemm", "shortconv", "conv_out_gemm"} if cfg.conv_layers else set()
    expect |= {"router", "experts"} if any(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers)) else set()
    expect |= {"dense_ffn"} if any(not cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers)) else set()
    for k in expect:
        assert p[k] > 0.0, f"stage {k} was not timed: {p}"
    for k in set(p) - expect - {"calls"}:
        assert p[k] == 0.0, f"stage {k} has no layer of this model but took {p[k]} s"
    s.decode([4])  # profiling is off again
    assert m.profile() == p
