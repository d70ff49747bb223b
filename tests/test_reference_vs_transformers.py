"""The NumPy reference against transformers' own Lfm2Moe / Lfm2 (eager, fp32) on random checkpoints."""

import numpy as np
import pytest

from hf_oracle import CONFIGS, hf_all_logits, hf_greedy
from lfm2engine import reference as ref
from lfm2engine.checkpoint import Checkpoint


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_logits_match_transformers(name, hf_ckpt, hf_model, rng):
    path = hf_ckpt(name)
    ck = Checkpoint(path)
    w = ck.state_dict_f32()
    ids = rng.integers(0, ck.config.vocab_size, 37)
    want = hf_all_logits(hf_model(path), ids)
    got = ref.forward(w, ck.config, ids, all_logits=True)
    err = np.abs(got - want).max() / np.abs(want).max()
    print(f"{name}: max relative error {err:.2e}")
    assert err < 1e-5, f"{name}: reference vs transformers max rel err {err:.2e}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_greedy_matches_transformers(name, hf_ckpt, hf_model, rng):
    path = hf_ckpt(name)
    ck = Checkpoint(path)
    w = ck.state_dict_f32()
    prompt = rng.integers(0, ck.config.vocab_size, 5).tolist()
    assert ref.greedy(w, ck.config, prompt, 32) == hf_greedy(hf_model(path), prompt, 32)


def test_reference_prefill_equals_stepwise(hf_ckpt, rng):
    ck = Checkpoint(hf_ckpt("moe_a"))
    w = ck.state_dict_f32()
    ids = rng.integers(0, ck.config.vocab_size, 9)
    full = ref.forward(w, ck.config, ids, all_logits=True)
    cache = ref.ReferenceCache(ck.config)
    steps = np.stack([ref.forward(w, ck.config, [t], cache) for t in ids])
    np.testing.assert_allclose(steps, full, rtol=1e-5, atol=1e-5)


def test_deliberate_bugs_are_detected(hf_ckpt, hf_model, rng):
    """The oracle setup is sensitive: a 1+w RMSNorm (MODEL.md §8.1) moves the logits far past tolerance."""
    path = hf_ckpt("moe_a")
    ck = Checkpoint(path)
    w = ck.state_dict_f32()
    ids = rng.integers(0, ck.config.vocab_size, 12)
    want = hf_all_logits(hf_model(path), ids)
    orig = ref.rmsnorm
    try:
        ref.rmsnorm = lambda x, wt, eps: orig(x, 1.0 + wt, eps)
        bad = ref.forward(w, ck.config, ids, all_logits=True)
    finally:
        ref.rmsnorm = orig
    assert np.abs(bad - want).max() > 1e-2
