"""lfm2engine.costs: what a model costs to train and to serve, computed exactly from a Hugging Face config.json.

Parameter counts (by part; total and active per token), forward FLOPs and peak memory of a layer and
of the model, training memory, compute-optimal planning under a scaling law (lfm2engine.scaling),
fine-tuning memory (freezing, adapters, LoRA, VeRA), pipeline/ZeRO/communication arithmetic, and
KV-cache and roofline bounds for prefill and decode. It is arithmetic only: nothing is allocated or
timed. Families by `model_type`: llama, lfm2, lfm2_moe, deepseek_v3. The LFM2-8B-A1B numbers must equal
shared/design/MODEL.md §5-6; counts equal transformers' `num_parameters()` (checked in tests/test_costs.py).
CLI: `python -m lfm2engine.costs {model,plan,finetune,parallel,inference,configs} ... [--json]` (docs/costs.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

from . import scaling
from .errors import ConfigError, InputError, LFM2Error

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "configs")
SHIPPED_CONFIGS = ("llama-7b", "deepseek-v3", "lfm2-8b-a1b")
SUPPORTED_MODEL_TYPES = ("llama", "lfm2", "lfm2_moe", "deepseek_v3")

# Adam in mixed precision (ZeRO paper convention): fp32 master weights + momentum + variance.
ADAM_STATE_BYTES = 12

# name -> (memory bandwidth B/s, dense bf16/fp16 tensor-core peak FLOP/s, memory bytes, description);
# NVIDIA datasheets (SXM parts).
DEVICES = {
    "h100": (3.35e12, 989.4e12, 80e9, "H100 SXM5 80 GB: 3.35 TB/s HBM3, 989.4 TFLOP/s dense BF16"),
    "h200": (4.8e12, 989.4e12, 141e9, "H200 SXM 141 GB: 4.8 TB/s HBM3e, 989.4 TFLOP/s dense BF16"),
    "a100": (2.039e12, 312e12, 80e9, "A100 SXM 80 GB: 2.039 TB/s HBM2e, 312 TFLOP/s dense BF16"),
}

# The course's GPU menu for planning: (name, dollars per hour, peak TFLOP/s).
DEFAULT_GPUS = (("A100", 4.0, 312.0), ("V100", 2.5, 125.0), ("T4", 1.0, 65.0))


# ============================================================== input checks


def _int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"{name} must be an integer, found {v!r}")
    if v < minimum:
        raise InputError(f"{name} must be >= {minimum}, found {v}")
    return v


def _num(name: str, v, minimum: float = 0.0, strict: bool = True, maximum: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{name} must be a finite number, found {v!r}")
    if (v <= minimum) if strict else (v < minimum):
        raise InputError(f"{name} must be {'>' if strict else '>='} {minimum:g}, found {v!r}")
    if maximum is not None and v > maximum:
        raise InputError(f"{name} must be <= {maximum:g}, found {v!r}")
    return float(v)


# ============================================================== config loading


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
    if os.path.isdir(p):
        p = os.path.join(p, "config.json")
    elif not os.path.exists(p):
        if p.lower().replace("_", "-") in SHIPPED_CONFIGS:
            p = shipped_config_path(p)
        else:
            raise ConfigError(
                f"{p}: no such file or directory, and not a shipped config name "
                f"({', '.join(SHIPPED_CONFIGS)})"
            )
    if not os.path.isfile(p):
        raise ConfigError(f"{p}: config.json not found")
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a JSON object, found {type(d).__name__}")
    return d, p


# ============================================================== architecture description
# One normalized description for every family: a list of layers, each a token mixer plus an FFN.


@dataclass(frozen=True)
class Attention:
    """Multi-head / grouped-query softmax attention with RoPE (no learned position table)."""

    heads: int
    kv_heads: int
    head_dim: int
    qk_norm: bool = False  # LFM2: a [head_dim] RMSNorm weight each for q and k
    bias: bool = False  # Llama attention_bias: biases on q, k, v and o
    kind = "attention"


@dataclass(frozen=True)
class MLA:
    """DeepSeek multi-head latent attention: low-rank q (optional) and a shared kv latent plus a rope key."""

    heads: int
    q_lora_rank: int  # 0: plain q_proj
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    bias: bool = False  # attention_bias: biases on q_a_proj, kv_a_proj_with_mqa and o_proj
    kind = "mla"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class ShortConv:
    """LFM2 gated short convolution: in_proj to (B, C, x), depthwise causal conv of B*x, C gate, out_proj."""

    kernel: int  # conv_L_cache
    bias: bool = False
    kind = "conv"


@dataclass(frozen=True)
class DenseMLP:
    """SwiGLU MLP: gate and up [F, D], down [D, F]."""

    width: int
    bias: bool = False
    kind = "dense"


@dataclass(frozen=True)
class MoE:
    """Routed SwiGLU experts (top-k of E) plus optional always-on shared experts (one fused SwiGLU)."""

    experts: int
    top_k: int
    width: int
    shared_width: int = 0  # n_shared_experts * moe_intermediate_size (DeepSeek); 0: none
    router_bias_buffer: bool = False  # expert_bias / e_score_correction_bias: a buffer, not a parameter
    kind = "moe"


@dataclass(frozen=True)
class Layer:
    mixer: Attention | MLA | ShortConv
    ffn: DenseMLP | MoE

    @property
    def kind(self) -> str:
        return f"{self.mixer.kind}+{self.ffn.kind}"


@dataclass(frozen=True)
class Arch:
    name: str
    model_type: str
    vocab: int
    hidden: int
    layers: tuple[Layer, ...]
    tied: bool
    max_position_embeddings: int | None
    source: str
    mtp_layers: int = 0  # DeepSeek multi-token-prediction modules: reported, never counted in the total

    @property
    def n_layers(self) -> int:
        return len(self.layers)


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

    def bool(self, key: str, default: bool, aliases: tuple[str, ...] = ()) -> bool:
        for k in (*aliases, key):  # aliases first: HF lets the legacy key win (tie_embedding)
            v = self.d.get(k)
            if v is not None:
                if not isinstance(v, bool):
                    raise self.error(f"{k} must be true or false, found {v!r}")
                return v
        return default


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
    if mt == "llama":
        layers, tied = _parse_llama(r, hidden, heads, n_layers), r.bool("tie_word_embeddings", False)
        mtp = 0
    elif mt in ("lfm2", "lfm2_moe"):
        layers = _parse_lfm2(r, mt, hidden, heads, n_layers)
        tied = r.bool("tie_word_embeddings", True, aliases=("tie_embedding",))
        mtp = 0
    else:
        layers, tied = _parse_deepseek(r, hidden, heads, n_layers), r.bool("tie_word_embeddings", False)
        mtp = r.int("num_nextn_predict_layers", default=0, minimum=0)
    return Arch(_name_of(d, source), mt, vocab, hidden, tuple(layers), tied, max_pos, source, mtp)


def _head_dim(r: _Reader, hidden: int, heads: int) -> int:
    hd = r.int("head_dim", default=None)
    if hd is None:
        if hidden % heads:
            raise r.error(f"hidden_size {hidden} is not divisible by num_attention_heads {heads} "
                          "and no head_dim is given")
        hd = hidden // heads
    return hd


def _kv_heads(r: _Reader, heads: int) -> int:
    kv = r.int("num_key_value_heads", default=heads)
    if heads % kv:
        raise r.error(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    return kv


def _parse_llama(r: _Reader, hidden: int, heads: int, n_layers: int) -> list[Layer]:
    att = Attention(heads, _kv_heads(r, heads), _head_dim(r, hidden, heads), bias=r.bool("attention_bias", False))
    mlp = DenseMLP(r.int("intermediate_size"), bias=r.bool("mlp_bias", False))
    return [Layer(att, mlp)] * n_layers


def _parse_lfm2(r: _Reader, mt: str, hidden: int, heads: int, n_layers: int) -> list[Layer]:
    d = r.d
    types = d.get("layer_types")
    if types is None:
        idxs = d.get("full_attn_idxs")
        if idxs is None:
            raise r.error("missing required key 'layer_types' (or the legacy 'full_attn_idxs')")
        if not isinstance(idxs, list) or not all(isinstance(i, int) and 0 <= i < n_layers for i in idxs):
            raise r.error(f"full_attn_idxs must list layer indices in [0, {n_layers}), found {idxs!r}")
        types = ["full_attention" if i in idxs else "conv" for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers:
        raise r.error(f"layer_types must list num_hidden_layers = {n_layers} entries, found {types!r:.80}")
    bad = sorted({str(t) for t in types if t not in ("full_attention", "conv")})
    if bad:
        raise r.error(f"unknown layer type(s) {bad} in layer_types; expected 'full_attention' or 'conv'")
    att = Attention(heads, _kv_heads(r, heads), _head_dim(r, hidden, heads), qk_norm=True)
    conv = ShortConv(r.int("conv_L_cache", default=3), bias=r.bool("conv_bias", False))
    if mt == "lfm2":
        width = r.int("intermediate_size", aliases=("block_ff_dim",))
        if r.bool("block_auto_adjust_ff_dim", True):  # HF Lfm2MLP's width rule
            width = int(2 * width / 3)
            mult = d.get("block_ffn_dim_multiplier", 1.0)
            if mult is not None:
                m = r.int("block_multiple_of", default=256)
                width = int(mult * width)
                width = m * ((width + m - 1) // m)
            if width < 1:
                raise r.error(f"the dense FFN width computes to {width}")
        ffns = [DenseMLP(width)] * n_layers
    else:
        n_dense = r.int("num_dense_layers", minimum=0)
        if n_dense > n_layers:
            raise r.error(f"num_dense_layers {n_dense} exceeds num_hidden_layers {n_layers}")
        experts = r.int("num_experts")
        top_k = r.int("num_experts_per_tok")
        if top_k > experts:
            raise r.error(f"num_experts_per_tok {top_k} exceeds num_experts {experts}")
        moe = MoE(experts, top_k, r.int("moe_intermediate_size"), 0, r.bool("use_expert_bias", True))
        dense = DenseMLP(r.int("intermediate_size")) if n_dense else None
        ffns = [dense if i < n_dense else moe for i in range(n_layers)]
    return [Layer(att if t == "full_attention" else conv, f) for t, f in zip(types, ffns, strict=True)]


def _parse_deepseek(r: _Reader, hidden: int, heads: int, n_layers: int) -> list[Layer]:
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


# ============================================================== per-layer accounting
# Every component reports, per token: parameters (all / used), matmul multiply-adds, activations.


def _mixer_parts(m, hidden: int) -> dict[str, tuple[int, int, int]]:
    """{group: (params, active params, matmul MACs per token)} of a token mixer (norms excluded)."""
    D = hidden
    if isinstance(m, Attention):
        q, kv = m.heads * m.head_dim, m.kv_heads * m.head_dim
        w = D * q + 2 * D * kv + q * D  # q_proj, k_proj, v_proj, o_proj
        extra = (q + 2 * kv + D if m.bias else 0) + (2 * m.head_dim if m.qk_norm else 0)
        return {"attention": (w + extra, w + extra, w)}
    if isinstance(m, MLA):
        H = m.heads
        if m.q_lora_rank:
            wq = D * m.q_lora_rank + m.q_lora_rank * H * m.qk_head_dim  # q_a_proj, q_b_proj
            nq = m.q_lora_rank  # q_a_layernorm
        else:
            wq, nq = D * H * m.qk_head_dim, 0
        wkv = D * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * H * (m.qk_nope_head_dim + m.v_head_dim)
        wo = H * m.v_head_dim * D
        b = (m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim + D) if m.bias else 0
        w = wq + wkv + wo
        p = w + nq + m.kv_lora_rank + b  # + kv_a_layernorm
        return {"attention": (p, p, w)}
    # ShortConv: in_proj [3D, D], conv weight [D, 1, L], out_proj [D, D]; the taps are MACs too.
    w = 3 * D * D + D * D
    taps = D * m.kernel
    b = 5 * D if m.bias else 0
    return {"conv": (w + taps + b, w + taps + b, w + taps)}


def _ffn_parts(f, hidden: int) -> dict[str, tuple[int, int, int]]:
    D = hidden
    if isinstance(f, DenseMLP):
        w = 3 * D * f.width
        b = 2 * f.width + D if f.bias else 0
        return {"mlp": (w + b, w + b, w)}
    one = 3 * D * f.width
    parts = {
        "experts_routed": (f.experts * one, f.top_k * one, f.top_k * one),
        "router": (f.experts * D, f.experts * D, f.experts * D),
    }
    if f.shared_width:
        s = 3 * D * f.shared_width
        parts["experts_shared"] = (s, s, s)
    return parts


def layer_parts(layer: Layer, hidden: int) -> dict[str, tuple[int, int, int]]:
    """{group: (params, active params, MACs per token)} for one layer, its two RMSNorms under 'norms'."""
    parts = {"norms": (2 * hidden, 2 * hidden, 0)}
    parts.update(_mixer_parts(layer.mixer, hidden))
    parts.update(_ffn_parts(layer.ffn, hidden))
    return parts


def layer_params(layer: Layer, hidden: int) -> int:
    return sum(p for p, _, _ in layer_parts(layer, hidden).values())


def _attention_flops(m, batch: int, seq: int, causal: bool) -> tuple[int, int]:
    """(QK^T FLOPs, PV FLOPs) of B sequences of S tokens attending to each other (naive MLA form)."""
    pairs = batch * (seq * (seq + 1) // 2 if causal else seq * seq)  # (query, key) pairs computed
    if isinstance(m, Attention):
        return 2 * m.heads * m.head_dim * pairs, 2 * m.heads * m.head_dim * pairs
    if isinstance(m, MLA):
        return 2 * m.heads * m.qk_head_dim * pairs, 2 * m.heads * m.v_head_dim * pairs
    return 0, 0


def layer_forward_flops(layer: Layer, hidden: int, batch: int, seq: int, causal: bool = False) -> dict[str, int]:
    """FLOPs of one layer's forward over B x S tokens, by group (2 per multiply-add)."""
    tokens = batch * seq
    out = {g: 2 * tokens * macs for g, (_, _, macs) in layer_parts(layer, hidden).items() if macs}
    qk, av = _attention_flops(layer.mixer, batch, seq, causal)
    if qk:
        out["attention_scores"] = qk
        out["attention_values"] = av
    out["total"] = sum(out.values())
    return out


