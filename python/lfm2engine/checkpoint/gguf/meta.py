"""GGUF metadata <-> LFM2Config, for llama.cpp's architectures "lfm2" and "lfm2moe".

Keys as llama.cpp's converter writes them (conversion/lfm2.py, base.py) and its loader reads them
(src/models/lfm2.cpp, lfm2moe.cpp): `{arch}.block_count`, `.embedding_length`,
`.feed_forward_length` (the dense width actually used: HF's auto-adjust is already applied),
`.attention.head_count`, `.attention.head_count_kv` (one value per layer, 0 marks a conv layer),
`.context_length`, `.rope.freq_base`, `.attention.layer_norm_rms_epsilon`, `.shortconv.l_cache`,
`.vocab_size`; for lfm2moe `.expert_count`, `.expert_used_count`, `.expert_feed_forward_length`,
`.leading_dense_block_count`, `.expert_gating_func` (2 = sigmoid, the only one LFM2-MoE uses),
`.expert_weights_norm` / `.expert_weights_scale` (llama.cpp always normalizes LFM2-MoE's top-k and
reads no scale: absent means true / 1.0). Token ids: `tokenizer.ggml.{bos,eos,padding}_token_id`.
Tied embeddings: no `output.weight` tensor; the expert bias: an `exp_probs_b.bias` tensor.
A value the engine cannot represent is a ConfigError naming the key.
"""

from __future__ import annotations

from ...config import ATTENTION, CONV, LFM2Config
from ...errors import ConfigError
from .layout import ARCH_OF, ARCHS

