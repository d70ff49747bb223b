"""The cuda backend's Python side (uploads, downloads, device caches, CUDA Graph capture and
replay, greedy argmax on the device, trees, rollback) on a host emulation of `_core.cuda`
(tests/fake_cuda.py) whose ops are the CPU ops: the shared engine code must then give the CPU
engine's results bit for bit. Runs everywhere; the real kernels are tested in test_ops_cuda.py
where a GPU exists."""

import numpy as np
import pytest

import fake_cuda
from lfm2engine import Engine
from lfm2engine.backends.cuda import CudaBackend


@pytest.fixture(scope="module")
def pair(hf_ckpt):
    cache = {}

    def get(name, dtype="float32"):
        if (name, dtype) not in cache:
            path = hf_ckpt(name)
            cache[(name, dtype)] = (Engine.from_pretrained(path, dtype=dtype, device=CudaBackend(fake_cuda)),
                                    Engine.from_pretrained(path, dtype=dtype))
        return cache[(name, dtype)]

    return get


def prompts_for(cfg, rng, lengths=(1, 7, 12, 2)):
    return [rng.integers(0, cfg.vocab_size, n).tolist() for n in lengths]


@pytest.mark.parametrize("name", ["moe_a", "dense"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_and_tokens_equal_the_cpu_engine(name, dtype, pair, rng):
    gpu, cpu = pair(name, dtype)
    assert isinstance(gpu.w.embed, fake_cuda.Tensor) and gpu.w.embed.dtype == ("float32" if dtype == "float32"
                                                                                 else "bfloat16")
    prompts = prompts_for(cpu.config, rng)
    assert np.array_equal(gpu.logits(prompts), cpu.logits(prompts))
    assert gpu.generate(prompts, max_new_tokens=6) == cpu.generate(prompts, max_new_tokens=6)
    kw = {"max_new_tokens": 5, "temperature": 0.8, "top_k": 20, "seed": 3}
    assert gpu.generate(prompts, **kw) == cpu.generate(prompts, **kw)


def test_decode_steps_are_captured_once_and_replayed(pair, rng):
    gpu, cpu = pair("moe_b")
    prompts = prompts_for(cpu.config, rng, (4, 9, 2))
    sg, sc = gpu.session(3, 32), cpu.session(3, 32)
    sg.prefill(prompts)
    sc.prefill(prompts)
    for step in range(4):  # step 0 eager, step 1 captures, then replays
        toks = [[step + 1], [step + 2], [step + 3]]
        assert np.array_equal(sg.forward([0, 1, 2], toks), sc.forward([0, 1, 2], toks)), f"step {step}"
    graphs = sg.backend_cache["graphs"]
    assert 3 in graphs and graphs[3][0].ready
    assert len([k for k in graphs if isinstance(k, int)]) == 1


def test_tree_verification_and_rollback_equal_the_cpu_engine(pair, rng):
    gpu, cpu = pair("moe_c")
    ids = rng.integers(0, cpu.config.vocab_size, 8).tolist()
    outs = []
    for eng in (gpu, cpu):
        s = eng.session(1, 32, rollback=4)
        s.prefill([ids])
        tree = s.forward_tree(0, [4, 5, 6, 7], [-1, 0, -1, 2])
        s.commit_tree([2, 3])
        a = s.forward([0], [[9, 10]], all_logits=True)
        s.truncate(0, 11)
        outs.append(np.concatenate([tree, a, s.forward([0], [[12]])]))
    assert np.array_equal(outs[0], outs[1])


def test_graphs_off_gives_the_same_bits(pair, rng):
    gpu, _ = pair("moe_a")
    prompts = prompts_for(gpu.config, rng, (3, 5))
    runs = []
    for graphs in (True, False):
        gpu.backend.use_graphs = graphs
        s = gpu.session(2, 16)
        s.prefill(prompts)
        runs.append(np.stack([s.forward([0, 1], [[1], [2]]) for _ in range(4)]))
    gpu.backend.use_graphs = True
    assert np.array_equal(runs[0], runs[1])


# ----------------------------------------------------------------------------- block-quantized weights


@pytest.fixture(scope="module")
def tiny_f32():
    return Engine.from_pretrained("tiny")  # widths 128 / 384: whole q8_0 / q4_0 blocks


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_quantized_weights_equal_the_cpu_engine_on_their_values(qtype, tiny_f32, rng):
    """Block arrays travel as device tensors of their block dtype (upload, views, graph capture):
    the emulated GPU engine on q weights gives the CPU engine's bits on the dequantized weights
    (the CPU exact mode is the fp32 product with those values)."""
    from quant_engine import engine_pair

    gpu, cpu = engine_pair(tiny_f32, qtype, CudaBackend(fake_cuda))
    assert gpu.w.embed.dtype == qtype and gpu.w.layers[0].in_proj.dtype == qtype
    assert gpu.w.embed.shape == (tiny_f32.config.vocab_size, tiny_f32.config.hidden_size // 32)
    assert cpu.w.embed.dtype == np.float32
    prompts = prompts_for(cpu.config, rng)
    assert np.array_equal(gpu.logits(prompts), cpu.logits(prompts))
    assert gpu.generate(prompts, max_new_tokens=5) == cpu.generate(prompts, max_new_tokens=5)
    sg, sc = gpu.session(2, 32), cpu.session(2, 32)
    sg.prefill(prompts[:2])
    sc.prefill(prompts[:2])
    for step in range(3):  # eager, capture, replay
        toks = [[step + 4], [step + 9]]
        assert np.array_equal(sg.forward([0, 1], toks), sc.forward([0, 1], toks)), f"step {step}"
    assert sg.backend_cache["graphs"][2][0].ready


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_k", "q6_k"])
def test_fake_tensor_keeps_block_arrays(qtype, rng):
    """fake_cuda.Tensor holds block arrays as the real Tensor does: NumPy's block shape and dtype,
    named by the type; views in blocks; empty/zeros by name."""
    from lfm2engine import quant

    q = quant.quantize(rng.standard_normal((3, 2048), dtype=np.float32), qtype)
    t = fake_cuda.Tensor.from_numpy(q)
    assert t.dtype == qtype and t.shape == q.shape and t[1].shape == q.shape[1:]
    assert t.to_numpy().tobytes() == q.tobytes()
    z = fake_cuda.Tensor.zeros((2, 4), qtype)
    assert z.dtype == qtype and z.shape == (2, 4) and not z.to_numpy().tobytes().strip(b"\0")
    z.copy_(q[:2, :4].copy())
    assert z.to_numpy().tobytes() == q[:2, :4].tobytes()