def _mixer_acts(m, D: int, S: int) -> dict[str, int]:
    """Activation elements per token kept by the mixer (S enters through the score matrices)."""
    if isinstance(m, Attention):
        q, kv = m.heads * m.head_dim, m.kv_heads * m.head_dim
        return {"attn_norm": D, "q": q, "k": kv, "v": kv, "scores": m.heads * S, "probs": m.heads * S,
                "attn_out": q, "o_proj": D, "residual": D}
    if isinstance(m, MLA):
        H = m.heads
        a = {"attn_norm": D}
        if m.q_lora_rank:
            a.update(q_a=m.q_lora_rank, q_a_norm=m.q_lora_rank)
        a.update(q=H * m.qk_head_dim, kv_a=m.kv_lora_rank + m.qk_rope_head_dim, kv_a_norm=m.kv_lora_rank,
                 kv_b=H * (m.qk_nope_head_dim + m.v_head_dim), k=H * m.qk_head_dim,
                 scores=H * S, probs=H * S, attn_out=H * m.v_head_dim, o_proj=D, residual=D)
        return a
    return {"op_norm": D, "in_proj": 3 * D, "bx": D, "conv": D, "c_gate": D, "out_proj": D, "residual": D}


def _ffn_acts(f, D: int) -> dict[str, int]:
    if isinstance(f, DenseMLP):
        return {"ffn_norm": D, "gate": f.width, "up": f.width, "act": f.width, "gated": f.width,
                "down": D, "output": D}
    a = {"ffn_norm": D, "router_logits": f.experts, "router_scores": f.experts,
         "dispatched": f.top_k * D, "expert_hidden": 4 * f.top_k * f.width, "expert_out": f.top_k * D}
    if f.shared_width:
        a.update(shared_hidden=4 * f.shared_width, shared_out=D)
    a.update(combined=D, output=D)
    return a


def layer_activation_elements(layer: Layer, hidden: int, batch: int, seq: int) -> dict[str, int]:
    """Elements of every intermediate tensor one layer's forward produces over B x S tokens.

    Convention: each tensor counted once and none freed before the layer ends (what a checkpointed
    layer holds when it is recomputed for its backward pass); RoPE and the LFM2 q/k norms work in
    place; GQA keys/values are not expanded; the score and probability matrices are materialized
    (no fused/flash attention); the layer's input is not included (it is the checkpoint).
    """
    per_tok = {**_mixer_acts(layer.mixer, hidden, seq), **_ffn_acts(layer.ffn, hidden)}
    return {k: batch * seq * v for k, v in per_tok.items()}


