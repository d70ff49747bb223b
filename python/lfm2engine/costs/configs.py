"""Reading a Hugging Face config.json into an Arch: the shipped configs, the loader, and one parser
per family (llama, lfm2, lfm2_moe, deepseek_v3).

LFM2 rules (which layers are attention or conv, the dense FFN width, where the MoE layers are,
head_dim, tied embeddings) are not restated here: lfm2 / lfm2_moe configs go through
lfm2engine.config.LFM2Config (shapes_only=True, so configs the engine cannot run still count).
What it is not: any arithmetic on the result (layers.py, model.py and the modules after them).
"""

from __future__ import annotations

import os

from ..config import LFM2Config, read_config_json
from ..errors import ConfigError
from .arch import MLA, Arch, Attention, DenseMLP, Layer, MoE, ShortConv

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "configs")
SHIPPED_CONFIGS = ("llama-7b", "deepseek-v3", "lfm2-8b-a1b")
SUPPORTED_MODEL_TYPES = ("llama", "lfm2", "lfm2_moe", "deepseek_v3")


def shipped_config_path(name: str) -> str:
    """Path of a config shipped as package data (`llama-7b`, `deepseek-v3`, `lfm2-8b-a1b`)."""
    key = name.lower().replace("_", "-")
    if key not in SHIPPED_CONFIGS:
        raise ConfigError(f"no shipped config named {name!r}; shipped: {', '.join(SHIPPED_CONFIGS)}")
    return os.path.join(CONFIG_DIR, key + ".json")


def load_config(spec) -> tuple[dict, str]:
    """(config dict, source) from a dict, a config.json path, a directory holding one, or a shipped name."""
    if isinstance(spec, dict):
        return dict(spec), "config"
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"config must be a path, a shipped name or a dict, found {type(spec).__name__}")
    p = os.fspath(spec)
    if not os.path.exists(p):
        if p.lower().replace("_", "-") not in SHIPPED_CONFIGS:
            raise ConfigError(
                f"{p}: no such file or directory, and not a shipped config name "
                f"({', '.join(SHIPPED_CONFIGS)})"
            )
        p = shipped_config_path(p)
    return read_config_json(p)


_REQUIRED = object()


class _Reader:
    """Typed access to config keys; every problem is a ConfigError naming the source and the key."""

    def __init__(self, d: dict, source: str):
        self.d, self.source = d, source

    def error(self, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {msg}")

    def int(self, key: str, default=_REQUIRED, minimum: int = 1, aliases: tuple[str, ...] = ()) -> int:
        for k in (key, *aliases):
            v = self.d.get(k)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise self.error(f"{k} must be an integer, found {v!r}")
                if v < minimum:
                    raise self.error(f"{k} must be >= {minimum}, found {v}")
                return v
        if default is _REQUIRED:
            raise self.error(f"missing required key {key!r} (model_type {self.d.get('model_type')!r})")
        return default

    def bool(self, key: str, default: bool) -> bool:
        v = self.d.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.error(f"{key} must be true or false, found {v!r}")
        return v


def _name_of(d: dict, source: str) -> str:
    if source != "config":
        base = os.path.basename(source)
        if base == "config.json":
            return os.path.basename(os.path.dirname(source)) or "config"
        return base.removesuffix(".json")
    return str(d.get("_name_or_path") or d.get("model_type"))


def parse_config(spec) -> Arch:
    """Normalize a Hugging Face config (dict, path, directory or shipped name) into an Arch.

    Unknown model_type, missing size keys and inconsistent sizes raise ConfigError.
    """
    if isinstance(spec, Arch):
        return spec
    d, source = load_config(spec)
    r = _Reader(d, source)
    mt = d.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise r.error(f"unsupported model_type {mt!r}; lfm2engine.costs knows {', '.join(SUPPORTED_MODEL_TYPES)}")
    vocab = r.int("vocab_size")
    hidden = r.int("hidden_size")
    n_layers = r.int("num_hidden_layers")
    heads = r.int("num_attention_heads")
    max_pos = r.int("max_position_embeddings", default=None)
    mtp = 0
    if mt == "llama":
        layers, tied = _parse_llama(r, hidden, heads, n_layers), r.bool("tie_word_embeddings", False)
    elif mt in ("lfm2", "lfm2_moe"):
        layers, tied = _parse_lfm2(d, source)
    else:
        layers, tied = _parse_deepseek(r, n_layers, heads), r.bool("tie_word_embeddings", False)
        mtp = r.int("num_nextn_predict_layers", default=0, minimum=0)
    return Arch(_name_of(d, source), mt, vocab, hidden, tuple(layers), tied, max_pos, source, mtp)


def _parse_llama(r: _Reader, hidden: int, heads: int, n_layers: int) -> list[Layer]:
    kv = r.int("num_key_value_heads", default=heads)
    if heads % kv:
        raise r.error(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    head_dim = r.int("head_dim", default=None)
    if head_dim is None:
        if hidden % heads:
            raise r.error(f"hidden_size {hidden} is not divisible by num_attention_heads {heads} "
                          "and no head_dim is given")
        head_dim = hidden // heads
    att = Attention(heads, kv, head_dim, bias=r.bool("attention_bias", False))
    mlp = DenseMLP(r.int("intermediate_size"), bias=r.bool("mlp_bias", False))
    return [Layer(att, mlp)] * n_layers


def _parse_lfm2(d: dict, source: str) -> tuple[list[Layer], bool]:
    """(layers, tied) of an lfm2 / lfm2_moe config, every rule taken from LFM2Config."""
    cfg = LFM2Config.from_dict(d, source=source, shapes_only=True)
    att = Attention(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, qk_norm=True)
    conv = ShortConv(cfg.conv_L_cache, bias=cfg.conv_bias)
    dense = DenseMLP(cfg.ffn_dim)
    moe = (MoE(cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size, 0, cfg.use_expert_bias)
           if cfg.is_moe else None)
    layers = [Layer(att if cfg.is_attention_layer(i) else conv, moe if cfg.is_moe_layer(i) else dense)
              for i in range(cfg.num_hidden_layers)]
    return layers, cfg.tie_word_embeddings


def _parse_deepseek(r: _Reader, n_layers: int, heads: int) -> list[Layer]:
    mla = MLA(
        heads,
        r.int("q_lora_rank", default=0),
        r.int("kv_lora_rank"),
        r.int("qk_nope_head_dim"),
        r.int("qk_rope_head_dim"),
        r.int("v_head_dim"),
        bias=r.bool("attention_bias", False),
    )
    first_dense = r.int("first_k_dense_replace", minimum=0)
    freq = r.int("moe_layer_freq", default=1)
    experts = r.int("n_routed_experts")
    top_k = r.int("num_experts_per_tok")
    if top_k > experts:
        raise r.error(f"num_experts_per_tok {top_k} exceeds n_routed_experts {experts}")
    width = r.int("moe_intermediate_size")
    moe = MoE(experts, top_k, width, r.int("n_shared_experts", minimum=0) * width, router_bias_buffer=True)
    # DeepSeek's rule: MoE where i >= first_k_dense_replace and i % moe_layer_freq == 0.
    is_moe = [i >= first_dense and i % freq == 0 for i in range(n_layers)]
    dense = DenseMLP(r.int("intermediate_size")) if not all(is_moe) else None
    return [Layer(mla, moe if m else dense) for m in is_moe]
