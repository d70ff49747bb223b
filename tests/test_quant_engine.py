"""Block-quantized weights through the engine (issue 14): quantize on load, "auto" for files that
store their own types (GGUF; here a stand-in reader with the same interface), mixed types (v
apart from q | k), the checks at load, and the numpy backend.

The CPU exact mode is defined to be bit-identical to the float32 GEMM on the dequantized weights,
and the router, norms and conv taps are untouched by the dtype: so an engine at q8_0 / q4_0 / q4_k
must give, BIT FOR BIT, the float32 engine's results on the checkpoint whose weights are the
dequantized quantized weights (its "twin"), on the fused C++ loop and on the Python layer loop,
for a prefill and decode steps.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import assert_close, import_core
from lfm2engine import Engine, quant
from lfm2engine.checkpoint import Checkpoint, expected_tensors, save_pretrained
from lfm2engine.config import LFM2Config
from lfm2engine.errors import CheckpointError, InputError
from lfm2engine.synthetic import make_tensor
from lfm2engine.weights import is_projection

_core = import_core()

# Widths that split into q4_k's 256-weight blocks: D = H Dh = F = Fe = 256; untied head.
QCFG = dict(model_type="lfm2_moe", vocab_size=96, hidden_size=256, num_hidden_layers=4, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=256, moe_intermediate_size=256, num_experts=4,
            num_experts_per_tok=2, num_dense_layers=1, layer_types=["conv", "full_attention", "conv", "full_attention"],
            max_position_embeddings=128, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            use_expert_bias=True, tie_word_embeddings=False)


def write_ckpt(out_dir: str, cfg_dict=QCFG, seed: int = 5, make=None) -> str:
    cfg = LFM2Config.from_dict(cfg_dict, source="quant-test")
    specs = expected_tensors(cfg)
    save_pretrained(cfg, make or (lambda n: make_tensor(cfg, n, specs[n], seed)), out_dir)
    return out_dir


def write_twin(src: str, out_dir: str, type_of) -> str:
    """The float32 checkpoint whose projections are the dequantized `type_of(name)` blocks of src's."""
    ck = Checkpoint(src)

    def make(n):
        t = type_of(n)
        return quant.dequantize(quant.quantize(ck.f32(n), t)) if t else ck.f32(n)

    save_pretrained(ck.config, make, out_dir)
    return out_dir


class TypedCheckpoint:
    """A stand-in for the GGUF reader (same interface as checkpoint.Checkpoint): src's tensors stored
    in the block types type_of(name) gives (None: float32), as a GGUF file would hold them."""

    def __init__(self, src: str, type_of, tamper=None):
        self.ck = Checkpoint(src)
        self.config, self.path, self.type_of, self.tamper = self.ck.config, src, type_of, tamper

    def dtype_of(self, name):
        t = self.type_of(name)
        return quant.QTYPES[t].ggml if t else "F32"

    def raw(self, name):
        t = self.type_of(name)
        a = quant.quantize(self.ck.f32(name), t) if t else self.ck.f32(name)
        return self.tamper(name, a) if self.tamper else a

    def f32(self, name):
        return quant.dequantize(self.raw(name))

    def bf16(self, name):
        raise AssertionError("a file that stores its own types is never read as bf16")

    def names(self):
        return self.ck.names()

    def files(self):
        return self.ck.files()

    def fingerprint(self):
        return "typed-" + self.ck.fingerprint()

    def close(self):
        self.ck.close()


def uniform(t):
    return lambda n: t if is_projection(n) else None


def mixed(n):
    """Like llama.cpp's Q4_K_M: q4_k, with attn_v and the embedding in q6_k."""
    if not is_projection(n):
        return None
    return "q6_k" if n.endswith("v_proj.weight") or n == "model.embed_tokens.weight" else "q4_k"


@pytest.fixture(scope="module")
def qckpt(tmp_path_factory):
    return write_ckpt(str(tmp_path_factory.mktemp("quant-src")))


@pytest.fixture(scope="module")
def twin(qckpt, tmp_path_factory):
    made = {}

    def get(key, type_of):
        if key not in made:
            made[key] = write_twin(qckpt, str(tmp_path_factory.mktemp(f"twin-{key}")), type_of)
        return made[key]

    return get