def layer_peak_memory(layer: Layer, hidden: int, batch: int, seq: int, dtype_bytes: int = 2) -> dict[str, int]:
    """Bytes held at the end of one layer's forward with checkpoints at layer boundaries."""
    acts = sum(layer_activation_elements(layer, hidden, batch, seq).values())
    out = {
        "weights": layer_params(layer, hidden) * dtype_bytes,
        "input": batch * seq * hidden * dtype_bytes,
        "activations": acts * dtype_bytes,
    }
    out["total"] = sum(out.values())
    return out


# ============================================================== whole-model accounting


def param_breakdown(arch: Arch) -> dict[str, int]:
    """Parameters by part, total, active per token (two conventions), buffers and excluded MTP weights.

    params_active: parameters that enter the per-token computation: every dense weight, the top-k
    routed experts and the shared experts, the head; the input-embedding table only when tied to the
    head (a lookup reads one row of an untied table). params_active_with_embedding also counts an
    untied input table in full. Router-bias buffers (expert_bias, e_score_correction_bias) are buffers
    in transformers and are reported apart.
    """
    V, D = arch.vocab, arch.hidden
    groups = ["embedding", "positional_embedding", "attention", "conv", "mlp", "experts_routed",
              "experts_shared", "router", "norms", "head"]
    total = dict.fromkeys(groups, 0)
    active = dict.fromkeys(groups, 0)
    total["embedding"] = V * D
    active["embedding"] = V * D if arch.tied else 0
    total["head"] = active["head"] = 0 if arch.tied else V * D
    total["norms"] = active["norms"] = D  # final norm
    buffers = 0
    for layer in arch.layers:
        for g, (p, a, _) in layer_parts(layer, D).items():
            total[g] += p
            active[g] += a
        if isinstance(layer.ffn, MoE) and layer.ffn.router_bias_buffer:
            buffers += layer.ffn.experts
    out = dict(total)
    out["total"] = sum(total.values())
    out["active"] = sum(active.values())
    out["active_with_embedding"] = out["active"] + (0 if arch.tied else V * D)
    out["active_by_part"] = active
    out["buffers_not_counted"] = buffers
    if arch.mtp_layers:
        # Each DeepSeek MTP module: one MoE decoder layer, enorm + hnorm, eh_proj [D, 2D], a final norm.
        moe_layer = next((lyr for lyr in arch.layers if isinstance(lyr.ffn, MoE)), arch.layers[-1])
        out["mtp_excluded"] = arch.mtp_layers * (layer_params(moe_layer, D) + 3 * D + 2 * D * D)
    return out


def _head_macs(arch: Arch) -> int:
    return arch.vocab * arch.hidden


def model_forward_flops(arch: Arch, batch: int, seq: int, causal: bool = False) -> dict[str, int]:
    """Whole-model forward FLOPs over B x S tokens, by group; the head is the [D, V] projection."""
    out: dict[str, int] = {}
    for layer in arch.layers:
        for g, v in layer_forward_flops(layer, arch.hidden, batch, seq, causal).items():
            if g != "total":
                out[g] = out.get(g, 0) + v
    out["head"] = 2 * batch * seq * _head_macs(arch)
    out["total"] = sum(out.values())
    return out


def _pick_layer(arch: Arch, batch: int, seq: int, layer: int | None, causal: bool = False) -> int:
    if layer is not None:
        _int("layer", layer, minimum=0)
        if layer >= arch.n_layers:
            raise InputError(f"layer {layer} is out of range: {arch.name} has layers 0..{arch.n_layers - 1}")
        return layer
    flops = [layer_forward_flops(lyr, arch.hidden, batch, seq, causal)["total"] for lyr in arch.layers]
    return flops.index(max(flops))


def _seq_default(arch: Arch, seq: int | None) -> int:
    if seq is None:
        if arch.max_position_embeddings is None:
            raise InputError(f"{arch.source}: no max_position_embeddings in the config; give a sequence length")
        return arch.max_position_embeddings
    return _int("seq", seq)


def training_memory(arch: Arch, batch: int, seq: int, dtype_bytes: int = 2, optimizer: str = "adam") -> dict:
    """Bytes to train with checkpoints at layer boundaries: weights, grads, optimizer states, activations."""
    if optimizer not in ("adam", "sgd"):
        raise InputError(f"optimizer must be 'adam' or 'sgd', found {optimizer!r}")
    n = param_breakdown(arch)["total"]
    D = arch.hidden
    worst = max(sum(layer_activation_elements(lyr, D, batch, seq).values()) for lyr in arch.layers)
    out = {
        "weights": n * dtype_bytes,
        "gradients": n * dtype_bytes,
        "optimizer_states": n * ADAM_STATE_BYTES if optimizer == "adam" else 0,
        "checkpoints": arch.n_layers * batch * seq * D * dtype_bytes,
        "recompute_peak": worst * dtype_bytes,
        "head_activations": batch * seq * (D + arch.vocab) * dtype_bytes,
    }
    out["total"] = sum(out.values())
    return out


def model_cost(config, *, batch: int = 1, seq: int | None = None, layer: int | None = None,
               dtype_bytes: int = 2, optimizer: str = "adam", causal: bool = False) -> dict:
    """Parameter counts, layer and model forward FLOPs, layer peak memory and training memory.

    Defaults follow the course: batch 1, seq = max_position_embeddings, fp16 (2 bytes). `layer`
    defaults to the layer with the largest forward FLOPs (the first on ties). causal=True counts
    only the S (S + 1) / 2 causal (query, key) pairs in attention instead of all S^2.
    """
    arch = parse_config(config)
    batch = _int("batch", batch)
    seq = _seq_default(arch, seq)
    dtype_bytes = _int("dtype_bytes", dtype_bytes)
    li = _pick_layer(arch, batch, seq, layer, causal)
    D = arch.hidden
    pb = param_breakdown(arch)
    chosen = arch.layers[li]
    lf = layer_forward_flops(chosen, D, batch, seq, causal)
    lm = layer_peak_memory(chosen, D, batch, seq, dtype_bytes)
    kinds: dict[str, dict] = {}
    for i, lyr in enumerate(arch.layers):
        k = kinds.get(lyr.kind)
        if k is None:
            kinds[lyr.kind] = {
                "kind": lyr.kind, "count": 1, "indices": [i],
                "params": layer_params(lyr, D),
                "active_params": sum(a for _, a, _ in layer_parts(lyr, D).values()),
                "forward_flops": layer_forward_flops(lyr, D, batch, seq, causal)["total"],
                "peak_memory_bytes": layer_peak_memory(lyr, D, batch, seq, dtype_bytes)["total"],
            }
        else:
            k["count"] += 1
            k["indices"].append(i)
    mf = model_forward_flops(arch, batch, seq, causal)
    breakdown = {k: v for k, v in pb.items() if k not in ("total", "active", "active_with_embedding")}
    return {
        "name": arch.name,
        "model_type": arch.model_type,
        "source": arch.source,
        "batch": batch,
        "seq": seq,
        "dtype_bytes": dtype_bytes,
        "causal": causal,
        "params_total": pb["total"],
        "params_active": pb["active"],
        "params_active_with_embedding": pb["active_with_embedding"],
        "params": breakdown,
        "layer_index": li,
        "layer_kind": chosen.kind,
        "layer_params": layer_params(chosen, D),
        "layer_forward_flops": lf["total"],
        "layer_forward_flops_breakdown": lf,
        "layer_peak_memory_bytes": lm["total"],
        "layer_peak_memory_breakdown": lm,
        "layers": list(kinds.values()),
        "forward_flops": mf["total"],
        "forward_flops_breakdown": mf,
        "forward_flops_per_token": mf["total"] // (batch * seq),
        "train_flops": 3 * mf["total"],
        "train_flops_with_recompute": 4 * mf["total"],
        "training_memory_bytes": training_memory(arch, batch, seq, dtype_bytes, optimizer),
        "optimizer": optimizer,
        "assumptions": [
            "FLOPs: 2 per multiply-add; counted: every linear layer, the MoE router, the depthwise conv taps, "
            f"attention QK^T and PV over {'the S(S+1)/2 causal' if causal else 'all S x S'} (query, key) pairs, "
            "the LM head; not counted: "
            "norms, softmax, activations, gates, RoPE, residual adds, the embedding gather.",
            "MoE: each token runs its top-k routed experts plus any shared experts; the FLOP total does not "
            "depend on how tokens spread over the experts.",
            "Layer peak memory: the layer's weights (all experts) + its input (the checkpoint) + every intermediate "
            "tensor of its forward, none freed, scores and probabilities materialized (no flash attention), "
            f"{dtype_bytes} bytes per element.",
            "Training memory: weights and gradients at dtype_bytes, Adam states 12 B/param (fp32 master, m, v) or "
            "none for plain SGD, layer-boundary checkpoints, the worst layer's recompute, final norm + logits.",
            "train_flops = 3 x forward (backward = 2 x forward); with recompute, 4 x forward.",
        ],
    }


