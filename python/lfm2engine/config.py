"""LFM2Config: the one config object of the engine, built from a Hugging Face config.json.

Reads HF keys under their HF names for model_type `lfm2` (dense) and `lfm2_moe`, accepts the
legacy aliases (tie_embedding, rope_theta, full_attn_idxs, block_ff_dim), and rejects anything
the engine cannot run with ConfigError. Engine code never parses JSON anywhere else.
Must match transformers' Lfm2Config / Lfm2MoeConfig semantics (see docs/MODEL.md §1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from .errors import ConfigError

ATTENTION = "full_attention"
CONV = "conv"
SUPPORTED_MODEL_TYPES = ("lfm2", "lfm2_moe")
# Sizes a config may give. No real model comes near; the bounds keep every tensor's element and
# byte count exact in int64 and the per-layer / per-expert manifest listable, so that a config
# of 2**63 experts is a ConfigError, not a hang or a MemoryError.
MAX_DIM = 2**31 - 1  # any width, vocabulary, context length or count of heads
MAX_COUNT = 65_536  # layers, experts
F32_MAX = float.fromhex("0x1.fffffep+127")  # the kernels compute in float32
F32_TINY = float.fromhex("0x1p-126")  # smallest normal float32


def read_config_json(path: str | os.PathLike) -> tuple[dict, str]:
    """(dict, path read) of a config.json given as a file or a directory holding one.

    The one config.json reader of the package (LFM2Config.from_hf and lfm2engine.costs); every
    problem (missing file, bad JSON, not an object) is a ConfigError naming the path.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "config.json")
    if not os.path.isfile(p):
        raise ConfigError(f"{p}: config.json not found (a Hugging Face checkpoint directory needs one)")
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a JSON object, found {type(d).__name__}")
    return d, p