def python_path(eng: Engine) -> Engine:
    """The same engine forced onto the Python layer loop (moe_impl no longer local_moe)."""
    e = copy.copy(eng)
    e.moe_impl = lambda i, h: Engine.local_moe(e, i, h)
    return e


def run(eng: Engine, steps: int = 3):
    """Prefill of a ragged batch, then decode steps: every logit array, and the session."""
    rng = np.random.default_rng(11)
    prompts = [rng.integers(0, eng.config.vocab_size, n).tolist() for n in (1, 9, 4)]
    s = eng.session(len(prompts), 16, rollback=2)
    outs = [s.prefill(prompts)]
    for _ in range(steps):
        outs.append(s.decode(list(rng.integers(0, eng.config.vocab_size, len(prompts)))))
    return outs, s


def assert_runs_equal(a, b):
    (la, sa), (lb, sb) = a, b
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)
    for i in sa.k:
        np.testing.assert_array_equal(sa.k[i], sb.k[i])
        np.testing.assert_array_equal(sa.v[i], sb.v[i])


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0", "q4_k"])
def test_quantized_engine_equals_its_dequantized_twin_bitwise(dtype, qckpt, twin):
    eng = Engine.from_pretrained(qckpt, dtype=dtype)
    ref = Engine.from_pretrained(twin(dtype, uniform(dtype)), dtype="float32")
    lw = eng.w.layers[1]
    assert quant.qtype_of(lw.wqkv).name == dtype and lw.wv is None  # one type: q | k | v fused
    assert quant.qtype_of(eng.w.layers[2].ew13).name == dtype and quant.qtype_of(eng.w.head).name == dtype
    assert eng.w.layers[2].gate.dtype == np.float32 and eng.w.layers[0].conv_w.dtype == np.float32
    assert eng.dtype == dtype and eng.w.types == (dtype,)
    fused = run(eng)
    assert eng.fused_model() is not None
    assert_runs_equal(fused, run(ref))
    assert_runs_equal(run(python_path(eng)), fused)
    assert_runs_equal(run(python_path(ref)), fused)


def test_mixed_types_keep_v_apart_and_equal_their_twin(qckpt, twin):
    eng = Engine.from_checkpoint(TypedCheckpoint(qckpt, mixed))  # the default for such a file: "auto"
    assert eng.dtype == "auto" and eng.w.types == ("q4_k", "q6_k")
    assert eng.dtype_description == "auto (q4_k, q6_k)"
    for i in (1, 3):
        lw = eng.w.layers[i]
        assert quant.qtype_of(lw.wqkv).name == "q4_k" and quant.qtype_of(lw.wv).name == "q6_k"
        assert quant.logical_shape(lw.wqkv) == (3 * 128, 256) and quant.logical_shape(lw.wv) == (128, 256)
    assert quant.qtype_of(eng.w.embed).name == "q6_k" and quant.qtype_of(eng.w.head).name == "q4_k"
    ref = Engine.from_pretrained(twin("mixed", mixed), dtype="float32")
    fused = run(eng)
    assert_runs_equal(fused, run(ref))
    assert_runs_equal(run(python_path(eng)), fused)
    # a token tree runs the Python loop: verify one against the twin's
    prompts = [[3, 4, 5]]
    outs = []
    for e in (eng, ref):
        s = e.session(1, 16)
        s.prefill(prompts)
        outs.append(s.forward_tree(0, [7, 8, 9], [-1, 0, 0]))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_numpy_backend_agrees_within_rounding(qckpt):
    for dtype, src in (("q4_0", None), ("auto", mixed)):
        if src is None:
            cpu, npy = (Engine.from_pretrained(qckpt, dtype=dtype, device=d) for d in ("cpu", "numpy"))
        else:
            cpu, npy = (Engine.from_checkpoint(TypedCheckpoint(qckpt, src), device=d) for d in ("cpu", "numpy"))
        a, _ = run(cpu, 1)
        b, _ = run(npy, 1)
        for x, y in zip(a, b):
            assert_close(x, y, k=4 * 256, name=f"{dtype} cpu vs numpy")