# ============================================================== compute-optimal planning


def parse_gpu(text: str) -> tuple[str, float, float]:
    """'NAME:DOLLARS_PER_HOUR:TFLOPS' -> (name, $/h, peak TFLOP/s)."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise InputError(f"GPU option {text!r} must look like NAME:DOLLARS_PER_HOUR:TFLOPS, e.g. A100:4.0:312")
    try:
        cost, tf = float(parts[1]), float(parts[2])
    except ValueError:
        raise InputError(f"GPU option {text!r}: cost and TFLOP/s must be numbers") from None
    return parts[0], cost, tf


def llama_config_for_params(n_target: float, vocab: int = 32000, seq: int = 2048, aspect: float = 128.0,
                            head_dim: int = 128) -> dict:
    """A Llama-style config.json whose parameter count is close to n_target.

    Width d is a multiple of head_dim, SwiGLU width = 8d/3 rounded up to 256, untied head. For each
    d the depth L is the one that best matches n_target; the (d, L) kept minimizes
    |log(params / n_target)| + 0.1 |log((d / L) / aspect)|, i.e. matches the size first and then keeps
    the width/depth ratio near `aspect` (LLaMA-7B: 4096 / 32 = 128).
    """
    n_target = _num("N", n_target)
    vocab, seq, head_dim = _int("vocab", vocab), _int("seq", seq), _int("head_dim", head_dim)

    def build(d: int, n_layers: int) -> dict:
        width = 256 * math.ceil(8 * d / 3 / 256)
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
                "intermediate_size": width, "num_attention_heads": d // head_dim,
                "num_key_value_heads": d // head_dim, "num_hidden_layers": n_layers, "vocab_size": vocab,
                "max_position_embeddings": seq, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
                "hidden_act": "silu", "torch_dtype": "bfloat16"}

    # A layer holds about 12 d^2 parameters and L = d / aspect, so N ~ 12 d^3 / aspect: search around that d.
    d0 = (n_target * aspect / 12.0) ** (1.0 / 3.0)
    lo = max(1, math.floor(d0 / 4 / head_dim))
    hi = max(lo, math.ceil(4 * d0 / head_dim))
    best = None
    for d in range(lo * head_dim, hi * head_dim + 1, head_dim):
        width = 256 * math.ceil(8 * d / 3 / 256)
        per_layer = 4 * d * d + 3 * d * width + 2 * d
        fixed = 2 * vocab * d + d
        n_layers = max(1, round((n_target - fixed) / per_layer))
        params = fixed + n_layers * per_layer
        score = abs(math.log(params / n_target)) + 0.1 * abs(math.log(d / n_layers / aspect))
        if best is None or score < best[0]:
            best = (score, d, n_layers)
    return build(best[1], best[2])


def plan(budget: float, *, gpus=None, mfu: float = 0.4, law: scaling.ScalingLaw | None = None,
         vocab: int = 32000, seq: int = 2048) -> dict:
    """Compute-optimal (N, D) for a dollar budget.

    The GPU giving the most effective FLOPs per dollar (peak x MFU x 3600 / price) is chosen, the
    budget becomes C FLOPs, and L(N, D) is minimised under C = 6 N D in closed form, checked by a
    golden-section search. Also emits a Llama-style config whose size is close to N_opt.
    """
    budget = _num("budget (dollars)", budget)
    mfu = _num("mfu", mfu, maximum=1.0)
    law = law or scaling.DEFAULT_LAW
    gpus = list(DEFAULT_GPUS if gpus is None else gpus)
    if not gpus:
        raise InputError("plan needs at least one GPU option")
    options = []
    for g in gpus:
        if isinstance(g, str):
            g = parse_gpu(g)
        name, price, tflops = g
        price = _num(f"{name} price ($/h)", price)
        tflops = _num(f"{name} peak TFLOP/s", tflops)
        per_dollar = tflops * 1e12 * mfu * 3600.0 / price
        options.append({"gpu": name, "dollars_per_hour": price, "peak_tflops": tflops,
                        "effective_flops_per_dollar": per_dollar,
                        "effective_flops": budget * per_dollar, "gpu_hours": budget / price})
    best = max(options, key=lambda o: o["effective_flops_per_dollar"])
    c = best["effective_flops"]
    n, d = scaling.optimal_allocation(c, law)
    n_num, d_num = scaling.optimal_allocation_numeric(c, law)
    cfg = llama_config_for_params(n, vocab=vocab, seq=seq)
    cfg_params = param_breakdown(parse_config(cfg))["total"]
    return {
        "budget": budget,
        "mfu": mfu,
        "gpu": best["gpu"],
        "gpu_hours": best["gpu_hours"],
        "C": c,
        "N": n,
        "D": d,
        "loss": law.loss(n, d),
        "tokens_per_param": d / n,
        "N_numeric": n_num,
        "D_numeric": d_num,
        "loss_numeric": law.loss(n_num, d_num),
        "numeric_rel_diff_N": abs(n_num - n) / n,
        "law": law.to_dict(),
        "options": options,
        "model_config": cfg,
        "model_config_params": cfg_params,
        "model_config_rel_diff": (cfg_params - n) / n,
    }


# ============================================================== fine-tuning memory

# The course's transformer: per layer Q, K, V, O are D x D, the MLP is D x 4D (up) and 4D x D (down).
_FT_SHAPES = {"q": (1, 1), "k": (1, 1), "v": (1, 1), "o": (1, 1), "up": (1, 4), "down": (4, 1)}


def _targets(name: str, targets) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = [t for t in targets.split(",") if t]
    targets = tuple(targets)
    bad = [t for t in targets if t not in _FT_SHAPES]
    if bad or not targets:
        raise InputError(f"{name} must be a non-empty subset of {', '.join(_FT_SHAPES)}, found {list(targets)}")
    if len(set(targets)) != len(targets):
        raise InputError(f"{name} lists a projection twice: {list(targets)}")
    return targets


def finetune_memory(*, hidden: int = 4096, layers: int = 32, top: int = 2, rank: int = 8,
                    lora_targets=("q", "v"), vera_targets=None, adapter_bias: bool = False,
                    dtype_bytes: int = 2) -> dict:
    """Extra parameter bytes and gradient bytes of parameter-efficient fine-tuning, SGD, fp16.

    Model: `layers` layers of Q/K/V/O [D, D] and MLP [D, 4D], [4D, D] (12 D^2 per layer, no biases,
    norms or embeddings). Plain SGD keeps no optimizer state, so memory beyond the frozen model is
    extra parameters + gradients of what is trained. Methods: full, freeze (train the top `top`
    layers), adapter (two per layer: D->R->D, optional biases), lora (A [R, d_in], B [d_out, R] per
    target), vera (trainable d [R] and b [d_out] per target; frozen random A [R, max d_in] and
    B [max d_out, R] shared by all layers, counted as stored extra parameters).
    """
    D, L = _int("hidden", hidden), _int("layers", layers)
    top, R = _int("top", top, minimum=0), _int("rank", rank)
    if top > L:
        raise InputError(f"top {top} exceeds the number of layers {L}")
    dtype_bytes = _int("dtype_bytes", dtype_bytes)
    lora_t = _targets("lora_targets", lora_targets)
    vera_t = _targets("vera_targets", lora_t if vera_targets is None else vera_targets)
    per_layer = sum(a * b for a, b in _FT_SHAPES.values()) * D * D  # 12 D^2

    def row(trainable: int, extra: int) -> dict:
        return {"trainable_params": trainable, "extra_params": extra,
                "extra_param_bytes": extra * dtype_bytes, "grad_bytes": trainable * dtype_bytes,
                "total_bytes": (extra + trainable) * dtype_bytes}

    adapter = 2 * (2 * D * R + ((R + D) if adapter_bias else 0)) * L
    lora = L * sum(R * (a * D + b * D) for t, (a, b) in _FT_SHAPES.items() if t in lora_t)
    vera_train = L * sum(R + b * D for t, (a, b) in _FT_SHAPES.items() if t in vera_t)
    vera_shared = R * max(_FT_SHAPES[t][0] for t in vera_t) * D + max(_FT_SHAPES[t][1] for t in vera_t) * D * R
    return {
        "hidden": D, "layers": L, "top": top, "rank": R, "dtype_bytes": dtype_bytes,
        "lora_targets": list(lora_t), "vera_targets": list(vera_t), "adapter_bias": adapter_bias,
        "base_params": per_layer * L,
        "base_param_bytes": per_layer * L * dtype_bytes,
        "methods": {
            "full": row(per_layer * L, 0),
            "freeze": row(per_layer * top, 0),
            "adapter": row(adapter, adapter),
            "lora": row(lora, lora),
            "vera": {**row(vera_train, vera_train + vera_shared), "shared_frozen_params": vera_shared},
        },
    }


# ============================================================== parallelism


def bubble_fraction(stages: int, microbatches: int) -> float:
    """Idle fraction of a synchronous pipeline, (K-1)/(M+K-1): the same for GPipe and 1F1B."""
    k, m = _int("stages", stages), _int("microbatches", microbatches)
    return (k - 1) / (m + k - 1)


def zero_memory_per_device(params: int, dp: int, stage: int, dtype_bytes: int = 2,
                           optimizer_bytes: int = ADAM_STATE_BYTES) -> int:
    """Bytes of model states per data-parallel device under ZeRO stage 0..3 (Rajbhandari et al. 2020).

    Weights and gradients take dtype_bytes per parameter, optimizer states optimizer_bytes (12 for
    Adam: fp32 master, m, v). Stage 1 shards optimizer states, 2 also gradients, 3 also weights.
    """
    p, n = _int("params", params), _int("dp", dp)
    stage = _int("stage", stage, minimum=0)
    if stage > 3:
        raise InputError(f"ZeRO stage must be 0, 1, 2 or 3, found {stage}")
    w = g = p * dtype_bytes
    o = p * _int("optimizer_bytes", optimizer_bytes, minimum=0)
    if stage >= 1:
        o /= n
    if stage >= 2:
        g /= n
    if stage >= 3:
        w /= n
    return round(w + g + o)


def parallel_cost(config, *, dp: int = 8, tp: int = 8, pp: int = 4, ep: int = 8, microbatches: int = 8,
                  micro_batch: int = 1, seq: int | None = None, dtype_bytes: int = 2) -> dict:
    """Pipeline bubble, ZeRO memory and per-step communication of each parallelism, each taken alone.

    A training step processes `microbatches` x `micro_batch` sequences of `seq` tokens per data
    replica. Volumes are bytes each device sends per step (ring collectives: an all-reduce of X
    bytes over n devices sends 2 (n-1)/n X, an all-gather or reduce-scatter (n-1)/n X).
    """
    arch = parse_config(config)
    dp, tp, pp, ep = (_int(k, v) for k, v in (("dp", dp), ("tp", tp), ("pp", pp), ("ep", ep)))
    m, b = _int("microbatches", microbatches), _int("micro_batch", micro_batch)
    seq = _seq_default(arch, seq)
    dtype_bytes = _int("dtype_bytes", dtype_bytes)
    psi = param_breakdown(arch)["total"]
    D, L = arch.hidden, arch.n_layers
    tokens = m * b * seq
    act = tokens * D * dtype_bytes  # one [tokens, D] activation
    moe_layers = [lyr.ffn for lyr in arch.layers if isinstance(lyr.ffn, MoE)]
    ep_bytes = sum(4 * tokens * f.top_k * D * dtype_bytes * (ep - 1) / ep for f in moe_layers)
    return {
        "name": arch.name, "params_total": psi, "dp": dp, "tp": tp, "pp": pp, "ep": ep,
        "microbatches": m, "micro_batch": b, "seq": seq, "dtype_bytes": dtype_bytes,
        "pipeline": {
            "stages": pp,
            "bubble_gpipe": bubble_fraction(pp, m),
            "bubble_1f1b": bubble_fraction(pp, m),
            "inflight_microbatches_gpipe": m,
            "inflight_microbatches_1f1b": min(pp, m),
        },
        "zero_bytes_per_device": {f"stage{s}": zero_memory_per_device(psi, dp, s, dtype_bytes) for s in range(4)},
        "comm_bytes_per_device_per_step": {
            "dp_allreduce": 2 * (dp - 1) / dp * psi * dtype_bytes,
            "zero3": 3 * (dp - 1) / dp * psi * dtype_bytes,
            "tp_megatron": 8 * (tp - 1) / tp * L * act,
            "sp_megatron": 8 * (tp - 1) / tp * L * act,
            "ep_alltoall": ep_bytes,
            "pp_p2p": 2 * act if pp > 1 else 0,
        },
        "assumptions": [
            "dp: one ring all-reduce of the fp16 gradients per step (ZeRO-1/2 move the same volume as "
            "reduce-scatter + all-gather; ZeRO-3 adds a second weight all-gather: 3x instead of 2x).",
            "tp (Megatron): 2 all-reduces of the [tokens, D] activation per layer forward and 2 backward; "
            "applies to attention, conv and FFN blocks alike.",
            "sp (Megatron sequence parallel): each all-reduce becomes a reduce-scatter + all-gather: same bytes.",
            "ep: per MoE layer, dispatch and combine all-to-alls forward and backward, each moving top_k x D "
            "values per token, of which (ep-1)/ep leave the device.",
            "pp: an interior stage sends each micro-batch's activation forward and its gradient backward.",
        ],
    }


# ============================================================== inference: state and roofline


def kv_state(arch: Arch, kv_bytes: int = 2) -> dict[str, int]:
    """Decode-time state per sequence: KV cache bytes per token and fixed conv-state bytes."""
    per_tok = 0
    conv = 0
    for lyr in arch.layers:
        m = lyr.mixer
        if isinstance(m, Attention):
            per_tok += 2 * m.kv_heads * m.head_dim
        elif isinstance(m, MLA):
            per_tok += m.kv_lora_rank + m.qk_rope_head_dim  # the cached latent and the shared rope key
        else:
            conv += (m.kernel - 1) * arch.hidden  # the last L-1 values of B*x
    return {"kv_bytes_per_token": per_tok * kv_bytes, "conv_state_bytes": conv * kv_bytes}


def _decode_attention_flops(m, context: int) -> int:
    if isinstance(m, Attention):
        return 4 * m.heads * m.head_dim * context
    if isinstance(m, MLA):  # absorbed form over the latent cache
        return 2 * m.heads * context * (m.kv_lora_rank + m.qk_rope_head_dim) + 2 * m.heads * context * m.kv_lora_rank
    return 0


def _expected_distinct(experts: int, top_k: int, tokens: int) -> float:
    """Expected number of distinct experts hit by `tokens` tokens under uniform routing."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def _weight_bytes_touched(arch: Arch, tokens: int, weight_bytes: int) -> float:
    """Weight bytes read when `tokens` tokens pass through the model once."""
    D = arch.hidden
    routed_active = 0
    distinct = 0.0
    for lyr in arch.layers:
        if isinstance(lyr.ffn, MoE):
            one = 3 * D * lyr.ffn.width
            routed_active += lyr.ffn.top_k * one
            distinct += _expected_distinct(lyr.ffn.experts, lyr.ffn.top_k, tokens) * one
    base = param_breakdown(arch)["active"] - routed_active
    gather = 0 if arch.tied else tokens * D  # rows of an untied input embedding
    return (base + distinct + gather) * weight_bytes


