"""The C++ engine against transformers and the NumPy reference; sessions, rollback, trees, input errors."""

import numpy as np
import pytest

from hf_oracle import CONFIGS, hf_all_logits, hf_greedy
from lfm2engine import Engine
from lfm2engine import reference as ref
from lfm2engine.checkpoint import Checkpoint
from lfm2engine.errors import InputError


@pytest.fixture(scope="module")
def engines(hf_ckpt):
    cache = {}

    def get(name, dtype="float32"):
        if (name, dtype) not in cache:
            cache[(name, dtype)] = Engine.from_pretrained(hf_ckpt(name), dtype=dtype)
        return cache[(name, dtype)]

    return get


def prompts_for(cfg, rng, lengths=(1, 7, 33, 40, 2)):
    return [rng.integers(0, cfg.vocab_size, n).tolist() for n in lengths]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers_mixed_batch(name, engines, hf_ckpt, hf_model, rng):
    eng = engines(name)
    prompts = prompts_for(eng.config, rng)
    got = eng.logits(prompts)  # one ragged batch: lengths 1, 7, 33, 40, 2
    m = hf_model(hf_ckpt(name))
    worst = 0.0
    for b, p in enumerate(prompts):
        want = hf_all_logits(m, p)[-1]
        worst = max(worst, float(np.abs(got[b] - want).max() / np.abs(want).max()))
    print(f"{name}: max relative error vs transformers {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens_match_transformers(name, engines, hf_ckpt, hf_model, rng):
    eng = engines(name)
    prompts = prompts_for(eng.config, rng, (3, 35))
    got = eng.generate(prompts, max_new_tokens=32)
    m = hf_model(hf_ckpt(name))
    for p, g in zip(prompts, got):
        assert g == hf_greedy(m, p, 32)


def test_prefill_equals_stepwise_decode(engines, rng):
    eng = engines("moe_a")
    ids = rng.integers(0, eng.config.vocab_size, 20).tolist()
    s = eng.session(1, 32)
    s.prefill([ids[:1]])
    step = np.stack([s.forward([0], [[t]])[0] for t in ids[1:]])
    full = eng.session(1, 32).forward([0], [ids], all_logits=True)[1:]
    np.testing.assert_allclose(step, full, rtol=1e-5, atol=1e-5 * np.abs(full).max())


def test_batch_composition_does_not_change_results(engines, rng):
    """Row-batch invariance end to end: a prompt alone == the same prompt inside a batch, bitwise."""
    eng = engines("moe_b")
    prompts = prompts_for(eng.config, rng)
    together = eng.logits(prompts)
    for b, p in enumerate(prompts):
        assert np.array_equal(eng.logits([p])[0], together[b])


def test_engine_matches_reference_float64(engines, hf_ckpt, rng):
    eng = engines("moe_c")
    ck = Checkpoint(hf_ckpt("moe_c"))
    w64 = {k: v.astype(np.float64) for k, v in ck.state_dict_f32().items()}
    ids = rng.integers(0, eng.config.vocab_size, 17)
    want = ref.forward(w64, ck.config, ids)
    got = eng.logits([ids])[0]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_bf16_weights_agree_on_top1(engines, rng):
    f32, b16 = engines("moe_a"), engines("moe_a", "bfloat16")
    prompts = prompts_for(f32.config, rng, (5, 9, 12, 30))
    a, b = f32.logits(prompts), b16.logits(prompts)
    assert np.abs(a - b).max() / np.abs(a).max() < 0.05  # bf16 weights: ~2^-8 relative per weight
    assert np.abs(a - b).max() > 0  # really a different storage path
    assert (np.argmax(a, 1) == np.argmax(b, 1)).mean() >= 0.75


def test_session_rollback_equals_recompute(engines, rng):
    eng = engines("moe_a")
    ids = rng.integers(0, eng.config.vocab_size, 30).tolist()
    s = eng.session(2, 40, rollback=8)
    s.prefill([ids[:10], ids[:4]])
    ahead = s.forward([0], [ids[10:18]], all_logits=True)
    s.truncate(0, 12)  # drop 6 tokens
    again = s.forward([0], [ids[12:18]], all_logits=True)
    np.testing.assert_array_equal(again, ahead[2:])
    with pytest.raises(InputError, match="rollback"):
        s.truncate(0, 2)


def test_tree_verification_matches_linear_paths(engines, rng):
    eng = engines("moe_b")
    v = eng.config.vocab_size
    pre = rng.integers(0, v, 6).tolist()
    toks = [3, 4, 5, 6, 7, 8]
    parents = [-1, 0, 0, 1, 2, 3]  # branches 3-4-6-8 and 3-5-7
    s = eng.session(1, 32, rollback=8)
    s.prefill([pre])
    tl = s.forward_tree(0, toks, parents)
    for path in ([0, 1, 3, 5], [0, 2, 4]):
        lin = eng.session(1, 32)
        lin.prefill([pre])
        want = lin.forward([0], [[toks[i] for i in path]], all_logits=True)
        np.testing.assert_allclose(tl[path], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    s.commit_tree([0, 2, 4])
    nxt = s.forward([0], [[9]])  # the committed branch continues like a plain prefill of it
    want = eng.logits([pre + [3, 5, 7, 9]])
    np.testing.assert_allclose(nxt, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_sampling_is_seeded_and_split_invariant(engines, rng):
    eng = engines("moe_a")
    prompts = prompts_for(eng.config, rng, (4, 6, 8))
    a = eng.generate(prompts, 10, temperature=0.8, top_k=20, top_p=0.9, seed=7)
    b = eng.generate(prompts, 10, temperature=0.8, top_k=20, top_p=0.9, seed=7)
    c = eng.generate(prompts[1:2], 10, temperature=0.8, top_k=20, top_p=0.9, seed=7, request_ids=[1])
    d = eng.generate(prompts, 10, temperature=0.8, seed=8)
    assert a == b and c[0] == a[1] and d != a


@pytest.mark.parametrize("batch, new, words", [
    ([[]], 1, "empty"),
    ([[0, 1, 10**6]], 1, "outside the vocabulary"),
    ([[-1]], 1, "outside the vocabulary"),
    ([[1, 2]], 10**6, "exceed the context"),
    ([], 1, "non-empty"),
    ([[1.5, 2]], 1, "integer"),
    ([[1, 2]], -1, "max_new_tokens"),
])
def test_bad_input_raises_input_error(engines, batch, new, words):
    with pytest.raises(InputError, match=words):
        engines("moe_a").generate(batch, max_new_tokens=new)


def test_bad_engine_arguments(hf_ckpt):
    from lfm2engine.errors import BackendError

    with pytest.raises(InputError, match="dtype"):
        Engine.from_pretrained(hf_ckpt("moe_a"), dtype="int8")
    with pytest.raises(InputError, match="device"):
        Engine.from_pretrained(hf_ckpt("moe_a"), device="tpu")
    from lfm2engine import _core

    if not _core.has_cuda() or _core.cuda.device_count() == 0:
        with pytest.raises(BackendError, match="device='cuda': (lfm2engine was built without CUDA|no CUDA GPU)"):
            Engine.from_pretrained(hf_ckpt("moe_a"), device="cuda")
