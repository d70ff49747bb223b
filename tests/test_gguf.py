"""GGUF files (issue 14, items 2, 3, 6): our writer in every dtype -> GGUFCheckpoint gives the
source's tensors under our names (quantized ones bit-identical to lfm2engine.quant.quantize of the
source), the config round trip, files written by gguf.GGUFWriter directly with llama.cpp's names
(an independent path from our writer), open_checkpoint, the tokenizer from GGUF metadata, and
all_finite_blocks. Bad files: tests/test_gguf_bad.py."""

import os
import shutil

import gguf
import numpy as np
import pytest
from gguf_util import DENSE, MOE, SMALL, expected_config, write_checkpoint

from lfm2engine import quant
from lfm2engine.checkpoint import (Checkpoint, GGUFCheckpoint, all_finite_blocks, bf16_to_f32, f32_to_bf16,
                                   open_checkpoint, write_gguf)
from lfm2engine.checkpoint.gguf import DTYPES, gguf_name, load_gguf_tokenizer, tensor_types
from lfm2engine.errors import CheckpointError, ConfigError, InputError
from lfm2engine.models import held_out_text, shipped_dir


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf-src")
    return {k: Checkpoint(write_checkpoint(cfg, d / k)) for k, cfg in (("moe", MOE), ("dense", DENSE))}


def _expected(src_arr: np.ndarray, t: str) -> np.ndarray:
    if t == "F32":
        return src_arr
    if t == "F16":
        return src_arr.astype(np.float16)
    if t == "BF16":
        return f32_to_bf16(src_arr)
    return quant.quantize(src_arr, quant.BY_GGML[t].name)