def _matmul_macs_per_token(arch: Arch) -> int:
    return sum(macs for lyr in arch.layers for _, _, macs in layer_parts(lyr, arch.hidden).values()) + _head_macs(arch)


def _bound(flops: float, nbytes: float, tokens: int, bw: float, peak: float) -> dict:
    t_c, t_m = flops / peak, nbytes / bw
    t = max(t_c, t_m)
    return {"flops": flops, "bytes": nbytes, "arithmetic_intensity": flops / nbytes,
            "tokens_per_s_compute_bound": tokens / t_c, "tokens_per_s_memory_bound": tokens / t_m,
            "tokens_per_s": tokens / t, "seconds": t, "limited_by": "compute" if t_c >= t_m else "memory"}


def decode_step(arch: Arch, batch: int, context: int, bw: float, peak: float, weight_bytes: int = 2,
                kv_bytes: int = 2) -> dict:
    """Roofline of one decode step: `batch` sequences each add one token after `context` cached ones."""
    st = kv_state(arch, kv_bytes)
    macs = _matmul_macs_per_token(arch)
    attn = sum(_decode_attention_flops(lyr.mixer, context + 1) for lyr in arch.layers)
    flops = batch * (2 * macs + attn)
    nbytes = (_weight_bytes_touched(arch, batch, weight_bytes)
              + batch * st["kv_bytes_per_token"] * (context + 1)  # read the cache, write the new entry
              + batch * 2 * st["conv_state_bytes"])  # read and write the conv state
    return {"batch": batch, "context": context, **_bound(flops, nbytes, batch, bw, peak)}


