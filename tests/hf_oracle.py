"""Random tiny LFM2 / LFM2-MoE checkpoints written by transformers itself, and its logits.

The external oracle of the test suite (transformers + torch are test-only dependencies).
Init is std 0.2 with perturbed norms and expert_bias (MODEL.md §9) so that bugs show.
"""

from __future__ import annotations

import json
import os

import numpy as np

# Awkward on purpose: hidden not a multiple of 16, odd head counts, top-k 1/3, E not a power of 2.
CONFIGS = {
    "moe_a": dict(model_type="lfm2_moe", vocab_size=97, hidden_size=40, num_hidden_layers=5,
                  num_attention_heads=5, num_key_value_heads=1, intermediate_size=56,
                  moe_intermediate_size=24, num_experts=6, num_experts_per_tok=3, num_dense_layers=1,
                  layer_types=["conv", "full_attention", "conv", "full_attention", "conv"]),
    "moe_b": dict(model_type="lfm2_moe", vocab_size=131, hidden_size=48, num_hidden_layers=4,
                  num_attention_heads=6, num_key_value_heads=3, intermediate_size=40,
                  moe_intermediate_size=20, num_experts=5, num_experts_per_tok=1, num_dense_layers=2,
                  layer_types=["full_attention", "conv", "conv", "full_attention"]),
    "moe_c": dict(model_type="lfm2_moe", vocab_size=64, hidden_size=36, num_hidden_layers=6,
                  num_attention_heads=3, num_key_value_heads=3, intermediate_size=44,
                  moe_intermediate_size=28, num_experts=7, num_experts_per_tok=2, num_dense_layers=0,
                  layer_types=["conv", "conv", "full_attention", "conv", "full_attention", "conv"],
                  routed_scaling_factor=1.5),
    "dense": dict(model_type="lfm2", vocab_size=89, hidden_size=44, num_hidden_layers=4,
                  num_attention_heads=11, num_key_value_heads=1, intermediate_size=96,
                  block_auto_adjust_ff_dim=True, block_ffn_dim_multiplier=1.0, block_multiple_of=16,
                  layer_types=["conv", "full_attention", "conv", "full_attention"]),
}


def make_hf_checkpoint(out_dir: str, name: str, seed: int = 0, torch_dtype: str = "float32") -> str:
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM, Lfm2MoeConfig, Lfm2MoeForCausalLM

    kw = dict(CONFIGS[name])
    mt = kw.pop("model_type")
    torch.manual_seed(seed)
    common = dict(initializer_range=0.2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                  max_position_embeddings=256, norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if mt == "lfm2_moe":
        cfg = Lfm2MoeConfig(**common, **kw)
        model = Lfm2MoeForCausalLM(cfg)
    else:
        cfg = Lfm2Config(**common, **kw)
        model = Lfm2ForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or "layernorm" in n:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
        for n, b in model.named_buffers():
            if n.endswith("expert_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    model = model.to(getattr(torch, torch_dtype))
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def load_hf(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    with open(os.path.join(path, "config.json")) as f:
        mt = json.load(f)["model_type"]
    kw = dict(attn_implementation="eager", dtype=torch.float32)
    if mt == "lfm2_moe":
        kw["experts_implementation"] = "eager"
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    model.eval()
    return model


def hf_all_logits(model, ids) -> np.ndarray:
    """Logits [T, V] of one sequence (no padding)."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([list(ids)], dtype=torch.long), use_cache=False)
    return out.logits[0].float().numpy()


def hf_greedy(model, ids, n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([list(ids)]), max_new_tokens=n, do_sample=False,
                             min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()
