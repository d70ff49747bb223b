"""What an LFM2 / LFM2-MoE GGUF file holds, in llama.cpp's names, and how it maps to ours.

llama.cpp's converter (convert_hf_to_gguf.py, LFM2Model / LFM2MoeModel) renames every Hugging Face
tensor, squeezes the conv taps [D, 1, L] to [D, L], renames `expert_bias` to `exp_probs_b.bias` and
stacks each of the experts' w1 / w3 / w2 into one [E, Fe, D] / [E, Fe, D] / [E, D, Fe] tensor per
layer. `gguf_tensors(cfg)` lists the GGUF manifest (NumPy shapes, i.e. GGUF's ne reversed) and
`hf_sources(cfg)` says where each of OUR names (checkpoint.manifest.expected_tensors) lives in it:
(gguf name, expert index or None). Expert e of a stacked tensor is the contiguous byte range
[e * size / E, (e + 1) * size / E).
"""

from __future__ import annotations

from ...config import LFM2Config

ARCHS = {"lfm2": "lfm2", "lfm2moe": "lfm2_moe"}      # GGUF general.architecture -> our model_type
ARCH_OF = {v: k for k, v in ARCHS.items()}

# per-layer HF suffix -> GGUF suffix (blk.{i}.<suffix>)
_LAYER = {
    "operator_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.out_proj.weight": "attn_output.weight",
    "self_attn.q_layernorm.weight": "attn_q_norm.weight",
    "self_attn.k_layernorm.weight": "attn_k_norm.weight",
    "conv.in_proj.weight": "shortconv.in_proj.weight",
    "conv.conv.weight": "shortconv.conv.weight",
    "conv.out_proj.weight": "shortconv.out_proj.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
    "feed_forward.gate.weight": "ffn_gate_inp.weight",
    "feed_forward.expert_bias": "exp_probs_b.bias",
}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.embedding_norm.weight": "token_embd_norm.weight",
    "lm_head.weight": "output.weight",
}
_EXPERT = {"w1": "ffn_gate_exps.weight", "w3": "ffn_up_exps.weight", "w2": "ffn_down_exps.weight"}

# tensors that stay float32 whatever the file's type (llama.cpp keeps 1-D tensors and the tiny
# router / conv taps in F32 too): norms, conv taps, router, expert bias
KEEP_F32_SUFFIXES = ("_norm.weight", "shortconv.conv.weight", "ffn_gate_inp.weight", "exp_probs_b.bias")


def keeps_f32(gguf_name: str) -> bool:
    return gguf_name.endswith(KEEP_F32_SUFFIXES)


def gguf_name(hf: str) -> tuple[str, int | None]:
    """(GGUF tensor name, expert index or None) holding HF tensor `hf`. KeyError for a name that is
    not an LFM2 tensor."""
    if hf in _GLOBAL:
        return _GLOBAL[hf], None
    parts = hf.split(".")
    if len(parts) < 4 or parts[:2] != ["model", "layers"] or not parts[2].isdigit():
        raise KeyError(hf)
    i, rest = int(parts[2]), ".".join(parts[3:])
    if rest in _LAYER:
        return f"blk.{i}.{_LAYER[rest]}", None
    # feed_forward.experts.{e}.{w}.weight
    if len(parts) == 8 and parts[3:5] == ["feed_forward", "experts"] and parts[5].isdigit() \
            and parts[6] in _EXPERT and parts[7] == "weight":
        return f"blk.{i}.{_EXPERT[parts[6]]}", int(parts[5])
    raise KeyError(hf)


def gguf_tensors(cfg: LFM2Config) -> dict[str, tuple[int, ...]]:
    """{GGUF tensor name: NumPy shape} of the file llama.cpp's converter writes for `cfg`."""
    from ..manifest import expected_tensors

    out: dict[str, tuple[int, ...]] = {}
    for hf, shape in expected_tensors(cfg).items():
        g, e = gguf_name(hf)
        if e is not None:
            out[g] = (cfg.num_experts,) + tuple(shape)
        elif hf.endswith("conv.conv.weight"):
            out[g] = (shape[0], shape[2])
        else:
            out[g] = tuple(shape)
    return out


def block_index(gguf: str) -> int | None:
    """Layer index of a blk.{i}.* name, None for a global tensor."""
    parts = gguf.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() else None