def prefill(arch: Arch, batch: int, prompt: int, bw: float, peak: float, weight_bytes: int = 2,
            kv_bytes: int = 2) -> dict:
    """Roofline of prefilling `batch` prompts of `prompt` tokens (causal attention, K/V written once)."""
    st = kv_state(arch, kv_bytes)
    macs = _matmul_macs_per_token(arch)
    tokens = batch * prompt
    attn = sum(sum(_attention_flops(lyr.mixer, batch, prompt, causal=True)) for lyr in arch.layers)
    flops = 2 * macs * tokens + attn
    nbytes = (_weight_bytes_touched(arch, tokens, weight_bytes)
              + tokens * st["kv_bytes_per_token"] + batch * st["conv_state_bytes"])
    return {"batch": batch, "prompt": prompt, **_bound(flops, nbytes, tokens, bw, peak)}


def _device(device: str | None, bandwidth: float | None, peak_flops: float | None,
            memory: float | None) -> tuple[float, float, float | None, str]:
    if device is not None and device not in DEVICES:
        raise InputError(f"unknown device {device!r}; known: {', '.join(DEVICES)} (or give bandwidth and peak)")
    bw, peak, mem, desc = DEVICES[device] if device else (None, None, None, "custom")
    if bandwidth is not None:
        bw = _num("bandwidth (bytes/s)", bandwidth)
        desc = "custom"
    if peak_flops is not None:
        peak = _num("peak FLOP/s", peak_flops)
        desc = "custom"
    if memory is not None:
        mem = _num("device memory (bytes)", memory)
        desc = "custom"
    if bw is None or peak is None:
        raise InputError("give a device name or both a bandwidth and a peak FLOP/s")
    return bw, peak, mem, desc


def inference_cost(config, *, device: str | None = "h100", bandwidth: float | None = None,
                   peak_flops: float | None = None, memory: float | None = None, context: int = 4096,
                   prompt: int = 4096, batch: int = 1,
                   weight_bytes: int = 2, kv_bytes: int = 2, batches=(1, 2, 4, 8, 16, 32, 64, 128, 256)) -> dict:
    """KV-cache / conv-state sizes and roofline-bound tokens/s for prefill and decode on one device.

    Decode reads, per step: the weights the batch touches (non-expert weights once, the expected
    number of distinct experts under uniform routing), every sequence's KV cache and conv state.
    Prefill reads the weights once and writes the cache. Attention in decode uses the cache as
    stored (MLA: absorbed form over the latent). Bounds: tokens / max(FLOPs / peak, bytes / bandwidth).
    Each decode entry also says whether all weights plus the batch's caches fit in device memory
    (`resident_bytes`, `fits`; None when the device memory is unknown): the bound ignores capacity.
    """
    arch = parse_config(config)
    bw, peak, mem, desc = _device(device, bandwidth, peak_flops, memory)
    context, prompt, batch = _int("context", context, minimum=0), _int("prompt", prompt), _int("batch", batch)
    weight_bytes, kv_bytes = _int("weight_bytes", weight_bytes), _int("kv_bytes", kv_bytes)
    batches = [_int("batches entry", x) for x in batches]
    st = kv_state(arch, kv_bytes)
    pb = param_breakdown(arch)
    def fit(entry: dict) -> dict:
        resident = pb["total"] * weight_bytes + entry["batch"] * (
            st["kv_bytes_per_token"] * (context + 1) + st["conv_state_bytes"])
        return {**entry, "resident_bytes": resident, "fits": None if mem is None else resident <= mem}

    dec = fit(decode_step(arch, batch, context, bw, peak, weight_bytes, kv_bytes))
    return {
        "name": arch.name,
        "device": device if desc != "custom" else "custom",
        "device_description": desc,
        "bandwidth_bytes_per_s": bw,
        "peak_flops": peak,
        "memory_bytes": mem,
        "ridge_point_flops_per_byte": peak / bw,
        "weight_bytes": weight_bytes,
        "kv_bytes": kv_bytes,
        "params_total": pb["total"],
        "params_active": pb["active"],
        "weights_total_bytes": pb["total"] * weight_bytes,
        "weights_active_bytes": pb["active"] * weight_bytes,
        "kv_cache_bytes_per_token": st["kv_bytes_per_token"],
        "conv_state_bytes_per_sequence": st["conv_state_bytes"],
        "state_bytes_per_sequence": st["kv_bytes_per_token"] * context + st["conv_state_bytes"],
        "decode_flops_per_token": 2 * _matmul_macs_per_token(arch)
        + sum(_decode_attention_flops(lyr.mixer, context + 1) for lyr in arch.layers),
        "context": context,
        "decode": dec,
        "decode_ms_per_step": dec["seconds"] * 1e3,
        "prefill": prefill(arch, batch, prompt, bw, peak, weight_bytes, kv_bytes),
        "decode_sweep": [fit(decode_step(arch, bb, context, bw, peak, weight_bytes, kv_bytes)) for bb in batches],
        "assumptions": [
            "Bytes: weights at weight_bytes, KV cache and conv state at kv_bytes; activations stay on chip.",
            "MoE: a batch of T tokens touches E (1 - (1 - k/E)^T) distinct experts per layer (uniform routing).",
            "FLOPs: 2 per multiply-add over linear layers, router, conv taps, head, and attention "
            "(prefill: causal pairs only; decode: each new token against context + 1 positions).",
            "Bounds ignore kernel launch, communication and the KV reads of prefill attention; `fits` "
            "compares all weights + the batch's caches with the device memory.",
        ],
    }


# ============================================================== CLI rendering


