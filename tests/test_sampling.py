"""Temperature / top-k / top-p sampling against an independently written law (sampling_oracle):
the filter's probabilities exactly, and the sampler's draws by a chi-square goodness-of-fit test
with a stated false-alarm rate (Z_REJECT: 3.2e-5 per test) and fixed seeds; each case also shows
the test's power by rejecting the unfiltered law."""

import numpy as np
import pytest
from sampling_oracle import Z_REJECT, chi2_z, target_law

from lfm2engine.sampling import Sampler, filter_probs, softmax

CASES = [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.5, 4, 1.0), (1.0, 0, 0.6), (0.9, 5, 0.8), (2.0, 1, 1.0), (1.0, 3, 0.3)]


@pytest.mark.parametrize("temperature, top_k, top_p", CASES + [(1.0, 16, 0.999), (0.5, 15, 1.0)])
def test_filter_equals_the_independent_law(temperature, top_k, top_p):
    rng = np.random.default_rng(3)
    for trial in range(50):
        lg = rng.standard_normal(16).astype(np.float32) * 2
        if trial % 3 == 0:  # ties: repeated logits, also at the k-th place and the top-p edge
            lg[rng.integers(0, 16, 6)] = lg[rng.integers(0, 16)]
        got = filter_probs(softmax(lg, temperature), top_k, top_p)
        want = target_law(lg, temperature, top_k, top_p)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        assert np.array_equal(got > 0, want > 0), (lg, got, want)


@pytest.mark.parametrize("temperature, top_k, top_p", CASES)
def test_sampler_draws_follow_the_law(temperature, top_k, top_p):
    lg = np.random.default_rng(11).standard_normal(16).astype(np.float32) * 1.5
    law = target_law(lg, temperature, top_k, top_p)
    s = Sampler(temperature, top_k, top_p, seed=2024, request_ids=[0])
    n = 6000
    counts = np.bincount([int(s.pick(lg[None], [0])[0]) for _ in range(n)], minlength=16)
    z = chi2_z(counts, law)
    z_plain = chi2_z(counts, target_law(lg, 1.0))
    print(f"T={temperature} top_k={top_k} top_p={top_p}: z {z:.2f} against the law, {z_plain:.2f} against plain "
          "softmax")
    assert z < Z_REJECT
    if (temperature, top_k, top_p) != (1.0, 0, 1.0):
        assert z_plain > Z_REJECT  # the test tells this law from the unfiltered one


def test_per_request_generators_are_independent_of_batch_position():
    lg = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    a = Sampler(0.8, 0, 1.0, seed=9, request_ids=[7, 8, 9])
    b = Sampler(0.8, 0, 1.0, seed=9, request_ids=[9])
    draws_a = [int(a.pick(lg, [0, 1, 2])[2]) for _ in range(50)]
    draws_b = [int(b.pick(lg[2:], [0])[0]) for _ in range(50)]
    assert draws_a == draws_b
