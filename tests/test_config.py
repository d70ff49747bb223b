"""LFM2Config: HF parsing, aliases, derived helpers, every ConfigError path."""

import json

import pytest

from lfm2engine.config import LFM2Config, read_config_json
from lfm2engine.errors import ConfigError
from lfm2engine.synthetic import LFM2_8B_A1B, preset_config


def write(tmp_path, d):
    (tmp_path / "config.json").write_text(json.dumps(d))
    return tmp_path


def test_real_lfm2_8b_a1b_config():
    c = LFM2Config.from_dict(LFM2_8B_A1B)
    assert c.is_moe and c.head_dim == 64 and c.kv_dim == 512
    assert c.attention_layers == [2, 6, 10, 14, 18, 21]
    assert len(c.conv_layers) == 18
    assert [c.is_moe_layer(i) for i in range(4)] == [False, False, True, True]
    assert c.rope_theta == 1_000_000.0 and c.eos_ids == (7,)


def test_hf_written_config_roundtrip(hf_ckpt):
    c = LFM2Config.from_hf(hf_ckpt("moe_a"))
    assert c.num_experts == 6 and c.num_experts_per_tok == 3 and c.num_dense_layers == 1
    assert c.rope_theta == 10000.0
    d = LFM2Config.from_dict(c.to_hf_dict())
    assert d == c and d.fingerprint() == c.fingerprint()


def test_dense_ffn_auto_adjust_matches_hf():
    base = dict(model_type="lfm2", vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                layer_types=["conv", "full_attention"])
    # HF Lfm2MLP: int(2*12288/3)=8192 -> *1.0 -> round up to 256 -> 8192
    assert LFM2Config.from_dict(dict(base, intermediate_size=12288)).ffn_dim == 8192
    assert LFM2Config.from_dict(dict(base, intermediate_size=100, block_multiple_of=16)).ffn_dim == 80
    assert LFM2Config.from_dict(dict(base, intermediate_size=100, block_auto_adjust_ff_dim=False)).ffn_dim == 100
    # block_ff_dim (legacy) overrides intermediate_size
    assert LFM2Config.from_dict(dict(base, intermediate_size=1, block_ff_dim=99,
                                     block_auto_adjust_ff_dim=False)).ffn_dim == 99


def test_aliases():
    d = dict(LFM2_8B_A1B)
    del d["rope_parameters"], d["tie_word_embeddings"], d["layer_types"]
    d.update(rope_theta=5e5, tie_embedding=False, full_attn_idxs=[2, 6, 10, 14, 18, 21])
    c = LFM2Config.from_dict(d)
    assert c.rope_theta == 5e5 and c.tie_word_embeddings is False
    assert c.attention_layers == [2, 6, 10, 14, 18, 21]


@pytest.mark.parametrize("change, words", [
    (dict(model_type="llama"), "unsupported model_type"),
    (dict(hidden_size=2050), "not divisible"),
    (dict(num_key_value_heads=5), "multiple"),
    (dict(layer_types=["conv"] * 3), "layer_types must list 24"),
    (dict(layer_types=["conv"] * 23 + ["mamba"]), "unknown layer type"),
    (dict(num_experts_per_tok=33), "num_experts_per_tok"),
    (dict(num_dense_layers=25), "num_dense_layers"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(hidden_size="big"), "integer"),
    (dict(conv_bias=True), "conv_bias"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "rope_type"),
    (dict(eos_token_id=70000), "eos_token_id"),
])
def test_bad_configs(change, words):
    with pytest.raises(ConfigError, match=words):
        LFM2Config.from_dict(dict(LFM2_8B_A1B, **change))