@dataclass(frozen=True)
class LFM2Config:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int  # dense SwiGLU width as written in config.json (before any auto-adjust)
    layer_types: tuple[str, ...]
    max_position_embeddings: int = 128_000
    norm_eps: float = 1e-5
    rope_theta: float = 1_000_000.0
    conv_L_cache: int = 3
    conv_bias: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = 0
    # dense LFM2 only: HF's "auto-adjust ff dim" rule
    block_auto_adjust_ff_dim: bool = False
    block_ffn_dim_multiplier: float | None = 1.0
    block_multiple_of: int = 256
    # MoE only
    moe_intermediate_size: int = 0
    num_experts: int = 0
    num_experts_per_tok: int = 0
    num_dense_layers: int = 0
    use_expert_bias: bool = False
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    torch_dtype: str = field(default="float32", compare=False)  # storage dtype on disk; not part of the math
    extra: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    # ---------------------------------------------------------------- derived helpers
    @property
    def is_moe(self) -> bool:
        return self.model_type == "lfm2_moe"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def ffn_dim(self) -> int:
        """Width of the dense SwiGLU actually instantiated (HF Lfm2MLP rule for dense LFM2)."""
        f = self.intermediate_size
        if not self.is_moe and self.block_auto_adjust_ff_dim:
            f = int(2 * f / 3)
            if self.block_ffn_dim_multiplier is not None:
                f = int(self.block_ffn_dim_multiplier * f)
                m = self.block_multiple_of
                f = m * ((f + m - 1) // m)
        return f

    def is_attention_layer(self, i: int) -> bool:
        return self.layer_types[i] == ATTENTION

    def is_moe_layer(self, i: int) -> bool:
        return self.is_moe and i >= self.num_dense_layers

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == ATTENTION]

    @property
    def conv_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == CONV]

    @property
    def eos_ids(self) -> tuple[int, ...]:
        e = self.eos_token_id
        if e is None:
            return ()
        return tuple(e) if isinstance(e, tuple) else (e,)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("extra")
        d["layer_types"] = list(self.layer_types)
        if isinstance(self.eos_token_id, tuple):
            d["eos_token_id"] = list(self.eos_token_id)
        return d

    def to_hf_dict(self) -> dict:
        """A config.json dict transformers reads back into the same model."""
        d = self.to_dict()
        d.pop("rope_theta")
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
        d["architectures"] = ["Lfm2MoeForCausalLM" if self.is_moe else "Lfm2ForCausalLM"]
        d["dtype"] = d.pop("torch_dtype")
        if not self.is_moe:
            for k in ("moe_intermediate_size", "num_experts", "num_experts_per_tok", "num_dense_layers",
                      "use_expert_bias", "routed_scaling_factor", "norm_topk_prob"):
                d.pop(k)
        else:
            for k in ("block_auto_adjust_ff_dim", "block_ffn_dim_multiplier", "block_multiple_of"):
                d.pop(k)
        return d

    def fingerprint(self) -> str:
        """Stable hash of every field that changes the math (ranks compare it at start-up)."""
        d = self.to_dict()
        d.pop("torch_dtype")
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_hf(cls, path: str | os.PathLike) -> "LFM2Config":
        """Read `config.json` from a checkpoint directory or a file path."""
        d, p = read_config_json(path)
        return cls.from_dict(d, source=p)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config", *, shapes_only: bool = False) -> "LFM2Config":
        """Build and validate a config from a config.json dict.

        shapes_only=True checks only what defines the model's layers and tensor shapes, and accepts
        configs the engine cannot run (conv_bias, non-default RoPE, odd head_dim, token ids outside
        the vocabulary, norm_eps or rope_theta <= 0): lfm2engine.costs counts such models.
        """
        d = dict(d)
        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: unsupported model_type {mt!r}; lfm2engine runs {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        is_moe = mt == "lfm2_moe"

        def req_int(key, *aliases, minimum=1):
            for k in (key, *aliases):
                if k in d and d[k] is not None:
                    v = d[k]
                    if isinstance(v, bool) or not isinstance(v, int):
                        raise ConfigError(f"{source}: {k} must be an integer, found {v!r}")
                    if v < minimum:
                        raise ConfigError(f"{source}: {k} must be >= {minimum}, found {v}")
                    return v
            raise ConfigError(f"{source}: missing required key {key!r}")

        def opt(key, default, *aliases):
            for k in (key, *aliases):
                if k in d and d[k] is not None:
                    return d[k]
            return default

        def key_of(key, *aliases):
            return next((k for k in (key, *aliases) if k in d and d[k] is not None), key)

        def req_bool(key, default, *aliases):
            v = opt(key, default, *aliases)
            if not isinstance(v, bool):
                raise ConfigError(f"{source}: {key_of(key, *aliases)} must be true or false, found {v!r}")
            return v

        def req_float(key, default, *aliases, value=None):
            v = opt(key, default, *aliases) if value is None else value
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > F32_MAX:
                raise ConfigError(f"{source}: {key_of(key, *aliases)} must be a finite number (float32), found {v!r}")
            return float(v)

        n_layers = req_int("num_hidden_layers")
        if n_layers > MAX_COUNT:  # before anything is listed per layer
            raise ConfigError(f"{source}: num_hidden_layers {n_layers} exceeds {MAX_COUNT}, far beyond any model "
                              "this engine can hold")
        hidden = req_int("hidden_size")
        n_heads = req_int("num_attention_heads")
        n_kv = opt("num_key_value_heads", n_heads)
        # HF Lfm2Config: block_ff_dim overrides intermediate_size when present
        inter = d.get("block_ff_dim") if (not is_moe and d.get("block_ff_dim") is not None) else d.get(
            "intermediate_size", 7168 if is_moe else 12288)

        layer_types = d.get("layer_types")
        if layer_types is None:
            idxs = d.get("full_attn_idxs")
            if idxs is None:
                if is_moe:
                    raise ConfigError(f"{source}: lfm2_moe needs 'layer_types' (or 'full_attn_idxs')")
                idxs = list(range(n_layers))  # HF's default for dense LFM2
            if not isinstance(idxs, list) or not all(isinstance(i, int) and 0 <= i < n_layers for i in idxs):
                raise ConfigError(f"{source}: full_attn_idxs must be layer indices in [0, {n_layers}), found {idxs}")
            layer_types = [ATTENTION if i in idxs else CONV for i in range(n_layers)]
        if not isinstance(layer_types, list) or len(layer_types) != n_layers:
            raise ConfigError(
                f"{source}: layer_types must list {n_layers} entries, found "
                f"{len(layer_types) if isinstance(layer_types, list) else type(layer_types).__name__} "
                f"(one type per layer: it must list num_hidden_layers = {n_layers})"
            )
        bad = sorted({t for t in layer_types if t not in (ATTENTION, CONV)})
        if bad:
            raise ConfigError(f"{source}: unknown layer type(s) {bad}; expected {ATTENTION!r} or {CONV!r}")

        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            if not shapes_only:
                raise ConfigError(f"{source}: rope_parameters must be an object, found {rope!r}")
            rope = {}
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype not in (None, "default") and not shapes_only:
            raise ConfigError(f"{source}: rope_type {rtype!r} is not supported (only 'default' RoPE)")
        theta = req_float("rope_theta", 1_000_000.0, value=rope.get("rope_theta", d.get("rope_theta", 1_000_000.0)))

        eos = d.get("eos_token_id", 2)
        if isinstance(eos, list):
            eos = tuple(eos)

        kw = dict(
            model_type=mt,
            vocab_size=req_int("vocab_size"),
            hidden_size=hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            intermediate_size=inter,
            layer_types=tuple(layer_types),
            max_position_embeddings=opt("max_position_embeddings", 128_000),
            norm_eps=req_float("norm_eps", 1e-5),
            rope_theta=theta,
            conv_L_cache=opt("conv_L_cache", 3),
            conv_bias=req_bool("conv_bias", False),
            tie_word_embeddings=req_bool("tie_word_embeddings", True, "tie_embedding"),
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=eos,
            pad_token_id=d.get("pad_token_id", 0),
            torch_dtype=opt("dtype", "float32", "torch_dtype"),
        )
        if not isinstance(kw["torch_dtype"], str):
            raise ConfigError(f"{source}: dtype must be a string such as \"bfloat16\", found {kw['torch_dtype']!r}")
        # HF: legacy tie_embedding wins over tie_word_embeddings when both exist
        if d.get("tie_embedding") is not None:
            kw["tie_word_embeddings"] = req_bool("tie_embedding", True)
        if is_moe:
            kw.update(
                moe_intermediate_size=req_int("moe_intermediate_size"),
                num_experts=req_int("num_experts"),
                num_experts_per_tok=req_int("num_experts_per_tok"),
                num_dense_layers=req_int("num_dense_layers", minimum=0),
                use_expert_bias=req_bool("use_expert_bias", True),
                routed_scaling_factor=req_float("routed_scaling_factor", 1.0),
                norm_topk_prob=req_bool("norm_topk_prob", True),
            )
        else:
            kw.update(
                block_auto_adjust_ff_dim=req_bool("block_auto_adjust_ff_dim", True),
                block_ffn_dim_multiplier=(None if d.get("block_ffn_dim_multiplier", 1.0) is None
                                          else req_float("block_ffn_dim_multiplier", 1.0)),
                block_multiple_of=opt("block_multiple_of", 256),
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kw["extra"] = {k: v for k, v in d.items() if k not in known}
        cfg = cls(**kw)
        cfg.validate(source, shapes_only=shapes_only)
        return cfg

    def validate(self, source: str = "config", *, shapes_only: bool = False) -> None:
        """Raise ConfigError for anything wrong; shapes_only=True: only what the model's shapes need."""
        def bad(msg):
            raise ConfigError(f"{source}: {msg}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "max_position_embeddings", "conv_L_cache"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(f"{name} must be a positive integer, found {v!r}")
            if v > MAX_DIM:
                bad(f"{name} {v} exceeds {MAX_DIM} (2**31 - 1), far beyond any model this engine can hold")
        for name in ("num_hidden_layers", "num_experts"):
            v = getattr(self, name)
            if v > MAX_COUNT:
                bad(f"{name} {v} exceeds {MAX_COUNT}, far beyond any model this engine can hold")
        for name in ("moe_intermediate_size", "num_experts_per_tok", "num_dense_layers", "block_multiple_of"):
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool) and v > MAX_DIM:
                bad(f"{name} {v} exceeds {MAX_DIM} (2**31 - 1), far beyond any model this engine can hold")
        if self.hidden_size % self.num_attention_heads:
            bad(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            bad(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads} (GQA needs whole groups)")
        hd = self.extra.get("head_dim")
        if hd is not None and hd != self.head_dim:
            bad(f"head_dim {hd!r} differs from hidden_size / num_attention_heads = {self.head_dim}; "
                "LFM2 derives head_dim from those two")
        if not self.is_moe and self.block_auto_adjust_ff_dim and self.block_ffn_dim_multiplier is not None:
            m = self.block_multiple_of
            if isinstance(m, bool) or not isinstance(m, int) or m < 1:
                bad(f"block_multiple_of must be a positive integer, found {m!r}")
        m = self.block_ffn_dim_multiplier
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m)):
            bad(f"block_ffn_dim_multiplier must be a finite number or null, found {m!r}")
        if not 1 <= self.ffn_dim <= MAX_DIM:
            bad(f"dense FFN width computes to {self.ffn_dim}; it must be in [1, {MAX_DIM}]")
        if self.is_moe:
            if self.num_experts < 1 or self.moe_intermediate_size < 1:
                bad("num_experts and moe_intermediate_size must be >= 1")
            if not (1 <= self.num_experts_per_tok <= self.num_experts):
                bad(f"num_experts_per_tok {self.num_experts_per_tok} must be in [1, num_experts={self.num_experts}]")
            if self.num_dense_layers < 0:
                bad(f"num_dense_layers must be >= 0, found {self.num_dense_layers}")
            if self.num_dense_layers > self.num_hidden_layers:
                bad(f"num_dense_layers {self.num_dense_layers} exceeds num_hidden_layers {self.num_hidden_layers}")
        if shapes_only:
            return
        # What the engine (and HF's RoPE) needs to run the model, beyond its shapes.
        if self.head_dim % 2:
            bad(f"head_dim {self.head_dim} (hidden_size / num_attention_heads) must be even for RoPE")
        if self.conv_bias:
            bad("conv_bias=true is not supported (no released LFM2 checkpoint uses it)")
        for name in ("norm_eps", "rope_theta", "routed_scaling_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > F32_MAX:
                bad(f"{name} must be a finite number (float32), found {v!r}")
        # a norm adds eps in float32: it must be a normal float32 > 0 there (a zero or flushed
        # subnormal eps divides a zero row by 0)
        if not self.norm_eps >= F32_TINY:
            bad(f"norm_eps must be a positive normal float32 (>= {F32_TINY:.3g}), found {self.norm_eps}")
        if not self.rope_theta > 0:
            bad(f"rope_theta must be > 0, found {self.rope_theta}")
        for name in ("bos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not (0 <= v < self.vocab_size)):
                bad(f"{name} {v!r} is not a token id in the vocabulary [0, {self.vocab_size})")
        for e in self.eos_ids:
            if isinstance(e, bool) or not isinstance(e, int) or not (0 <= e < self.vocab_size):
                bad(f"eos_token_id {e!r} is not a token id in the vocabulary [0, {self.vocab_size})")

    def replace(self, **changes) -> "LFM2Config":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate("config")
        return cfg
