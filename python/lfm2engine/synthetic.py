"""Deterministic synthetic checkpoints of the LFM2-8B-A1B shape family, in the HF layout.

`default`: the built-in model every CLI uses when no --model is given — LFM2-8B-A1B's structure
(24 layers, attention at 2, 6, 10, 14, 18, 21; 2 dense layers; 32 experts, top-4; sigmoid router
with bias; tied embeddings) scaled to run in seconds on 2 cores. `full`: the real-size
LFM2-8B-A1B (8.34B parameters, random weights) for GPU benchmarking. `real8`: the real matrix
shapes with 8 layers, for CPU benchmarks at the shapes users run. Each tensor is drawn from
its own seed (derived from its name), so files are identical whatever the write order.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile

import numpy as np

from .checkpoint import expected_tensors, save_pretrained
from .config import LFM2Config

LFM2_8B_A1B = dict(
    model_type="lfm2_moe", vocab_size=65536, hidden_size=2048, num_hidden_layers=24,
    num_attention_heads=32, num_key_value_heads=8, intermediate_size=7168, moe_intermediate_size=1792,
    num_experts=32, num_experts_per_tok=4, num_dense_layers=2, norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, conv_L_cache=3, conv_bias=False,
    tie_word_embeddings=True, routed_scaling_factor=1.0, norm_topk_prob=True, use_expert_bias=True,
    bos_token_id=1, eos_token_id=7, pad_token_id=0, max_position_embeddings=128000,
    layer_types=["full_attention" if i in (2, 6, 10, 14, 18, 21) else "conv" for i in range(24)],
)

PRESETS = {
    # 77.7M parameters (8.1M active per token); D=256, H=8 (Dh=32), Hkv=2, F=768, Fe=128, V=8192.
    "default": dict(LFM2_8B_A1B, vocab_size=8192, hidden_size=256, num_attention_heads=8,
                    num_key_value_heads=2, intermediate_size=768, moe_intermediate_size=128,
                    max_position_embeddings=4096),
    "full": dict(LFM2_8B_A1B),
    # LFM2-8B-A1B's real matrix shapes with 8 of its 24 layers (2 dense, attention at 2 and 6, 6 MoE):
    # 2.46B parameters, 4.9 GB in bf16; the CPU benchmarks' real-shape model.
    "real8": dict(LFM2_8B_A1B, num_hidden_layers=8,
                  layer_types=["full_attention" if i in (2, 6) else "conv" for i in range(8)]),
}
# Bump when the generator changes, so cached copies are regenerated.
GENERATOR_VERSION = 2


def preset_config(name: str) -> LFM2Config:
    from .errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {name!r}; choose from {', '.join(PRESETS)}")
    return LFM2Config.from_dict(PRESETS[name], source=f"synthetic:{name}")


def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def make_tensor(cfg: LFM2Config, name: str, shape, seed: int = 0) -> np.ndarray:
    """One synthetic tensor: projections ~ N(0, 1/fan_in) scaled up a little so that routing and
    attention are far from uniform; norms 1 + N(0, 0.1); expert_bias N(0, 0.05)."""
    rng = np.random.default_rng(_tensor_seed(seed, name))
    if name.endswith("norm.weight") or "layernorm" in name:
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if name.endswith("expert_bias"):
        return (0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if name == "model.embed_tokens.weight" or name == "lm_head.weight":
        # std 0.3 keeps logits O(10): the workload's 1e-3 absolute rule then measures kernels, not scale
        a = (0.3 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        if cfg.pad_token_id is not None and name == "model.embed_tokens.weight":
            a[cfg.pad_token_id] = 0.0  # like nn.Embedding(padding_idx)
        return a
    if name.endswith("conv.conv.weight"):
        return (0.5 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = shape[-1]
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(1.5 / np.sqrt(fan_in))).astype(np.float32)


def write_synthetic(out_dir: str, preset: str = "default", seed: int = 0, dtype: str = "BF16",
                    shard_bytes: int | None = None, verbose: bool = True) -> str:
    """Write the preset's checkpoint to out_dir (atomically: a temp dir renamed into place)."""
    cfg = preset_config(preset)
    specs = expected_tensors(cfg)
    total = sum(int(np.prod(s)) for s in specs.values()) * (4 if dtype == "F32" else 2)
    if shard_bytes is None and total > 4 * 2**30:
        shard_bytes = 2 * 2**30
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-synth-", dir=parent)
    done = [0, 0]

    def progress(nb):
        done[0] += nb
        pct = int(100 * done[0] / total)
        if verbose and pct >= done[1] + 10:
            done[1] = pct - pct % 10
            print(f"[lfm2engine] writing synthetic '{preset}' checkpoint: {pct}% of {total / 2**20:.0f} MiB",
                  file=sys.stderr, flush=True)

    try:
        save_pretrained(cfg, lambda n: make_tensor(cfg, n, specs[n], seed), tmp, dtype=dtype,
                        max_shard_bytes=shard_bytes, progress=progress)
        with open(os.path.join(tmp, "SYNTHETIC"), "w") as f:
            f.write(f"preset={preset} seed={seed} generator={GENERATOR_VERSION} dtype={dtype}\n")
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def cache_dir() -> str:
    base = os.environ.get("LFM2ENGINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lfm2engine")
    return base


def default_model_dir(preset: str = "default", create: bool = True, verbose: bool = True) -> str:
    """Path of the cached synthetic checkpoint, written on first use."""
    d = os.path.join(cache_dir(), f"synthetic-{preset}-g{GENERATOR_VERSION}")
    if create and not os.path.isfile(os.path.join(d, "SYNTHETIC")):
        if verbose:
            print(f"[lfm2engine] creating the built-in synthetic '{preset}' model in {d} (first use)",
                  file=sys.stderr, flush=True)
        write_synthetic(d, preset, verbose=verbose)
    return d