def test_gguf_like_file_loads_as_float32_dequantized(qckpt, twin):
    eng = Engine.from_checkpoint(TypedCheckpoint(qckpt, mixed), dtype="float32")
    assert eng.w.layers[1].wv is None and eng.w.embed.dtype == np.float32
    ref = Engine.from_pretrained(twin("mixed", mixed), dtype="float32")
    assert_runs_equal(run(eng, 1), run(ref, 1))


@pytest.mark.parametrize("dtype", ["q4_0", "bfloat16"])
def test_a_file_with_its_own_types_is_never_requantized(qckpt, dtype):
    with pytest.raises(InputError, match=rf"dtype '{dtype}' cannot be asked of .*never re-quantized: choose from auto, "
                                         "float32"):
        Engine.from_checkpoint(TypedCheckpoint(qckpt, mixed), dtype=dtype)


def test_unknown_dtype_names_the_choices(qckpt):
    with pytest.raises(InputError, match="dtype 'q5_k' is not supported; choose from float32, bfloat16, float16, "
                                         "q8_0, q4_0, q4_k, auto"):
        Engine.from_pretrained(qckpt, dtype="q5_k")


def test_widths_not_in_whole_blocks_are_refused_before_loading(hf_ckpt, monkeypatch):
    import lfm2engine.weights as weights

    monkeypatch.setattr(weights.Weights, "__init__", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(InputError, match=r"dtype q4_k: rows must split into whole blocks of 256 weights, but \d+ "
                                         r"weight tensor\(s\) do not: model.embed_tokens.weight \[97, 40\].*"
                                         r"\(q8_0 or q4_0: blocks of 32\)"):
        Engine.from_pretrained(hf_ckpt("moe_a"), dtype="q4_k")
    with pytest.raises(InputError, match=r"dtype q8_0: .*model.embed_tokens.weight \[97, 40\]"):
        Engine.from_pretrained(hf_ckpt("moe_a"), dtype="q8_0")


def test_default_model_refuses_q4_k_by_name(tmp_path):
    """The built-in model's experts (Fe = 128) do not split into q4_k's 256-weight blocks; q4_0 loads."""
    from lfm2engine.synthetic import PRESETS

    cfg = LFM2Config.from_dict(PRESETS["default"], source="default")
    from lfm2engine.weights import check_widths

    with pytest.raises(InputError, match=r"experts\.0\.w2\.weight \[256, 128\]"):
        check_widths(cfg, "q4_k")
    check_widths(cfg, "q4_0")


def test_gate_and_up_of_different_types_are_refused_naming_both(qckpt):
    def t(n):
        return "q8_0" if n.endswith("experts.1.w3.weight") else uniform("q4_0")(n)

    with pytest.raises(CheckpointError, match=r"layer 1 expert 1's gate \(w1\) and up \(w3\) projections are fused "
                                              r"into one matrix, which needs one storage type; "
                                              r"model.layers.1.feed_forward.experts.1.w1.weight is q4_0 but "
                                              r"model.layers.1.feed_forward.experts.1.w3.weight is q8_0"):
        Engine.from_checkpoint(TypedCheckpoint(qckpt, t))

    def d(n):
        return "q8_0" if n == "model.layers.0.feed_forward.w1.weight" else uniform("q4_0")(n)

    with pytest.raises(CheckpointError, match=r"layer 0's gate \(w1\) and up \(w3\) projections .* is q8_0 but "
                                              r"model.layers.0.feed_forward.w3.weight is q4_0"):
        Engine.from_checkpoint(TypedCheckpoint(qckpt, d))


def test_q_and_k_of_different_types_are_refused(qckpt):
    def t(n):
        return "q8_0" if n.endswith("k_proj.weight") else uniform("q4_0")(n)

    with pytest.raises(CheckpointError, match=r"layer 1's q and k projections .*q_proj.weight is q4_0 but "
                                              r".*k_proj.weight is q8_0"):
        Engine.from_checkpoint(TypedCheckpoint(qckpt, t))


def test_experts_of_different_types_are_refused(qckpt):
    def t(n):
        return "q8_0" if ".experts.3.w2" in n else uniform("q4_0")(n)

    with pytest.raises(CheckpointError, match=r"the experts of model.layers.1.feed_forward.experts.\*.w2.weight are "
                                              r"stacked .* expert 0 is q4_0 but expert 3 is q8_0"):
        Engine.from_checkpoint(TypedCheckpoint(qckpt, t))


def test_non_finite_block_scales_are_refused_naming_the_tensor(qckpt):
    name = "model.layers.1.self_attn.v_proj.weight"

    def tamper(n, a):
        if n == name:
            a = a.copy()
            a["d"][3, 0] = np.float16(np.nan)
        return a

    with pytest.raises(CheckpointError, match=rf"tensor '{name}' holds 256 non-finite value\(s\) \(NaN/Inf\), the "
                                              r"first at index \[3, 0\]"):
        Engine.from_checkpoint(TypedCheckpoint(qckpt, mixed, tamper))
    dmin = "model.layers.0.conv.in_proj.weight"

    def tamper_dmin(n, a):
        if n == dmin:
            a = a.copy()
            a["dmin"][0, 0] = np.float16(np.inf)
        return a

    with pytest.raises(CheckpointError, match=rf"tensor '{dmin}' holds"):
        Engine.from_checkpoint(TypedCheckpoint(qckpt, mixed, tamper_dmin))


def test_a_weight_whose_scale_overflows_f16_is_refused(tmp_path):
    cfg = LFM2Config.from_dict(QCFG, source="q")
    specs = expected_tensors(cfg)
    big = "model.layers.0.conv.out_proj.weight"

    def make(n):
        a = make_tensor(cfg, n, specs[n], 1)
        if n == big:
            a[5, 7] = 1e7  # d = 1e7 / 127 > 65504: the block's f16 scale is Inf
        return a

    src = write_ckpt(str(tmp_path / "big"), make=make)
    with pytest.raises(CheckpointError, match=rf"tensor '{big}' does not fit q8_0 \(its largest \|value\| 1e\+07"):
        Engine.from_pretrained(src, dtype="q8_0")
    with pytest.raises(CheckpointError, match=rf"tensor '{big}' holds 1 non-finite"):
        bad = write_ckpt(str(tmp_path / "nan"), make=lambda n: np.where(make(n) == 1e7, np.nan, make(n)))
        Engine.from_pretrained(bad, dtype="q4_0")


def test_digest_covers_block_bytes_and_types(qckpt):
    a, b = Engine.from_pretrained(qckpt, dtype="q4_0"), Engine.from_pretrained(qckpt, dtype="q4_0")
    assert a.fingerprint == b.fingerprint
    fps = {Engine.from_pretrained(qckpt, dtype=d).fingerprint for d in ("q4_0", "q8_0", "float32")}
    assert len(fps) == 3

    def flip(n, x):
        if n == "model.layers.3.feed_forward.experts.2.w2.weight":
            x = x.copy()
            x["qs"][0, 0, 0] ^= 1
        return x

    one = Engine.from_checkpoint(TypedCheckpoint(qckpt, uniform("q4_0")))
    other = Engine.from_checkpoint(TypedCheckpoint(qckpt, uniform("q4_0"), flip))
    assert one.w.digest != other.w.digest


def test_quantized_weights_are_frozen_with_the_fused_model(qckpt):
    eng = Engine.from_checkpoint(TypedCheckpoint(qckpt, mixed))
    eng.logits([[1, 2, 3]])
    lw = eng.w.layers[1]
    with pytest.raises(InputError, match="cannot replace layer weight 'wv'"):
        lw.wv = lw.wv.copy()
    assert not lw.wv.flags.writeable


def test_auto_on_a_safetensors_checkpoint_keeps_the_stored_dtype(hf_ckpt):
    path = hf_ckpt("moe_a", "bfloat16")
    auto, bf16 = Engine.from_pretrained(path, dtype="auto"), Engine.from_pretrained(path, dtype="bfloat16")
    assert auto.w.types == ("bfloat16",) and auto.w.digest == bf16.w.digest
    assert Engine.from_pretrained(path).dtype == "float32"  # the default for a checkpoint directory
    np.testing.assert_array_equal(auto.logits([[1, 2, 3]]), bf16.logits([[1, 2, 3]]))
