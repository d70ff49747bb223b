"""lfm2engine.costs: every figure against a hand derivation (MODEL.md §5-6 for LFM2-8B-A1B, the standard
Llama-7B count, DeepSeek-V3's 671B / 37B, the $5M plan, the ZeRO paper's example), parameter counts
against transformers' own models and the checkpoint manifest, and every bad-input path."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from lfm2engine import costs
from lfm2engine.errors import ConfigError, InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LFM2 = "lfm2-8b-a1b"


def shipped(name: str) -> dict:
    with open(costs.shipped_config_path(name), encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------- LFM2-8B-A1B: MODEL.md §5-6, exactly


def test_lfm2_parameter_tree_matches_model_md():
    pb = costs.param_breakdown(costs.parse_config(LFM2))
    attention_layer = 2 * 2048**2 + 2 * 512 * 2048 + 2 * 64
    conv_layer = 6144 * 2048 + 2048**2 + 3 * 2048
    expert = 3 * 2048 * 1792
    moe_layer = 32 * expert + 32 * 2048
    assert (attention_layer, conv_layer, expert, moe_layer) == (10_485_888, 16_783_360, 11_010_048, 352_387_072)
    assert pb["embedding"] == 65536 * 2048 == 134_217_728
    assert pb["head"] == 0  # tied
    assert pb["attention"] == 6 * attention_layer == 62_915_328
    assert pb["conv"] == 18 * conv_layer == 302_100_480
    assert pb["norms"] == 24 * 2 * 2048 + 2048 == 100_352
    assert pb["mlp"] == 2 * 3 * 2048 * 7168 == 88_080_384
    assert pb["experts_routed"] + pb["router"] == 22 * moe_layer == 7_752_515_584
    assert pb["experts_shared"] == pb["positional_embedding"] == 0
    assert pb["buffers_not_counted"] == 22 * 32 == 704
    assert pb["total"] == 8_339_929_856
    assert pb["active"] == pb["active_with_embedding"] == 1_557_740_288
    act = pb["active_by_part"]
    assert act["experts_routed"] + act["router"] == 22 * (4 * expert + 65536) == 970_326_016
    assert act["embedding"] == 134_217_728  # the tied table is the head


def test_lfm2_layer_kinds():
    r = costs.model_cost(LFM2, seq=16)
    kinds = {k["kind"]: k for k in r["layers"]}
    assert kinds["conv+dense"]["indices"] == [0, 1]
    assert kinds["attention+moe"]["indices"] == [2, 6, 10, 14, 18, 21]
    assert kinds["conv+moe"]["count"] == 16
    assert kinds["conv+dense"]["params"] == 16_783_360 + 44_040_192 + 2 * 2048
    assert kinds["attention+moe"]["params"] == 10_485_888 + 352_387_072 + 2 * 2048
    assert kinds["conv+moe"]["params"] == 16_783_360 + 352_387_072 + 2 * 2048
    assert r["seq"] == 16 and costs.model_cost(LFM2)["seq"] == 128000  # default: max_position_embeddings


def test_lfm2_decode_figures_match_model_md():
    r = costs.inference_cost(LFM2, context=4095, batch=1, batches=[1])
    # Matmuls: 2 x (active params - RMSNorm weights - q/k-norm weights) = "3.115 GFLOP"; attention 49,152 S.
    matmul = 2 * (1_557_740_288 - 100_352 - 6 * 2 * 64)
    assert matmul == 3_115_278_336
    assert r["decode_flops_per_token"] == matmul + 49_152 * 4096
    assert r["kv_cache_bytes_per_token"] == 6 * 2 * 8 * 64 * 2 == 12_288
    assert r["conv_state_bytes_per_sequence"] == 18 * 2048 * 2 * 2 == 147_456
    assert costs.inference_cost(LFM2, kv_bytes=4)["kv_cache_bytes_per_token"] == 24_576
    assert costs.kv_state(costs.parse_config(LFM2))["kv_bytes_per_token"] * 32768 == 384 * 2**20
    assert r["weights_active_bytes"] == 2 * 1_557_740_288  # "3.115 GB in bf16"
    # Batch 1, empty cache on an H100: weights + one KV entry + conv state read and written ~ 0.93 ms.
    d = costs.decode_step(costs.parse_config(LFM2), 1, 0, 3.35e12, 989.4e12)
    assert d["bytes"] == 2 * 1_557_740_288 + 12_288 + 2 * 147_456
    assert d["seconds"] * 1e3 == pytest.approx(0.930, abs=0.001)
    assert d["limited_by"] == "memory"
    # Distinct experts per layer at batch B (uniform routing): ~21 at B = 8, nearly all 32 at B >= 32.
    assert costs._expected_distinct(32, 4, 8) == pytest.approx(32 * (1 - (28 / 32) ** 8))
    assert costs._expected_distinct(32, 4, 8) == pytest.approx(21.0, abs=0.05)
    assert costs._expected_distinct(32, 4, 32) > 31


# ---------------------------------------------------------------- Llama-7B by hand

LLAMA_LAYER = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
LLAMA_TOTAL = 2 * 32000 * 4096 + 32 * LLAMA_LAYER + 4096


def test_llama_7b_standard_count():
    pb = costs.param_breakdown(costs.parse_config("llama-7b"))
    assert LLAMA_TOTAL == 6_738_415_616
    assert pb["total"] == LLAMA_TOTAL
    assert pb["attention"] == 32 * 4 * 4096**2
    assert pb["mlp"] == 32 * 3 * 4096 * 11008
    assert pb["embedding"] == pb["head"] == 131_072_000
    assert pb["active"] == LLAMA_TOTAL - 131_072_000  # the input-table lookup is not compute
    assert pb["active_with_embedding"] == LLAMA_TOTAL


def test_llama_7b_flops_and_memory_course_defaults():
    r = costs.model_cost("llama-7b")  # batch 1, seq 2048, fp16
    S, D, F, H, Dh, V = 2048, 4096, 11008, 32, 128, 32000
    layer = 2 * S * (4 * D * D + 3 * D * F) + 2 * (2 * H * S * S * Dh)
    assert r["layer_forward_flops"] == layer == 897_648_164_864
    assert r["forward_flops"] == 32 * layer + 2 * S * D * V
    # Peak: weights + input + [norm, q, k, v, attn, o, residual, ffn_norm, down, out] (10 D) + 4 F + scores, probs.
    acts = S * (10 * D + 4 * F + 2 * H * S)
    assert r["layer_peak_memory_breakdown"] == {
        "weights": 2 * LLAMA_LAYER, "input": 2 * S * D, "activations": 2 * acts,
        "total": 2 * (LLAMA_LAYER + S * D + acts)}
    assert r["layer_peak_memory_bytes"] == 1_306_542_080
    tm = r["training_memory_bytes"]
    assert tm["weights"] == tm["gradients"] == 2 * LLAMA_TOTAL
    assert tm["optimizer_states"] == 12 * LLAMA_TOTAL
    assert tm["checkpoints"] == 32 * S * D * 2
    assert tm["total"] == 16 * LLAMA_TOTAL + 32 * S * D * 2 + 2 * acts + 2 * S * (D + V)
    assert costs.model_cost("llama-7b", optimizer="sgd")["training_memory_bytes"]["optimizer_states"] == 0
    causal = costs.model_cost("llama-7b", causal=True)
    assert causal["layer_forward_flops"] == 2 * S * (4 * D * D + 3 * D * F) + 4 * H * Dh * (S * (S + 1) // 2)


# ---------------------------------------------------------------- DeepSeek-V3: 671B total, 37B active


def test_deepseek_v3_counts():
    pb = costs.param_breakdown(costs.parse_config("deepseek-v3"))
    mla = (7168 * 1536 + 1536 + 1536 * 128 * 192  # q_a_proj, q_a_layernorm, q_b_proj
           + 7168 * (512 + 64) + 512 + 512 * 128 * (128 + 128)  # kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj
           + 128 * 128 * 7168)  # o_proj
    expert = 3 * 7168 * 2048
    dense = mla + 3 * 7168 * 18432 + 2 * 7168
    moe = mla + (256 + 1) * expert + 256 * 7168 + 2 * 7168
    total = 2 * 129280 * 7168 + 7168 + 3 * dense + 58 * moe
    assert pb["total"] == total == 671_026_404_352
    assert pb["total"] == pytest.approx(671e9, rel=1e-3)
    active = total - 129280 * 7168 - 58 * (256 - 8) * expert
    assert pb["active"] == active == 36_625_603_584
    assert pb["active"] == pytest.approx(37e9, rel=0.011)  # the paper's "37B"
    assert pb["active"] == pytest.approx(36.6e9, rel=1e-3)  # README_WEIGHTS' first "36.6B (incl. the head)"
    assert pb["active_with_embedding"] == active + 129280 * 7168
    assert pb["attention"] == 61 * mla
    assert pb["experts_shared"] == 58 * expert
    assert pb["buffers_not_counted"] == 58 * 256
    assert pb["mtp_excluded"] == moe + 3 * 7168 + 2 * 7168 * 7168  # reported, not in the total
    assert costs.kv_state(costs.parse_config("deepseek-v3"))["kv_bytes_per_token"] == 61 * (512 + 64) * 2


# ---------------------------------------------------------------- independent oracles


TINY_HF = {
    "llama_gqa_bias": dict(model_type="llama", vocab_size=101, hidden_size=48, intermediate_size=72,
                           num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=12,
                           attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "deepseek_no_qlora": dict(model_type="deepseek_v3", vocab_size=97, hidden_size=64, intermediate_size=96,
                              moe_intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=4, n_shared_experts=2, n_routed_experts=6, num_experts_per_tok=2,
                              n_group=1, topk_group=1, q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8,
                              qk_rope_head_dim=4, v_head_dim=12, first_k_dense_replace=1, attention_bias=True),
    "deepseek_qlora": dict(model_type="deepseek_v3", vocab_size=97, hidden_size=64, intermediate_size=96,
                           moe_intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=4, n_shared_experts=1, n_routed_experts=5, num_experts_per_tok=3,
                           n_group=1, topk_group=1, q_lora_rank=20, kv_lora_rank=16, qk_nope_head_dim=8,
                           qk_rope_head_dim=4, v_head_dim=8, first_k_dense_replace=0, tie_word_embeddings=True),
    "lfm2_dense_adjust": dict(model_type="lfm2", vocab_size=89, hidden_size=44, intermediate_size=200,
                              num_hidden_layers=4, num_attention_heads=11, num_key_value_heads=1,
                              block_auto_adjust_ff_dim=True, block_ffn_dim_multiplier=1.5, block_multiple_of=32,
                              full_attn_idxs=[1, 3], conv_bias=True, tie_embedding=False),
    "lfm2_moe": dict(model_type="lfm2_moe", vocab_size=97, hidden_size=40, num_hidden_layers=5,
                     num_attention_heads=5, num_key_value_heads=1, intermediate_size=56, moe_intermediate_size=24,
                     num_experts=6, num_experts_per_tok=3, num_dense_layers=1,
                     layer_types=["conv", "full_attention", "conv", "full_attention", "conv"]),
}


def _hf_count(d: dict) -> int:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "lfm2": ("Lfm2Config", "Lfm2ForCausalLM"),
               "lfm2_moe": ("Lfm2MoeConfig", "Lfm2MoeForCausalLM"),
               "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM")}
    cfg_cls, model_cls = (getattr(transformers, n) for n in classes[d["model_type"]])
    kw = {k: v for k, v in d.items() if k not in ("model_type", "architectures", "quantization_config")}
    with torch.device("meta"):  # shapes only: the full-size models build in milliseconds
        model = model_cls(cfg_cls(**kw))
    return sum(p.numel() for p in model.parameters())  # tied weights appear once


@pytest.mark.parametrize("name", [*costs.SHIPPED_CONFIGS, *TINY_HF])
def test_counts_equal_transformers(name):
    d = shipped(name) if name in costs.SHIPPED_CONFIGS else TINY_HF[name]
    assert costs.param_breakdown(costs.parse_config(d))["total"] == _hf_count(d)


@pytest.mark.parametrize("name", [LFM2, "lfm2_moe"])
def test_counts_equal_checkpoint_manifest(name):
    from lfm2engine.checkpoint import expected_tensors
    from lfm2engine.config import LFM2Config

    d = shipped(name) if name == LFM2 else TINY_HF[name]
    manifest = expected_tensors(LFM2Config.from_dict(d))
    params = sum(math.prod(s) for n, s in manifest.items() if not n.endswith("expert_bias"))
    buffers = sum(math.prod(s) for n, s in manifest.items() if n.endswith("expert_bias"))
    pb = costs.param_breakdown(costs.parse_config(d))
    assert (pb["total"], pb["buffers_not_counted"]) == (params, buffers)


@pytest.mark.parametrize("name", [LFM2, "lfm2_moe", "lfm2_dense_adjust"])
def test_lfm2_layers_come_from_lfm2config(name):
    from lfm2engine.config import LFM2Config

    d = shipped(name) if name == LFM2 else TINY_HF[name]
    cfg = LFM2Config.from_dict(d, shapes_only=True)  # lfm2_dense_adjust has conv_bias: the engine rejects it
    arch = costs.parse_config(d)
    assert arch.n_layers == cfg.num_hidden_layers and arch.tied == cfg.tie_word_embeddings
    for i, layer in enumerate(arch.layers):
        assert isinstance(layer.mixer, costs.Attention) == cfg.is_attention_layer(i)
        assert isinstance(layer.ffn, costs.MoE) == cfg.is_moe_layer(i)
        if isinstance(layer.mixer, costs.Attention):
            assert (layer.mixer.kv_heads, layer.mixer.head_dim) == (cfg.num_key_value_heads, cfg.head_dim)
        else:
            assert (layer.mixer.kernel, layer.mixer.bias) == (cfg.conv_L_cache, cfg.conv_bias)
        if isinstance(layer.ffn, costs.DenseMLP):
            assert layer.ffn.width == cfg.ffn_dim
        else:
            assert (layer.ffn.experts, layer.ffn.top_k, layer.ffn.width) == (
                cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size)


def test_lfm2_hf_rules_via_lfm2config():
    # transformers' Lfm2Config: block_ff_dim wins over intermediate_size; no layer_types means all attention.
    d = dict(TINY_HF["lfm2_dense_adjust"], intermediate_size=96, block_ff_dim=200)
    assert costs.param_breakdown(costs.parse_config(d))["total"] == _hf_count(d)
    d = {k: v for k, v in TINY_HF["lfm2_dense_adjust"].items() if k != "full_attn_idxs"}
    assert [lyr.mixer.kind for lyr in costs.parse_config(d).layers] == ["attention"] * 4
    assert costs.param_breakdown(costs.parse_config(d))["total"] == _hf_count(d)
    with pytest.raises(ConfigError, match="head_dim 16 differs"):  # the engine and costs derive it
        costs.parse_config(dict(TINY_HF["lfm2_moe"], head_dim=16))


def test_config_sources_agree(tmp_path):
    d = shipped("llama-7b")
    (tmp_path / "config.json").write_text(json.dumps(d))
    totals = {costs.param_breakdown(costs.parse_config(s))["total"]
              for s in ("llama-7b", "LLAMA_7B", costs.shipped_config_path("llama-7b"), str(tmp_path),
                        tmp_path / "config.json", d)}
    assert totals == {LLAMA_TOTAL}
    assert costs.parse_config(str(tmp_path)).name == tmp_path.name


# ---------------------------------------------------------------- planning


def test_five_million_dollar_plan():
    r = costs.plan(5e6)
    # Effective FLOPs per dollar: A100 312e12*0.4*3600/4 = 1.1232e17 > T4 9.36e16 > V100 7.2e16.
    assert r["gpu"] == "A100"
    assert r["gpu_hours"] == pytest.approx(1.25e6)
    assert r["C"] == pytest.approx(5e6 * 312e12 * 0.4 * 3600 / 4, rel=1e-12) == pytest.approx(5.616e23)
    a, alpha, b, beta = 406.4, 0.34, 410.7, 0.29
    g = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
    n = g * (5.616e23 / 6) ** (beta / (alpha + beta))
    assert r["N"] == pytest.approx(n, rel=1e-12) and r["N"] == pytest.approx(4.7476e10, rel=1e-4)
    assert r["D"] == pytest.approx(5.616e23 / 6 / n, rel=1e-12) and r["D"] == pytest.approx(1.9715e12, rel=1e-4)
    assert r["loss"] == pytest.approx(a / n**alpha + b / r["D"] ** beta + 1.69, rel=1e-12)
    assert r["loss"] == pytest.approx(1.8970, abs=1e-4)
    assert r["N_numeric"] == pytest.approx(r["N"], rel=1e-6)
    # The emitted config is a Llama-style model of about N parameters that `model` can read.
    cfg = r["model_config"]
    assert cfg["model_type"] == "llama" and cfg["hidden_size"] % 128 == 0
    assert costs.param_breakdown(costs.parse_config(cfg))["total"] == r["model_config_params"]
    assert abs(r["model_config_rel_diff"]) < 0.01


def test_plan_options():
    r = costs.plan(1e6, gpus=["cheap:1.0:100", ("fast", 10.0, 900.0)], mfu=0.5)
    assert r["gpu"] == "cheap"  # 1.8e17 FLOPs per dollar beats 1.62e17
    assert r["C"] == pytest.approx(1e6 * 100e12 * 0.5 * 3600)
    law = costs.scaling.ScalingLaw(A=1.0, alpha=0.5, B=1.0, beta=0.5, E=0.0)
    r = costs.plan(1e3, gpus=[("x", 1.0, 1.0)], mfu=1.0, law=law)
    assert r["N"] == pytest.approx(r["D"]) == pytest.approx(math.sqrt(1e3 * 1e12 * 3600 / 6))  # alpha = beta


def test_llama_config_for_7b_params_is_llama_7b():
    cfg = costs.llama_config_for_params(6.74e9)
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]) == (4096, 32, 11008)


# ---------------------------------------------------------------- fine-tuning memory


def test_finetune_by_hand():
    r = costs.finetune_memory(hidden=4096, layers=32, top=2, rank=8)
    m = r["methods"]
    assert r["base_params"] == 12 * 4096**2 * 32
    assert m["full"]["grad_bytes"] == 2 * 12 * 4096**2 * 32 and m["full"]["extra_param_bytes"] == 0
    assert m["freeze"]["trainable_params"] == 12 * 4096**2 * 2
    assert m["freeze"]["total_bytes"] == 2 * 12 * 4096**2 * 2
    assert m["adapter"]["trainable_params"] == m["adapter"]["extra_params"] == 32 * 2 * (2 * 4096 * 8)
    assert m["adapter"]["total_bytes"] == 2 * 2 * 32 * 2 * (2 * 4096 * 8)
    assert m["lora"]["trainable_params"] == 32 * 2 * 8 * (4096 + 4096)  # q and v
    assert m["vera"]["trainable_params"] == 32 * 2 * (8 + 4096)
    assert m["vera"]["shared_frozen_params"] == 8 * 4096 + 4096 * 8
    assert m["vera"]["extra_params"] == 32 * 2 * (8 + 4096) + 2 * 8 * 4096
    assert m["vera"]["grad_bytes"] == 2 * 32 * 2 * (8 + 4096)
    every = ("q", "k", "v", "o", "up", "down")
    r = costs.finetune_memory(hidden=1024, layers=4, rank=16, lora_targets=every, vera_targets="up,down",
                              adapter_bias=True)
    m = r["methods"]
    assert m["lora"]["trainable_params"] == 4 * 16 * (4 * 2 * 1024 + 2 * 5 * 1024)
    assert m["adapter"]["trainable_params"] == 4 * 2 * (2 * 1024 * 16 + 16 + 1024)
    assert m["vera"]["trainable_params"] == 4 * ((16 + 4096) + (16 + 1024))
    assert m["vera"]["shared_frozen_params"] == 16 * 4096 + 4096 * 16  # A [R, 4D], B [4D, R]


# ---------------------------------------------------------------- parallelism


def test_bubble_and_zero_paper_example():
    assert costs.bubble_fraction(4, 8) == pytest.approx(3 / 11)
    assert costs.bubble_fraction(1, 8) == 0.0
    psi = 7_500_000_000  # ZeRO paper, Figure 1: 7.5B parameters, 64 devices, K = 12
    got = [costs.zero_memory_per_device(psi, 64, s) for s in range(4)]
    assert got == [120_000_000_000, 31_406_250_000, 16_640_625_000, 1_875_000_000]


def test_parallel_volumes_by_hand():
    r = costs.parallel_cost("llama-7b", dp=4, tp=2, pp=4, ep=8, microbatches=8, micro_batch=1, seq=2048)
    act = 8 * 2048 * 4096 * 2
    c = r["comm_bytes_per_device_per_step"]
    assert c["dp_allreduce"] == pytest.approx(2 * 3 / 4 * LLAMA_TOTAL * 2)
    assert c["zero3"] == pytest.approx(3 * 3 / 4 * LLAMA_TOTAL * 2)
    assert c["tp_megatron"] == c["sp_megatron"] == pytest.approx(4 * 2 * (1 / 2) * 32 * act)
    assert c["ep_alltoall"] == 0  # dense
    assert c["pp_p2p"] == 2 * act
    assert r["pipeline"]["bubble_1f1b"] == r["pipeline"]["bubble_gpipe"] == pytest.approx(3 / 11)
    assert r["pipeline"]["inflight_microbatches_1f1b"] == 4
    moe = costs.parallel_cost(LFM2, ep=4, microbatches=2, seq=1024)
    assert moe["comm_bytes_per_device_per_step"]["ep_alltoall"] == pytest.approx(
        22 * 4 * (2 * 1024) * 4 * 2048 * 2 * 3 / 4)


# ---------------------------------------------------------------- inference roofline


def test_llama_decode_and_prefill_by_hand():
    arch = costs.parse_config("llama-7b")
    macs = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096
    kv_tok = 32 * 2 * 4096 * 2
    bw, peak = 1e12, 1e14
    d = costs.decode_step(arch, 4, 1000, bw, peak)
    assert d["flops"] == 4 * (2 * macs + 32 * 4 * 32 * 128 * 1001)
    assert d["bytes"] == (LLAMA_TOTAL - 32000 * 4096) * 2 + 4 * 4096 * 2 + 4 * kv_tok * 1001
    assert d["tokens_per_s"] == pytest.approx(min(4 * bw / d["bytes"], 4 * peak / d["flops"]))
    assert d["limited_by"] == "memory"
    p = costs.prefill(arch, 2, 512, bw, peak)
    assert p["flops"] == 2 * 512 * 2 * macs + 32 * 2 * (2 * 32 * 128) * 2 * (512 * 513 // 2)
    assert p["bytes"] == (LLAMA_TOTAL - 32000 * 4096 + 1024 * 4096) * 2 + 1024 * kv_tok
    assert p["limited_by"] == "compute"
    r = costs.inference_cost("llama-7b", bandwidth=2e12, peak_flops=5e14, batches=[1, 64])
    assert r["device"] == "custom" and r["ridge_point_flops_per_byte"] == 250
    assert [s["batch"] for s in r["decode_sweep"]] == [1, 64]


def test_moe_decode_reads_more_experts_as_batch_grows():
    arch = costs.parse_config(LFM2)
    one = costs._weight_bytes_touched(arch, 1, 2)
    assert one == 2 * 1_557_740_288
    big = costs._weight_bytes_touched(arch, 10_000, 2)
    assert big == pytest.approx(2 * 8_339_929_856, rel=1e-9)  # every expert, i.e. all weights
    sweep = costs.inference_cost(LFM2)["decode_sweep"]
    assert all(a["tokens_per_s"] < b["tokens_per_s"] for a, b in zip(sweep, sweep[1:], strict=False))


# ---------------------------------------------------------------- bad input


def _edit(name: str, **changes) -> dict:
    d = shipped(name)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return d


_DROP = object()


@pytest.mark.parametrize(
    "cfg, match",
    [
        (_edit("llama-7b", model_type="gpt2"), "unsupported model_type 'gpt2'"),
        (_edit("llama-7b", model_type=_DROP), "unsupported model_type None"),
        (_edit("llama-7b", hidden_size=_DROP), "missing required key 'hidden_size'"),
        (_edit("llama-7b", intermediate_size=_DROP), "missing required key 'intermediate_size'"),
        (_edit("llama-7b", hidden_size=-4096), "hidden_size must be >= 1"),
        (_edit("llama-7b", num_hidden_layers=0), "num_hidden_layers must be >= 1"),
        (_edit("llama-7b", vocab_size="32000"), "vocab_size must be an integer"),
        (_edit("llama-7b", num_key_value_heads=5), "not a multiple of num_key_value_heads"),
        (_edit("llama-7b", num_attention_heads=31), "not divisible by num_attention_heads"),
        (_edit("llama-7b", tie_word_embeddings="yes"), "tie_word_embeddings must be true or false"),
        (_edit("deepseek-v3", kv_lora_rank=_DROP), "missing required key 'kv_lora_rank'"),
        (_edit("deepseek-v3", n_shared_experts=-1), "n_shared_experts must be >= 0"),
        (_edit("deepseek-v3", num_experts_per_tok=300), "exceeds n_routed_experts"),
        (_edit(LFM2, layer_types=_DROP), "layer_types"),
        (_edit(LFM2, layer_types=["conv"] * 23), "must list num_hidden_layers = 24"),
        (_edit(LFM2, layer_types=["conv"] * 23 + ["mamba"]), "unknown layer type"),
        (_edit(LFM2, num_experts=_DROP), "missing required key 'num_experts'"),
        (_edit(LFM2, num_dense_layers=25), "exceeds num_hidden_layers"),
        (_edit(LFM2, moe_intermediate_size=-1792), "moe_intermediate_size must be >= 1"),
    ],
)
def test_bad_configs_raise_config_error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        costs.model_cost(cfg, seq=8)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not a shipped config name"):
        costs.parse_config(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="config.json not found"):
        costs.parse_config(str(tmp_path))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        costs.parse_config(str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        costs.parse_config(str(tmp_path / "list.json"))
    with pytest.raises(ConfigError, match="no shipped config"):
        costs.shipped_config_path("gpt-5")
    with pytest.raises(ConfigError, match="must be a path, a shipped name or a dict, found int"):
        costs.parse_config(42)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: costs.model_cost(LFM2, batch=-1), 'batch must be >= 1, found -1'),
        (lambda: costs.model_cost(LFM2, seq=0), 'seq must be >= 1, found 0'),
        (lambda: costs.model_cost(LFM2, seq=2.5), 'seq must be an integer, found 2.5'),
        (lambda: costs.model_cost(LFM2, layer=24), 'layer 24 is out of range: lfm2-8b-a1b has'),
        (lambda: costs.model_cost(LFM2, layer=-1), 'layer must be >= 0, found -1'),
        (lambda: costs.model_cost(LFM2, dtype_bytes=0), 'dtype_bytes must be >= 1, found 0'),
        (lambda: costs.model_cost(LFM2, optimizer="lion"), "optimizer must be 'adam' or 'sgd', found 'lion'"),
        (lambda: costs.model_cost({k: v for k, v in shipped("llama-7b").items() if k != "max_position_embeddings"}),
         "no max_position_embeddings in the"),
        (lambda: costs.plan(0), 'budget (dollars) must be > 0, found 0'),
        (lambda: costs.plan(-5e6), 'budget (dollars) must be > 0, found -5000000.0'),
        (lambda: costs.plan(5e6, mfu=1.5), 'mfu must be <= 1, found 1.5'),
        (lambda: costs.plan(5e6, mfu=0), 'mfu must be > 0, found 0'),
        (lambda: costs.plan(5e6, gpus=[]), 'plan needs at least one GPU option'),
        (lambda: costs.plan(5e6, gpus=["A100:4"]), "GPU option 'A100:4' must look like"),
        (lambda: costs.plan(5e6, gpus=["A100:four:312"]), "GPU option 'A100:four:312': cost and TFLOP/s"),
        (lambda: costs.plan(5e6, gpus=[("A100", -4.0, 312.0)]), 'A100 price ($/h) must be > 0, found -4.0'),
        (lambda: costs.plan(5e6, gpus=[("A100", 4.0, 0.0)]), 'A100 peak TFLOP/s must be > 0, found 0.0'),
        (lambda: costs.finetune_memory(hidden=0), 'hidden must be >= 1, found 0'),
        (lambda: costs.finetune_memory(layers=-2), 'layers must be >= 1, found -2'),
        (lambda: costs.finetune_memory(rank=-8), 'rank must be >= 1, found -8'),
        (lambda: costs.finetune_memory(top=33, layers=32), 'top 33 exceeds the number of layers 32'),
        (lambda: costs.finetune_memory(lora_targets=("q", "gate")), 'lora_targets must be a non-empty subset of q,'),
        (lambda: costs.finetune_memory(lora_targets="q,q"), "lora_targets lists a projection twice: ['q',"),
        (lambda: costs.finetune_memory(vera_targets=()), 'vera_targets must be a non-empty subset of q,'),
        (lambda: costs.bubble_fraction(0, 8), 'stages must be >= 1, found 0'),
        (lambda: costs.bubble_fraction(4, -1), 'microbatches must be >= 1, found -1'),
        (lambda: costs.zero_memory_per_device(-1, 8, 1), 'params must be >= 1, found -1'),
        (lambda: costs.zero_memory_per_device(10, 8, 4), 'ZeRO stage must be 0, 1, 2 or 3, found 4'),
        (lambda: costs.parallel_cost(LFM2, dp=0), 'dp must be >= 1, found 0'),
        (lambda: costs.parallel_cost(LFM2, microbatches=0), 'microbatches must be >= 1, found 0'),
        (lambda: costs.parallel_cost(LFM2, seq=-1), 'seq must be >= 1, found -1'),
        (lambda: costs.inference_cost(LFM2, device="tpu"), "unknown device 'tpu'; known: h100, h200, a100"),
        (lambda: costs.inference_cost(LFM2, device=None, bandwidth=1e12),
         "give a device name or both a bandwidth and a"),
        (lambda: costs.inference_cost(LFM2, bandwidth=-1.0), 'bandwidth (bytes/s) must be > 0, found -1.0'),
        (lambda: costs.inference_cost(LFM2, context=-1), 'context must be >= 0, found -1'),
        (lambda: costs.inference_cost(LFM2, batch=0), 'batch must be >= 1, found 0'),
        (lambda: costs.inference_cost(LFM2, weight_bytes=0), 'weight_bytes must be >= 1, found 0'),
        (lambda: costs.inference_cost(LFM2, batches=[1, 0]), 'batches entry must be >= 1, found 0'),
        (lambda: costs.llama_config_for_params(-1), 'N must be > 0, found -1'),
    ],
)
def test_bad_arguments_raise_input_error(call, match):
    with pytest.raises(InputError, match=re.escape(match)):
        call()


# ---------------------------------------------------------------- CLI


def run_main(capsys, *argv):
    rc = costs.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_json_every_subcommand(capsys, tmp_path):
    rc, out, _ = run_main(capsys, "model", LFM2, "--json")
    r = json.loads(out)
    assert rc == 0
    assert (r["params_total"], r["params_active"]) == (8_339_929_856, 1_557_740_288)
    assert {"layer_forward_flops", "layer_peak_memory_bytes", "forward_flops", "training_memory_bytes"} <= set(r)
    cfg_out = tmp_path / "planned" / "config.json"
    cfg_out.parent.mkdir()
    rc, out, _ = run_main(capsys, "plan", "--budget", "5e6", "--json", "--config-out", str(cfg_out))
    r = json.loads(out)
    assert rc == 0 and r["gpu"] == "A100" and {"N", "D", "loss"} <= set(r)
    rc, out, _ = run_main(capsys, "model", str(cfg_out.parent), "--json", "--seq", "16")
    assert json.loads(out)["params_total"] == r["model_config_params"]
    for argv in (["finetune", "--json"], ["parallel", LFM2, "--seq", "64", "--json"],
                 ["inference", LFM2, "--json", "--batches", "1,8"], ["configs", "--json"]):
        rc, out, _ = run_main(capsys, *argv)
        assert rc == 0 and isinstance(json.loads(out), dict)


def test_cli_tables(capsys):
    for argv in (["model", "llama-7b"], ["plan", "--budget", "5e6"], ["finetune"], ["parallel", "deepseek-v3"],
                 ["inference", LFM2], ["configs"]):
        rc, out, _ = run_main(capsys, *argv)
        assert rc == 0 and out.strip()
    rc, out, _ = run_main(capsys, "model", LFM2, "--seq", "32")
    assert "8,339,929,856" in out and "1,557,740,288" in out


@pytest.mark.parametrize(
    "argv, word",
    [
        (["plan", "--budget", "-5"], "InputError"),
        (["model", "no-such-model"], "ConfigError"),
        (["model", LFM2, "--batch", "0"], "InputError"),
        (["finetune", "--lora-targets", "q,zz"], "InputError"),
        (["inference", LFM2, "--batches", "1,x"], "InputError"),
    ],
)
def test_cli_errors_exit_2(capsys, argv, word):
    rc, out, err = run_main(capsys, *argv)
    assert rc == 2 and out == ""
    assert word in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        costs.main(["plan"])  # --budget is required
    assert e.value.code == 2


def test_python_dash_m_entry_point():
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ok = subprocess.run([sys.executable, "-m", "lfm2engine.costs", "model", "llama-7b", "--json", "--seq", "8"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout)["params_total"] == LLAMA_TOTAL
    bad = subprocess.run([sys.executable, "-m", "lfm2engine.costs", "model", "/nonexistent/config.json"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "ConfigError" in bad.stderr and "Traceback" not in bad.stderr


def test_help_and_docs_cover_every_subcommand_and_json_key(capsys):
    parser = costs.build_parser()
    sub = parser._subparsers._group_actions[0]  # the subcommand action
    with open(os.path.join(ROOT, "docs", "costs.md"), encoding="utf-8") as f:
        docs = f.read()
    results = {"model": costs.model_cost(LFM2, seq=8), "plan": costs.plan(5e6), "finetune": costs.finetune_memory(),
               "parallel": costs.parallel_cost(LFM2, seq=8), "inference": costs.inference_cost(LFM2, batches=[1]),
               "configs": costs._cmd_configs(None)}
    assert set(sub.choices) == set(results)
    for name, p in sub.choices.items():
        assert "--json" in p.format_help()
        assert f"costs {name}" in docs, f"docs/costs.md does not document the {name!r} subcommand"
        for key in results[name]:
            assert f"`{key}`" in docs, f"docs/costs.md does not document the {name} JSON key {key!r}"