def _si(x: float, unit: str = "") -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3f} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _count(x: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= factor:
            return f"{x / factor:.2f}{suffix}"
    return f"{x:g}"


def _table(headers: list[str], rows: list[list], indent: str = "  ") -> str:
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        lines.append(indent + "  ".join(padded))
        if j == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_model(r: dict) -> str:
    p = r["params"]
    tot = r["params_total"]
    rows = [[k, f"{v:,}", f"{p['active_by_part'][k]:,}", f"{100 * v / tot:.2f}%"]
            for k, v in p.items() if isinstance(v, int) and k in p["active_by_part"] and v]
    rows.append(["total", f"{tot:,}", f"{r['params_active']:,}", "100.00%"])
    out = [f"{r['name']} ({r['model_type']}) from {r['source']}",
           f"batch {r['batch']}, seq {r['seq']}, {r['dtype_bytes']} bytes/element (decimal units: 1 GB = 1e9 B)", "",
           "parameters", _table(["part", "params", "active/token", "share"], rows)]
    out.append(f"  total {_count(tot)}, active {_count(r['params_active'])} "
               f"({_count(r['params_active_with_embedding'])} counting an untied input embedding)")
    if p.get("buffers_not_counted"):
        out.append(f"  router-bias buffers, not counted: {p['buffers_not_counted']:,}")
    if p.get("mtp_excluded"):
        out.append(f"  multi-token-prediction module, not counted: {p['mtp_excluded']:,}")
    out += ["", "layers", _table(
        ["kind", "count", "params", "fwd FLOPs", "peak memory"],
        [[k["kind"], k["count"], _count(k["params"]), _si(k["forward_flops"], "FLOP"),
          _si(k["peak_memory_bytes"], "B")] for k in r["layers"]])]
    lf, lm = r["layer_forward_flops_breakdown"], r["layer_peak_memory_breakdown"]
    out += ["", f"layer {r['layer_index']} ({r['layer_kind']}): {r['layer_params']:,} params",
            f"  forward {r['layer_forward_flops']:,} FLOPs = "
            + " + ".join(f"{k} {_si(v)}" for k, v in lf.items() if k != "total"),
            f"  peak memory {r['layer_peak_memory_bytes']:,} B ({_si(r['layer_peak_memory_bytes'], 'B')}) = "
            + " + ".join(f"{k} {_si(v, 'B')}" for k, v in lm.items() if k != "total")]
    tm = r["training_memory_bytes"]
    out += ["", f"model forward {r['forward_flops']:,} FLOPs ({_si(r['forward_flops'], 'FLOP')}; "
            f"{_si(r['forward_flops_per_token'], 'FLOP')}/token); train step {_si(r['train_flops'], 'FLOP')} "
            f"({_si(r['train_flops_with_recompute'], 'FLOP')} with recompute)",
            f"training memory ({r['optimizer']}): {_si(tm['total'], 'B')} = "
            + " + ".join(f"{k} {_si(v, 'B')}" for k, v in tm.items() if k != "total"),
            "", "assumptions:"] + [f"  - {a}" for a in r["assumptions"]]
    return "\n".join(out)


def render_plan(r: dict) -> str:
    law = r["law"]
    rows = [[o["gpu"], f"${o['dollars_per_hour']:g}/h", f"{o['peak_tflops']:g}",
             f"{o['effective_flops_per_dollar']:.4g}", f"{o['effective_flops']:.4g}"] for o in r["options"]]
    cfg = r["model_config"]
    return "\n".join([
        f"budget ${r['budget']:,.0f}, MFU {r['mfu']:g}; law L = {law['A']}/N^{law['alpha']} + "
        f"{law['B']}/D^{law['beta']} + {law['E']}",
        _table(["gpu", "price", "TFLOP/s", "FLOPs per $", "FLOPs for budget"], rows),
        f"chosen: {r['gpu']} ({r['gpu_hours']:,.0f} GPU-hours), C = {r['C']:.4g} FLOPs",
        f"N = {r['N']:.4g} parameters, D = {r['D']:.4g} tokens ({r['tokens_per_param']:.1f} tokens/param), "
        f"loss = {r['loss']:.4f}",
        f"numerical check (golden section): N = {r['N_numeric']:.6g} (rel. diff {r['numeric_rel_diff_N']:.1e})",
        f"model config: d={cfg['hidden_size']}, layers={cfg['num_hidden_layers']}, ffn={cfg['intermediate_size']}, "
        f"heads={cfg['num_attention_heads']}, vocab={cfg['vocab_size']}: {r['model_config_params']:,} params "
        f"({100 * r['model_config_rel_diff']:+.2f}% vs N)",
    ])


def render_finetune(r: dict) -> str:
    rows = [[k, f"{m['trainable_params']:,}", f"{m['extra_params']:,}", _si(m["extra_param_bytes"], "B"),
             _si(m["grad_bytes"], "B"), _si(m["total_bytes"], "B")] for k, m in r["methods"].items()]
    return "\n".join([
        f"transformer D={r['hidden']}, {r['layers']} layers (12 D^2 each: {r['base_params']:,} params, "
        f"{_si(r['base_param_bytes'], 'B')}), {r['dtype_bytes']} B/element, SGD; rank {r['rank']}, top {r['top']}, "
        f"LoRA on {','.join(r['lora_targets'])}, VeRA on {','.join(r['vera_targets'])}",
        _table(["method", "trainable", "extra params", "extra bytes", "grad bytes", "total"], rows),
    ])


def render_parallel(r: dict) -> str:
    pp = r["pipeline"]
    z = r["zero_bytes_per_device"]
    c = r["comm_bytes_per_device_per_step"]
    return "\n".join([
        f"{r['name']}: {r['params_total']:,} params; step = {r['microbatches']} x {r['micro_batch']} sequences "
        f"of {r['seq']} tokens, {r['dtype_bytes']} B/element",
        f"pipeline K={pp['stages']}, M={r['microbatches']}: bubble {pp['bubble_gpipe']:.4f} (GPipe and 1F1B); "
        f"micro-batches in flight: GPipe {pp['inflight_microbatches_gpipe']}, 1F1B {pp['inflight_microbatches_1f1b']}",
        f"ZeRO per device (dp={r['dp']}):",
        _table(["stage", "bytes"], [[k, _si(v, "B")] for k, v in z.items()]),
        "communication per device per step:",
        _table(["scheme", "degree", "bytes"],
               [[k, {"dp_allreduce": r["dp"], "zero3": r["dp"], "tp_megatron": r["tp"], "sp_megatron": r["tp"],
                     "ep_alltoall": r["ep"], "pp_p2p": r["pp"]}[k], _si(v, "B")] for k, v in c.items()]),
    ])


def render_inference(r: dict) -> str:
    d, p = r["decode"], r["prefill"]
    rows = [[s["batch"], f"{s['arithmetic_intensity']:.1f}", f"{s['tokens_per_s_compute_bound']:,.0f}",
             f"{s['tokens_per_s_memory_bound']:,.0f}", f"{s['tokens_per_s']:,.0f}", s["limited_by"],
             _si(s["resident_bytes"], "B") + ("" if s["fits"] is None else (" ok" if s["fits"] else " NO"))]
            for s in r["decode_sweep"]]
    return "\n".join([
        f"{r['name']} on {r['device_description']} (ridge {r['ridge_point_flops_per_byte']:.0f} FLOP/B); "
        f"weights {r['weight_bytes']} B, cache {r['kv_bytes']} B per element",
        f"weights: total {_si(r['weights_total_bytes'], 'B')}, active per token {_si(r['weights_active_bytes'], 'B')}",
        f"KV cache {r['kv_cache_bytes_per_token']:,} B/token; conv state {r['conv_state_bytes_per_sequence']:,} "
        f"B/sequence; at context {r['context']}: {_si(r['state_bytes_per_sequence'], 'B')} per sequence",
        f"decode (batch {d['batch']}, context {d['context']}): {_si(r['decode_flops_per_token'], 'FLOP')}/token, "
        f"{_si(d['bytes'], 'B')}/step, AI {d['arithmetic_intensity']:.1f} FLOP/B -> "
        f"{d['tokens_per_s']:,.0f} tok/s ({r['decode_ms_per_step']:.3f} ms/step, {d['limited_by']}-bound)",
        f"prefill (batch {p['batch']}, prompt {p['prompt']}): {_si(p['flops'], 'FLOP')}, {_si(p['bytes'], 'B')}, "
        f"AI {p['arithmetic_intensity']:.0f} FLOP/B -> {p['tokens_per_s']:,.0f} tok/s ({p['limited_by']}-bound)",
        "decode vs batch:",
        _table(["batch", "AI", "tok/s compute", "tok/s memory", "tok/s bound", "limit", "resident / fits"], rows),
    ])


# ============================================================== CLI


def _positive_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise InputError(f"expected comma-separated integers, found {text!r}") from None


def _cmd_model(a) -> dict:
    return model_cost(a.config, batch=a.batch, seq=a.seq, layer=a.layer, dtype_bytes=a.dtype_bytes,
                      optimizer=a.optimizer, causal=a.causal)


def _cmd_plan(a) -> dict:
    law = scaling.ScalingLaw(a.A, a.alpha, a.B, a.beta, a.E)
    r = plan(a.budget, gpus=a.gpu, mfu=a.mfu, law=law, vocab=a.vocab, seq=a.seq)
    if a.config_out:
        tmp = a.config_out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(r["model_config"], f, indent=2)
            f.write("\n")
        os.replace(tmp, a.config_out)
    return r


def _cmd_finetune(a) -> dict:
    return finetune_memory(hidden=a.hidden, layers=a.layers, top=a.top, rank=a.rank, lora_targets=a.lora_targets,
                           vera_targets=a.vera_targets, adapter_bias=a.adapter_bias, dtype_bytes=a.dtype_bytes)


def _cmd_parallel(a) -> dict:
    return parallel_cost(a.config, dp=a.dp, tp=a.tp, pp=a.pp, ep=a.ep, microbatches=a.microbatches,
                         micro_batch=a.micro_batch, seq=a.seq, dtype_bytes=a.dtype_bytes)


def _cmd_inference(a) -> dict:
    return inference_cost(a.config, device=a.device, bandwidth=None if a.bandwidth is None else a.bandwidth * 1e9,
                          peak_flops=None if a.tflops is None else a.tflops * 1e12,
                          memory=None if a.memory is None else a.memory * 1e9, context=a.context,
                          prompt=a.prompt, batch=a.batch, weight_bytes=a.weight_bytes, kv_bytes=a.kv_bytes,
                          batches=_positive_list(a.batches))


def _cmd_configs(a) -> dict:
    out = {}
    for n in SHIPPED_CONFIGS:
        arch = parse_config(n)
        pb = param_breakdown(arch)
        out[n] = {"path": shipped_config_path(n), "model_type": arch.model_type,
                  "params_total": pb["total"], "params_active": pb["active"]}
    return {"configs": out}


def _render_configs(r: dict) -> str:
    return _table(["name", "model_type", "total", "active", "path"],
                  [[k, v["model_type"], _count(v["params_total"]), _count(v["params_active"]), v["path"]]
                   for k, v in r["configs"].items()])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lfm2engine.costs",
        description="Training and inference cost arithmetic from a Hugging Face config.json "
                    "(llama, lfm2, lfm2_moe, deepseek_v3). Every subcommand prints a table, or with --json "
                    "one JSON object on stdout. Errors: one line on stderr, exit code 2. See docs/costs.md.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cfg_help = f"config.json path, a directory holding one, or a shipped name ({', '.join(SHIPPED_CONFIGS)})"
    json_help = "print one JSON object on stdout instead of tables"

    m = sub.add_parser("model", help="parameters, layer/model FLOPs, layer peak memory, training memory",
                       description="Parameter breakdown (total, active per token), forward FLOPs and fp16 peak "
                                   "memory of one layer and of the model, training memory. JSON keys include "
                                   "params_total, params_active, layer_forward_flops, layer_peak_memory_bytes.")
    m.add_argument("config", help=cfg_help)
    m.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
    m.add_argument("--seq", type=int, default=None, help="tokens per sequence (default max_position_embeddings)")
    m.add_argument("--layer", type=int, default=None, help="layer index to detail (default: largest forward FLOPs)")
    m.add_argument("--dtype-bytes", type=int, default=2, help="bytes per weight/activation element (default 2, fp16)")
    m.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="for training memory (default adam)")
    m.add_argument("--causal", action="store_true",
                   help="count only the causal S(S+1)/2 attention pairs (default: all S x S, the course convention)")
    m.add_argument("--json", action="store_true", help=json_help)
    m.set_defaults(func=_cmd_model, render=render_model)

    p = sub.add_parser("plan", help="compute-optimal N and D for a dollar budget",
                       description="Pick the GPU with the most effective FLOPs per dollar, then minimise "
                                   "L(N, D) = A/N^alpha + B/D^beta + E under C = 6 N D. JSON keys include "
                                   "gpu, N, D, loss, C, model_config.")
    p.add_argument("--budget", type=float, required=True, help="dollars")
    p.add_argument("--gpu", action="append", default=None, metavar="NAME:$PER_HOUR:TFLOPS",
                   help="a GPU option (repeat; replaces the defaults A100:4.0:312, V100:2.5:125, T4:1.0:65)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization (default 0.4)")
    d = scaling.DEFAULT_LAW
    p.add_argument("--A", type=float, default=d.A, help=f"law constant A (default {d.A})")
    p.add_argument("--alpha", type=float, default=d.alpha, help=f"law exponent alpha (default {d.alpha})")
    p.add_argument("--B", type=float, default=d.B, help=f"law constant B (default {d.B})")
    p.add_argument("--beta", type=float, default=d.beta, help=f"law exponent beta (default {d.beta})")
    p.add_argument("--E", type=float, default=d.E, help=f"irreducible loss E (default {d.E})")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary of the emitted config (default 32000)")
    p.add_argument("--seq", type=int, default=2048, help="max_position_embeddings of the emitted config (2048)")
    p.add_argument("--config-out", default=None, metavar="PATH", help="also write the emitted config.json here")
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=_cmd_plan, render=render_plan)

    f = sub.add_parser("finetune", help="extra parameter and gradient bytes of freezing/adapters/LoRA/VeRA",
                       description="Memory beyond the frozen model for fine-tuning the course's transformer "
                                   "(Q/K/V/O D x D, MLP D x 4D and 4D x D per layer), fp16, plain SGD.")
    f.add_argument("--hidden", type=int, default=4096, help="D (default 4096)")
    f.add_argument("--layers", type=int, default=32, help="number of layers (default 32)")
    f.add_argument("--top", type=int, default=2, help="freeze: number of top layers trained (default 2)")
    f.add_argument("--rank", type=int, default=8, help="adapter width / LoRA and VeRA rank R (default 8)")
    f.add_argument("--lora-targets", default="q,v", help="comma list from q,k,v,o,up,down (default q,v)")
    f.add_argument("--vera-targets", default=None, help="comma list for VeRA (default: the LoRA targets)")
    f.add_argument("--adapter-bias", action="store_true", help="adapters carry biases (R + D each)")
    f.add_argument("--dtype-bytes", type=int, default=2, help="bytes per element (default 2, fp16)")
    f.add_argument("--json", action="store_true", help=json_help)
    f.set_defaults(func=_cmd_finetune, render=render_finetune)

    q = sub.add_parser("parallel", help="pipeline bubble, ZeRO memory, communication volume per step",
                       description="Each scheme is taken alone at its degree: DP (and ZeRO-3), Megatron TP, "
                                   "Megatron SP, EP all-to-all, PP point-to-point.")
    q.add_argument("config", help=cfg_help)
    for name, default, h in (("dp", 8, "data-parallel degree"), ("tp", 8, "tensor/sequence-parallel degree"),
                             ("pp", 4, "pipeline stages K"), ("ep", 8, "expert-parallel degree"),
                             ("microbatches", 8, "micro-batches per step M"),
                             ("micro-batch", 1, "sequences per micro-batch")):
        q.add_argument(f"--{name}", type=int, default=default, help=f"{h} (default {default})")
    q.add_argument("--seq", type=int, default=None, help="tokens per sequence (default max_position_embeddings)")
    q.add_argument("--dtype-bytes", type=int, default=2, help="bytes per element (default 2)")
    q.add_argument("--json", action="store_true", help=json_help)
    q.set_defaults(func=_cmd_parallel, render=render_parallel)

    i = sub.add_parser("inference", help="KV cache, conv state, roofline tokens/s for prefill and decode",
                       description="Decode and prefill bounds on one device from FLOPs and bytes moved.")
    i.add_argument("config", help=cfg_help)
    i.add_argument("--device", choices=tuple(DEVICES), default="h100", help="device preset (default h100)")
    i.add_argument("--bandwidth", type=float, default=None, help="override: memory bandwidth in GB/s")
    i.add_argument("--tflops", type=float, default=None, help="override: peak TFLOP/s")
    i.add_argument("--memory", type=float, default=None, help="override: device memory in GB")
    i.add_argument("--context", type=int, default=4096, help="cached tokens per sequence at decode (default 4096)")
    i.add_argument("--prompt", type=int, default=4096, help="prompt tokens per sequence for prefill (default 4096)")
    i.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    i.add_argument("--weight-bytes", type=int, default=2, help="bytes per weight (2 bf16, 4 fp32; default 2)")
    i.add_argument("--kv-bytes", type=int, default=2, help="bytes per cache element (default 2)")
    i.add_argument("--batches", default="1,2,4,8,16,32,64,128,256", help="batch sizes of the decode sweep")
    i.add_argument("--json", action="store_true", help=json_help)
    i.set_defaults(func=_cmd_inference, render=render_inference)

    c = sub.add_parser("configs", help="list the shipped configs", description="The shipped config.json files.")
    c.add_argument("--json", action="store_true", help=json_help)
    c.set_defaults(func=_cmd_configs, render=_render_configs)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except LFM2Error as e:
        print(f"lfm2engine.costs {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"lfm2engine.costs {args.command}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(args.render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