def test_missing_key_and_bad_files(tmp_path):
    d = dict(LFM2_8B_A1B)
    del d["num_experts"]
    with pytest.raises(ConfigError, match="num_experts"):
        LFM2Config.from_hf(write(tmp_path, d))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        LFM2Config.from_hf(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        LFM2Config.from_hf(tmp_path / "nowhere")
    moe_without_types = dict(LFM2_8B_A1B)
    del moe_without_types["layer_types"]
    with pytest.raises(ConfigError, match="layer_types"):
        LFM2Config.from_dict(moe_without_types)


def test_presets():
    d = preset_config("default")
    f = preset_config("full")
    assert d.layer_types == f.layer_types and d.num_experts == f.num_experts == 32
    with pytest.raises(ConfigError, match="unknown synthetic preset"):
        preset_config("huge")


def test_read_config_json(tmp_path):
    d = dict(LFM2_8B_A1B)
    write(tmp_path, d)
    assert read_config_json(tmp_path) == (d, str(tmp_path / "config.json"))
    assert read_config_json(tmp_path / "config.json") == (d, str(tmp_path / "config.json"))
    with pytest.raises(ConfigError, match="config.json not found"):
        read_config_json(tmp_path / "elsewhere")
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object, found list"):
        read_config_json(tmp_path)


# What the engine cannot run but whose shapes are well defined: shapes_only=True accepts it.
ENGINE_ONLY = [
    (dict(conv_bias=True), "conv_bias"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "rope_type"),
    (dict(rope_parameters=[1, 2]), "rope_parameters must be an object"),
    (dict(eos_token_id=70000), "eos_token_id"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(hidden_size=2016, num_attention_heads=32, num_key_value_heads=8), "must be even for RoPE"),  # head_dim 63
]


@pytest.mark.parametrize("change, words", ENGINE_ONLY)
def test_shapes_only_accepts_what_only_the_engine_rejects(change, words):
    with pytest.raises(ConfigError, match=words):
        LFM2Config.from_dict(dict(LFM2_8B_A1B, **change))
    c = LFM2Config.from_dict(dict(LFM2_8B_A1B, **change), shapes_only=True)
    ref = LFM2Config.from_dict(LFM2_8B_A1B)
    assert c.layer_types == ref.layer_types and c.ffn_dim == ref.ffn_dim
    assert [c.is_moe_layer(i) for i in range(24)] == [ref.is_moe_layer(i) for i in range(24)]


@pytest.mark.parametrize("shapes_only", [False, True])
@pytest.mark.parametrize("change, words", [
    (dict(layer_types=["conv"] * 23), r"layer_types must list 24 entries, found 23 .*num_hidden_layers = 24"),
    (dict(num_dense_layers=25), "num_dense_layers 25 exceeds num_hidden_layers 24"),
    (dict(num_experts_per_tok=33), "num_experts_per_tok"),
    (dict(num_key_value_heads=5), "multiple"),
    (dict(head_dim=128), "head_dim 128 differs from hidden_size / num_attention_heads = 64"),
    (dict(layer_types=None, full_attn_idxs=3), "full_attn_idxs must be layer indices"),
])
def test_shape_errors_in_both_modes(change, words, shapes_only):
    with pytest.raises(ConfigError, match=words):
        LFM2Config.from_dict(dict(LFM2_8B_A1B, **change), shapes_only=shapes_only)


def test_dense_width_rule_checks_block_multiple_of():
    base = dict(model_type="lfm2", vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                layer_types=["conv", "full_attention"], intermediate_size=100)
    for m in (0, -16, 1.5, "32"):
        with pytest.raises(ConfigError, match="block_multiple_of must be a positive integer"):
            LFM2Config.from_dict(dict(base, block_multiple_of=m))
    # Unused when the width is not adjusted, or when the multiplier is null.
    assert LFM2Config.from_dict(dict(base, block_multiple_of=0, block_auto_adjust_ff_dim=False)).ffn_dim == 100
    assert LFM2Config.from_dict(dict(base, block_multiple_of=0, block_ffn_dim_multiplier=None)).ffn_dim == 66
    # HF's defaults for dense LFM2: every layer attention without layer_types / full_attn_idxs.
    no_types = {k: v for k, v in base.items() if k != "layer_types"}
    assert LFM2Config.from_dict(no_types).attention_layers == [0, 1]
    assert LFM2Config.from_dict(dict(base, head_dim=4)).head_dim == 4  # an explicit head_dim that agrees


def test_replace_still_checks_num_dense_layers():
    c = LFM2Config.from_dict(LFM2_8B_A1B)
    with pytest.raises(ConfigError, match="num_dense_layers must be >= 0"):
        c.replace(num_dense_layers=-1)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("change, words", [
    (dict(norm_eps=INF), "norm_eps must be a finite number"),
    (dict(norm_eps=NAN), "norm_eps must be a finite number"),
    (dict(norm_eps=1e39), "norm_eps must be a finite number \\(float32\\)"),
    (dict(norm_eps=1e-40), "norm_eps must be a positive normal float32"),
    (dict(norm_eps=True), "norm_eps must be a finite number"),
    (dict(norm_eps="1e-5"), "norm_eps must be a finite number"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": NAN}), "rope_theta must be a finite number"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": -INF}), "rope_theta must be a finite number"),
    (dict(routed_scaling_factor=INF), "routed_scaling_factor must be a finite number"),
    (dict(routed_scaling_factor=False), "routed_scaling_factor must be a finite number"),
    (dict(num_experts=True), "num_experts must be an integer"),
    (dict(num_key_value_heads=True), "num_key_value_heads must be a positive integer"),
    (dict(intermediate_size=7.0), "intermediate_size must be a positive integer"),
    (dict(max_position_embeddings=1e5), "max_position_embeddings must be a positive integer"),
    (dict(bos_token_id=True), "bos_token_id True is not a token id"),
    (dict(pad_token_id=0.5), "pad_token_id 0.5 is not a token id"),
    (dict(eos_token_id=[7, "8"]), "eos_token_id '8' is not a token id"),
    (dict(use_expert_bias="false"), "use_expert_bias must be true or false"),
    (dict(norm_topk_prob=1), "norm_topk_prob must be true or false"),
    (dict(tie_word_embeddings=0), "tie_word_embeddings must be true or false"),
    (dict(tie_embedding="yes"), "tie_embedding must be true or false"),
    (dict(conv_bias="false"), "conv_bias must be true or false"),
    (dict(dtype=16), "dtype must be a string"),
    (dict(num_experts=2**63), "num_experts 9223372036854775808 exceeds 65536"),
    (dict(num_hidden_layers=2**63), "num_hidden_layers .* exceeds 65536"),
    (dict(moe_intermediate_size=2**40), "moe_intermediate_size .* exceeds 2147483647"),
])
def test_non_finite_and_mistyped_numbers(change, words):
    """Issue 16 item 2: NaN/Inf, booleans or strings where numbers belong, booleans as numbers,
    and values that make a norm meaningless are ConfigErrors (naming the key), never silent."""
    with pytest.raises(ConfigError, match=words):
        LFM2Config.from_dict(dict(LFM2_8B_A1B, **change))


def test_dense_multiplier_must_be_finite():
    d = {"model_type": "lfm2", "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2,
         "num_attention_heads": 2, "intermediate_size": 30}
    LFM2Config.from_dict(dict(d, block_ffn_dim_multiplier=None))  # null: no multiplier (legal)
    for v in (NAN, INF, "2", True):
        with pytest.raises(ConfigError, match="block_ffn_dim_multiplier must be a finite number"):
            LFM2Config.from_dict(dict(d, block_ffn_dim_multiplier=v))