@pytest.mark.parametrize("kind", ["moe", "dense"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(sources, tmp_path, kind, dtype):
    src = sources[kind]
    out = str(tmp_path / f"m-{dtype}.gguf")
    counts = write_gguf(src, out, dtype, progress=False)
    types = tensor_types(src.config, dtype)
    assert sum(counts.values()) == len(types)
    g = GGUFCheckpoint(out)
    assert g.config == expected_config(src.config)
    assert list(g.names()) == list(src.names())
    for n in src.names():
        t = types[gguf_name(n)[0]]
        assert g.dtype_of(n) == t, n
        a, want = g.raw(n), _expected(src.f32(n), t)
        assert a.dtype == want.dtype and a.shape == want.shape and a.flags.owndata, n
        assert a.tobytes() == want.tobytes(), n  # bit-identical, block arrays included
        as_f32 = quant.dequantize(a) if t in quant.BY_GGML else bf16_to_f32(want) if t == "BF16" else want
        np.testing.assert_array_equal(g.f32(n), as_f32.astype(np.float32), err_msg=n)
    # what stays F32 whatever the dtype: norms, conv taps, router, expert bias
    for n in g.names():
        if n.endswith(("norm.weight", "layernorm.weight", "conv.conv.weight", "gate.weight", "expert_bias")):
            assert g.dtype_of(n) == "F32", n
    sd = g.state_dict_f32()
    assert set(sd) == set(src.names()) and all(v.dtype == np.float32 for v in sd.values())
    assert g.bf16("model.embed_tokens.weight").dtype == np.uint16
    fp = g.fingerprint()
    assert fp == GGUFCheckpoint(out).fingerprint()
    g.close()
    with pytest.raises(CheckpointError, match="closed"):
        g.raw("model.embed_tokens.weight")


def test_q4_k_m_mix_follows_llama_cpp_rule():
    cfg = MOE.replace(num_hidden_layers=8, layer_types=("conv",) * 2 + ("full_attention", "conv") * 3,
                      num_dense_layers=2)
    t = tensor_types(cfg, "q4_k_m")
    assert t["token_embd.weight"] == "Q6_K"                       # tied: the embedding is the output head
    # use_more_bits(i, 8): i < 1, i >= 7, (i - 1) % 3 == 2 -> layers 0, 3, 6, 7
    down = [t.get(f"blk.{i}.ffn_down.weight", t.get(f"blk.{i}.ffn_down_exps.weight")) for i in range(8)]
    assert [i for i in range(8) if down[i] == "Q6_K"] == [0, 3, 6, 7]
    # attn_v counted over the 3 attention layers (2, 4, 6): use_more_bits(j, 3) only for j = 2 (7 * 3 // 8 = 2)
    assert [t[f"blk.{i}.attn_v.weight"] for i in (2, 4, 6)] == ["Q4_K", "Q4_K", "Q6_K"]
    rest = ("attn_q.weight", "ffn_gate_exps.weight", "shortconv.in_proj.weight")
    assert {t[g] for g in t if g.endswith(rest)} == {"Q4_K"}
    u = tensor_types(cfg.replace(tie_word_embeddings=False), "q4_k_m")
    assert (u["token_embd.weight"], u["output.weight"]) == ("Q4_K", "Q6_K")


def test_width_not_whole_blocks_is_refused_before_writing(tmp_path):
    src = Checkpoint(write_checkpoint(SMALL, tmp_path / "s"))
    out = tmp_path / "x.gguf"
    with pytest.raises(InputError, match=r"not whole blocks of 256 weights: token_embd.weight \(Q4_K, rows of 32\)"):
        write_gguf(src, str(out), "q4_k")
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    with pytest.raises(InputError, match="choose one of"):
        write_gguf(src, str(out), "q5_k")


def _write_by_hand(path, cfg, src, qtype=gguf.GGMLQuantizationType.Q8_0):
    """An LFM2-MoE GGUF written with gguf.GGUFWriter and gguf's own quantizer and names, not our writer."""
    T = gguf.MODEL_TENSOR
    names = gguf.TENSOR_NAMES
    w = gguf.GGUFWriter(str(path), "lfm2moe")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv([cfg.num_key_value_heads if t == "full_attention" else 0 for t in cfg.layer_types])
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_shortconv_l_cache(cfg.conv_L_cache)
    w.add_expert_count(cfg.num_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_leading_dense_block_count(cfg.num_dense_layers)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_tokenizer_model("none")

    def q(name, a):
        w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)

    q(names[T.TOKEN_EMBD] + ".weight", src.f32("model.embed_tokens.weight"))
    w.add_tensor(names[T.TOKEN_EMBD_NORM] + ".weight", src.f32("model.embedding_norm.weight"))
    for i in range(cfg.num_hidden_layers):
        p, f = f"model.layers.{i}.", lambda t, s=".weight": names[t].format(bid=i) + s  # noqa: E731
        w.add_tensor(f(T.ATTN_NORM), src.f32(p + "operator_norm.weight"))
        w.add_tensor(f(T.FFN_NORM), src.f32(p + "ffn_norm.weight"))
        if cfg.is_attention_layer(i):
            for t, h in ((T.ATTN_Q, "q_proj"), (T.ATTN_K, "k_proj"), (T.ATTN_V, "v_proj"), (T.ATTN_OUT, "out_proj")):
                q(f(t), src.f32(p + f"self_attn.{h}.weight"))
            w.add_tensor(f(T.ATTN_Q_NORM), src.f32(p + "self_attn.q_layernorm.weight"))
            w.add_tensor(f(T.ATTN_K_NORM), src.f32(p + "self_attn.k_layernorm.weight"))
        else:
            q(f(T.SHORTCONV_INPROJ), src.f32(p + "conv.in_proj.weight"))
            w.add_tensor(f(T.SHORTCONV_CONV), src.f32(p + "conv.conv.weight")[:, 0, :].copy())
            q(f(T.SHORTCONV_OUTPROJ), src.f32(p + "conv.out_proj.weight"))
        if cfg.is_moe_layer(i):
            w.add_tensor(f(T.FFN_GATE_INP), src.f32(p + "feed_forward.gate.weight"))
            w.add_tensor(f(T.FFN_EXP_PROBS_B, ".bias"), src.f32(p + "feed_forward.expert_bias"))
            for t, h in ((T.FFN_GATE_EXP, "w1"), (T.FFN_UP_EXP, "w3"), (T.FFN_DOWN_EXP, "w2")):
                q(f(t), np.stack([src.f32(p + f"feed_forward.experts.{e}.{h}.weight") for e in range(cfg.num_experts)]))
        else:
            for t, h in ((T.FFN_GATE, "w1"), (T.FFN_UP, "w3"), (T.FFN_DOWN, "w2")):
                q(f(t), src.f32(p + f"feed_forward.{h}.weight"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0])
def test_file_written_by_gguf_writer_directly(sources, tmp_path, qtype):
    src = sources["moe"]
    path = tmp_path / "hand.gguf"
    _write_by_hand(path, MOE, src, qtype)
    g = GGUFCheckpoint(path)
    assert g.config == MOE.replace(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    for n in src.names():
        a = g.raw(n)
        if quant.is_quantized(a):
            assert g.dtype_of(n) == qtype.name
            want = gguf.quants.quantize(src.f32(n), qtype)   # gguf's own quantizer and dequantizer: the oracle
            assert a.view(np.uint8).tobytes() == want.tobytes(), n
            np.testing.assert_array_equal(g.f32(n), gguf.quants.dequantize(want, qtype), err_msg=n)
        else:
            np.testing.assert_array_equal(a, src.f32(n), err_msg=n)


def test_open_checkpoint_by_magic_not_suffix(sources, tmp_path):
    out = tmp_path / "weights.bin"
    write_gguf(sources["dense"], str(out), "q8_0", progress=False)
    assert isinstance(open_checkpoint(out), GGUFCheckpoint)
    assert isinstance(open_checkpoint(sources["dense"].path), Checkpoint)
    fake = tmp_path / "not.gguf"
    fake.write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        open_checkpoint(fake)


def test_tokenizer_from_gguf_metadata_matches_tokenizer_json(tmp_path):
    from lfm2engine.tokenizer import Tokenizer

    tiny = shipped_dir("tiny")
    out = tmp_path / "tiny.gguf"
    write_gguf(Checkpoint(tiny), str(out), "f32", tokenizer_json=os.path.join(tiny, "tokenizer.json"), progress=False)
    meta_tok = load_gguf_tokenizer(out)                 # no tokenizer.json beside the file: from the metadata
    ref = Tokenizer(os.path.join(tiny, "tokenizer.json"))
    with open(held_out_text(), encoding="utf-8") as f:
        text = f.read(4000)
    samples = [text, "In the beginning God created the heaven and the earth.\n\n  Amen!",
               "<|im_start|>user\nhi<|im_end|>",
               "naïve café — 1234567 tokens’ “quotes” \t\r\n", ""]
    for s in samples:
        ids = ref.encode(s)
        assert meta_tok.encode(s) == ids, s[:40]
        assert meta_tok.decode(ids) == ref.decode(ids)
    shutil.copy(os.path.join(tiny, "tokenizer.json"), tmp_path / "tokenizer.json")
    beside = load_gguf_tokenizer(out)                   # a tokenizer.json beside the file wins
    assert beside.encode(text) == ref.encode(text)


def test_no_text_tokenizer_for_none_vocab(sources, tmp_path):
    out = tmp_path / "m.gguf"
    write_gguf(sources["dense"], str(out), "q8_0", progress=False)
    with pytest.raises(InputError, match="tokenizer.ggml.model is 'none'"):
        load_gguf_tokenizer(out)


def test_all_finite_blocks():
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    for name in quant.QTYPES:
        a = quant.quantize(x, name)
        assert all_finite_blocks(a)
        for field in ("d", "dmin"):
            if field in a.dtype.names:
                b = a.copy()
                b[2, 0][field] = np.float16(np.nan if field == "d" else np.inf)
                assert not all_finite_blocks(b), (name, field)
    assert all_finite_blocks(x) and not all_finite_blocks(np.array([1.0, np.inf], np.float32))


def test_truncated_while_loading_is_a_checkpoint_error(sources, tmp_path):
    out = tmp_path / "m.gguf"
    write_gguf(sources["moe"], str(out), "q8_0", progress=False)
    g = GGUFCheckpoint(out)
    os.truncate(out, os.path.getsize(out) - 100)
    with pytest.raises(CheckpointError, match="the file ends inside tensor"):
        for n in g.names():
            g.raw(n)


@pytest.mark.parametrize("change, match", [
    ({"lfm2moe.expert_gating_func": 1}, "expert_gating_func is softmax"),
    ({"general.architecture": "llama"}, "general.architecture is 'llama'"),
    ({"lfm2moe.attention.head_count_kv": [0, 2, 4]}, "different KV head counts"),
    ({"lfm2moe.rope.scaling.type": "yarn"}, "rope.scaling.type"),
])
def test_metadata_the_engine_cannot_represent(change, match):
    from lfm2engine.checkpoint.gguf import config_from_meta, meta_from_config

    meta = {k: v for k, (_, v) in meta_from_config(MOE).items()}
    meta.update(change)
    with pytest.raises(ConfigError, match=match):
        config_from_meta(meta, {"blk.2.exp_probs_b.bias": (2,)}, "f.gguf")


@pytest.mark.parametrize("change", [
    dict(routed_scaling_factor=2.5, norm_topk_prob=False),
    dict(use_expert_bias=False, tie_word_embeddings=False),
    dict(bos_token_id=None, pad_token_id=None, eos_token_id=None, norm_eps=1e-6, rope_theta=1e6),
    dict(num_dense_layers=0),
])
def test_config_round_trip_variants(tmp_path, change):
    cfg = SMALL.replace(**change)
    src = Checkpoint(write_checkpoint(cfg, tmp_path / "s"))
    out = tmp_path / "m.gguf"
    write_gguf(src, str(out), "q8_0", progress=False)
    assert GGUFCheckpoint(out).config == cfg


def test_overflowing_f16_is_refused_and_nothing_written(tmp_path):
    from lfm2engine.checkpoint import expected_tensors, save_pretrained
    from lfm2engine.synthetic import make_tensor

    t = {n: make_tensor(SMALL, n, s) for n, s in expected_tensors(SMALL).items()}
    t["model.layers.0.conv.out_proj.weight"][3, 5] = 1e6
    save_pretrained(SMALL, t, str(tmp_path / "s"))
    out = tmp_path / "m.gguf"
    msg = r"blk.0.shortconv.out_proj.weight .* overflows F16 \(largest \|weight\| 1e\+06\)"
    with pytest.raises(InputError, match=msg):
        write_gguf(Checkpoint(str(tmp_path / "s")), str(out), "f16", progress=False)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
