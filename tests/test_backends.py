"""One Engine over backend values: the numpy backend (the op contract in NumPy) against the cpu
backend and the float64 reference, the same session features on both, and the capability
checks (profile, parallel executors) that refuse what a backend cannot do."""

import numpy as np
import pytest

from helpers import assert_close
from hf_oracle import CONFIGS
from lfm2engine import Engine
from lfm2engine import reference as ref
from lfm2engine.backends import DEVICES, Backend, get_backend
from lfm2engine.backends.cpu import NumpyBackend
from lfm2engine.checkpoint import Checkpoint
from lfm2engine.errors import BackendError, InputError, ParallelError


@pytest.fixture(scope="module")
def engines(hf_ckpt):
    cache = {}

    def get(name, device, dtype="float32"):
        if (name, device, dtype) not in cache:
            cache[(name, device, dtype)] = Engine.from_pretrained(hf_ckpt(name), dtype=dtype, device=device)
        return cache[(name, device, dtype)]

    return get


def depth(cfg) -> int:
    """Reduction length behind one logit: every layer's D-long dot products feed the next, so the
    rounding errors of the layers add up like one reduction of D x layers terms."""
    return cfg.hidden_size * cfg.num_hidden_layers


def prompts_for(cfg, rng, lengths=(1, 7, 12, 2)):
    return [rng.integers(0, cfg.vocab_size, n).tolist() for n in lengths]


def test_get_backend_names_and_errors():
    assert get_backend("numpy").name == "numpy" and get_backend("cpu").name == "cpu"
    b = NumpyBackend()
    assert get_backend(b) is b
    with pytest.raises(InputError, match="device 'tpu' is not supported"):
        get_backend("tpu")
    assert set(DEVICES) == {"cpu", "cuda", "numpy"}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_numpy_backend_matches_the_float64_reference(name, engines, hf_ckpt, rng):
    """The shared layer loop on NumPy ops, ragged batch, against reference.forward per prompt."""
    eng = engines(name, "numpy")
    ck = Checkpoint(hf_ckpt(name))
    w64 = {k: v.astype(np.float64) for k, v in ck.state_dict_f32().items()}
    prompts = prompts_for(eng.config, rng)
    got = eng.logits(prompts)
    for b, p in enumerate(prompts):
        want = ref.forward(w64, ck.config, np.asarray(p))
        assert_close(got[b], want, k=depth(eng.config), name=f"{name} prompt {b}")