SIGMOID = 2  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID (gguf.ExpertGatingFuncType.SIGMOID)
GATING_NAMES = {0: "none", 1: "softmax", 2: "sigmoid", 3: "softmax_weight", 4: "sqrtsoftplus"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def config_from_meta(meta: dict, tensor_shapes: dict[str, tuple[int, ...]], source: str) -> LFM2Config:
    """LFM2Config of a GGUF file from its metadata and {tensor name: NumPy shape}."""
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise ConfigError(f"{source}: general.architecture is {arch!r}; lfm2engine reads "
                          f"{', '.join(map(repr, ARCHS))} GGUF files")
    moe = ARCHS[arch] == "lfm2_moe"

    def key(k):
        return f"{arch}.{k}"

    def get(k, default=None, *, required=True, minimum=1):
        full = key(k)
        if full not in meta:
            if required:
                raise ConfigError(f"{source}: missing metadata key {full!r}")
            return default
        v = meta[full]
        if isinstance(v, list):  # llama.cpp accepts a per-layer array where every layer has the same value
            vals = set(v)
            if len(vals) != 1 or not all(_is_int(x) for x in v):
                raise ConfigError(f"{source}: {full} must be one integer (or the same for every layer), "
                                  f"found {_short(v)}")
            v = v[0]
        if not _is_int(v) or v < minimum:
            raise ConfigError(f"{source}: {full} must be an integer >= {minimum}, found {v!r}")
        return v

    def num(k, default):
        full = key(k)
        v = meta.get(full, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{source}: {full} must be a number, found {v!r}")
        return float(v)

    n_layers = get("block_count")
    hidden = get("embedding_length")
    n_heads = get("attention.head_count")
    kv_key = key("attention.head_count_kv")
    kv = meta.get(kv_key, n_heads)
    if _is_int(kv):
        kv = [kv] * n_layers
    if not (isinstance(kv, list) and len(kv) == n_layers and all(_is_int(x) and x >= 0 for x in kv)):
        raise ConfigError(f"{source}: {kv_key} must list {n_layers} non-negative integers (0 marks a conv layer), "
                          f"found {_short(kv)}")
    n_kv = sorted({x for x in kv if x})
    if len(n_kv) > 1:
        raise ConfigError(f"{source}: {kv_key} gives attention layers different KV head counts {n_kv}; "
                          "LFM2 has one count for all")
    for k in ("rope.scaling.type", "attention.sliding_window"):
        v = meta.get(key(k))
        if v not in (None, "none", 0):
            raise ConfigError(f"{source}: {key(k)} = {v!r} is not supported (plain RoPE, full attention only)")
    if meta.get(key("attention.causal"), True) is not True:
        raise ConfigError(f"{source}: {key('attention.causal')} = {meta[key('attention.causal')]!r}: "
                          "only causal LFM2 models are supported")
    head_dim = hidden // n_heads if hidden % n_heads == 0 else None
    for k in ("attention.key_length", "attention.value_length"):
        v = meta.get(key(k))
        if v is not None and v != head_dim:
            raise ConfigError(f"{source}: {key(k)} = {v!r} differs from embedding_length / head_count = {head_dim}")

    emb = tensor_shapes.get("token_embd.weight")
    vocab = meta.get(key("vocab_size"))
    if vocab is None:
        toks = meta.get("tokenizer.ggml.tokens")
        vocab = len(toks) if isinstance(toks, list) and toks else (emb[0] if emb else None)
    if vocab is None:
        raise ConfigError(f"{source}: no {key('vocab_size')}, token list or token_embd.weight to give the "
                          "vocabulary size")

    d = {
        "model_type": ARCHS[arch],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv[0] if n_kv else n_heads,
        "layer_types": [ATTENTION if x else CONV for x in kv],
        "max_position_embeddings": get("context_length", 128_000, required=False),
        "norm_eps": num("attention.layer_norm_rms_epsilon", None) if key("attention.layer_norm_rms_epsilon") in meta
        else _missing(source, key("attention.layer_norm_rms_epsilon")),
        "rope_parameters": {"rope_type": "default", "rope_theta": num("rope.freq_base", 10000.0)},
        "conv_L_cache": get("shortconv.l_cache"),
        "conv_bias": False,
        "tie_word_embeddings": "output.weight" not in tensor_shapes,
        "bos_token_id": _token_id(meta, "bos", source),
        "eos_token_id": _token_id(meta, "eos", source),
        "pad_token_id": _token_id(meta, "padding", source),
    }
    if moe:
        gating = meta.get(key("expert_gating_func"))
        if gating != SIGMOID:
            raise ConfigError(f"{source}: {key('expert_gating_func')} is "
                              f"{GATING_NAMES.get(gating, gating) if _is_int(gating) else repr(gating)}; "
                              "LFM2-MoE routes with sigmoid (2), the only gating the engine runs")
        norm = meta.get(key("expert_weights_norm"), True)
        if not isinstance(norm, bool):
            raise ConfigError(f"{source}: {key('expert_weights_norm')} must be a bool, found {norm!r}")
        scale = num("expert_weights_scale", 0.0)
        n_dense = get("leading_dense_block_count", 0, required=False, minimum=0)
        d.update(
            moe_intermediate_size=get("expert_feed_forward_length"),
            num_experts=get("expert_count"),
            num_experts_per_tok=get("expert_used_count"),
            num_dense_layers=n_dense,
            use_expert_bias=any(n.endswith("exp_probs_b.bias") for n in tensor_shapes),
            routed_scaling_factor=scale if scale != 0.0 else 1.0,
            norm_topk_prob=norm,
            intermediate_size=get("feed_forward_length", 1, required=n_dense > 0),
        )
    else:
        d.update(intermediate_size=get("feed_forward_length"), block_auto_adjust_ff_dim=False)
    return LFM2Config.from_dict(d, source=source)


def _missing(source: str, k: str):
    raise ConfigError(f"{source}: missing metadata key {k!r}")


def _token_id(meta: dict, which: str, source: str):
    k = f"tokenizer.ggml.{which}_token_id"
    v = meta.get(k)
    if v is not None and not _is_int(v):
        raise ConfigError(f"{source}: {k} must be an integer, found {v!r}")
    return v


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def meta_from_config(cfg: LFM2Config) -> dict[str, tuple[str, object]]:
    """{key: (kind, value)} that llama.cpp needs to load `cfg` (kind: u32, f32, bool, str, u32[])."""
    arch = ARCH_OF[cfg.model_type]
    k = lambda s: f"{arch}.{s}"  # noqa: E731
    m: dict[str, tuple[str, object]] = {
        "general.architecture": ("str", arch),
        k("block_count"): ("u32", cfg.num_hidden_layers),
        k("context_length"): ("u32", cfg.max_position_embeddings),
        k("embedding_length"): ("u32", cfg.hidden_size),
        k("feed_forward_length"): ("u32", cfg.ffn_dim),
        k("attention.head_count"): ("u32", cfg.num_attention_heads),
        k("attention.head_count_kv"): ("u32[]", [cfg.num_key_value_heads if cfg.is_attention_layer(i) else 0
                                                 for i in range(cfg.num_hidden_layers)]),
        k("rope.freq_base"): ("f32", cfg.rope_theta),
        k("attention.layer_norm_rms_epsilon"): ("f32", cfg.norm_eps),
        k("vocab_size"): ("u32", cfg.vocab_size),
        k("shortconv.l_cache"): ("u32", cfg.conv_L_cache),
    }
    if cfg.is_moe:
        m.update({
            k("expert_count"): ("u32", cfg.num_experts),
            k("expert_used_count"): ("u32", cfg.num_experts_per_tok),
            k("expert_feed_forward_length"): ("u32", cfg.moe_intermediate_size),
            k("leading_dense_block_count"): ("u32", cfg.num_dense_layers),
            k("expert_gating_func"): ("u32", SIGMOID),
            k("expert_weights_norm"): ("bool", bool(cfg.norm_topk_prob)),
        })
        if cfg.routed_scaling_factor != 1.0:  # llama.cpp does not read it for lfm2moe (see docs/gguf.md)
            m[k("expert_weights_scale")] = ("f32", cfg.routed_scaling_factor)
    for which, v in (("bos", cfg.bos_token_id), ("eos", cfg.eos_ids[0] if cfg.eos_ids else None),
                     ("padding", cfg.pad_token_id)):
        if v is not None:
            m[f"tokenizer.ggml.{which}_token_id"] = ("u32", v)
    return m