@pytest.mark.parametrize("name", ["moe_a", "dense"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_numpy_and_cpu_backends_agree(name, dtype, engines, rng):
    """Same weights (same storage dtype), same loop: logits within fp32 rounding, greedy tokens equal."""
    a, b = engines(name, "numpy", dtype), engines(name, "cpu", dtype)
    prompts = prompts_for(a.config, rng)
    assert_close(a.logits(prompts), b.logits(prompts), k=depth(a.config), name=f"{name} {dtype}")
    assert a.generate(prompts, max_new_tokens=6) == b.generate(prompts, max_new_tokens=6)


def test_numpy_backend_is_row_batch_invariant(engines, rng):
    eng = engines("moe_b", "numpy")
    prompts = prompts_for(eng.config, rng)
    together = eng.logits(prompts)
    for b, p in enumerate(prompts):
        assert np.array_equal(eng.logits([p])[0], together[b])


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_tree_rollback_and_argmax_run_on_every_host_backend(device, engines, rng):
    """forward_tree + commit_tree == appending the accepted path; truncate == recompute; argmax ids
    == argmax of the logits: the same shared session code on each backend."""
    eng = engines("moe_c", device)
    ids = rng.integers(0, eng.config.vocab_size, 8).tolist()
    s = eng.session(1, 32, rollback=4)
    s.prefill([ids])
    tree = s.forward_tree(0, [4, 5, 6, 7], [-1, 0, -1, 2])  # two branches: 4 -> 5 and 6 -> 7
    s.commit_tree([2, 3])
    after = s.forward([0], [[9]])
    plain = eng.session(1, 32)
    plain.prefill([ids])
    linear = plain.forward([0], [[6, 7]], all_logits=True)
    assert_close(tree[2:], linear, k=eng.config.hidden_size, name="tree branch == linear pass")
    assert_close(after, plain.forward([0], [[9]]), k=eng.config.hidden_size, name="after commit")
    s.forward([0], [[10, 11]])
    s.truncate(0, 11)
    assert_close(s.forward([0], [[12]]), plain.forward([0], [[12]]), k=eng.config.hidden_size, name="truncate")
    ids_out = plain.forward([0], [[13]], argmax=True)
    assert ids_out.dtype == np.int32 and ids_out.shape == (1,)


def test_greedy_argmax_path_equals_argmax_of_logits(engines, rng):
    eng = engines("moe_a", "cpu")
    prompts = prompts_for(eng.config, rng)
    s = eng.session(len(prompts), 16)
    logits = s.prefill(prompts)
    assert np.array_equal(eng.session(len(prompts), 16).prefill(prompts, argmax=True), np.argmax(logits, axis=-1))


def test_profile_is_refused_where_the_backend_has_no_fused_loop(engines):
    eng = engines("moe_a", "numpy")
    assert eng.fused_model() is None
    with pytest.raises(BackendError, match="numpy backend has none"):
        eng.profile()


def test_parallel_executors_need_a_host_memory_backend(engines):
    from lfm2engine.parallel import executors
    from lfm2engine.parallel.plan import ParallelPlan

    class DeviceLike(NumpyBackend):  # a backend whose arrays do not live in host memory
        host_memory = False

    eng = engines("moe_a", "numpy")
    dev = Engine(eng.config, eng.w, DeviceLike())

    class OneRank:
        def Get_size(self):
            return 1

        def Get_rank(self):
            return 0

    with pytest.raises(ParallelError, match="host memory"):
        executors.install(dev, ParallelPlan("ep", 1, 0), OneRank())


def test_backend_base_primitives_on_host_arrays():
    b = Backend()
    x = b.zeros((3, 2))
    b.add_(x, np.ones((3, 2), np.float32))
    assert np.array_equal(b.gather_rows(x, np.array([2, 0], np.int32)), np.ones((2, 2), np.float32))
    v = x[1]
    b.write(v, b.download(v))  # a downloaded host view written back: nothing to copy
    b.write(v, np.full(2, 5, np.float32))
    b.zero_(x[0])
    assert np.array_equal(x, np.array([[0, 0], [5, 5], [1, 1]], np.float32))


@pytest.mark.parametrize("call,match", [
    (lambda s: s.truncate(-1, 2), "sequence -1 is outside"),
    (lambda s: s.truncate(2, 0), "sequence 2 is outside"),
    (lambda s: s.truncate(True, 0), "sequence True is outside"),
    (lambda s: s.truncate(0, 1.0), "cannot truncate to 1.0"),
    (lambda s: s.forward([0], [[1.9]]), "token ids must be integers"),
    (lambda s: s.forward([0], [[True]]), "token ids must be integers"),
    (lambda s: s.forward([0, 1], [[1]]), "2 sequences but 1 token lists"),
    (lambda s: s.forward([0], [[1], [2]]), "1 sequences but 2 token lists"),
    (lambda s: s.forward([], []), "no sequences"),
    (lambda s: s.forward([-1], [[1]]), "sequence -1 is outside"),
    (lambda s: s.forward([0.0], [[1]]), "sequence 0.0 is outside"),
    (lambda s: s.forward_tree(-2, [1], [-1]), "sequence -2 is outside"),
    (lambda s: s.forward_tree(0, [1, 2], [-1, 0.5]), "parents must be a 1-D list of integer"),
    (lambda s: s.forward_tree(0, [], []), "no nodes"),
    (lambda s: (s.forward_tree(0, [1, 2], [-1, 0]), s.commit_tree([0.0, 1.0])), "path must be a list of integer"),
])
def test_session_misuse_is_an_input_error(call, match, engines):
    """Negative or float slots, float token ids, mismatched lists: InputError, never a silent
    reinterpretation (truncate(-1, ...) must not mean the last sequence; 1.9 is not token 1)."""
    s = engines("moe_a", "numpy").session(2, 16, rollback=4)
    s.prefill([[1, 2, 3], [4, 5]])
    before = s.lengths.copy()
    with pytest.raises(InputError, match=match):
        call(s)
    assert np.array_equal(s.lengths, before), "a refused call changed the session"


@pytest.mark.parametrize("args,match", [((0, 4), "batch_size >= 1"), ((1, 0), "capacity >= 1"),
                                        ((1, 4, -1), "rollback >= 0"), ((1.5, 4), "batch_size"),
                                        ((1, 4, True), "rollback")])
def test_session_sizes_are_checked(args, match, engines):
    with pytest.raises(InputError, match=match):
        engines("moe_a", "numpy").session(*args)
