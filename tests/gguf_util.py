"""Builders shared by the GGUF tests: small random LFM2 / LFM2-MoE checkpoints whose widths are
whole k-quant blocks (256), and byte surgery on GGUF files."""

import struct

import numpy as np

from lfm2engine.checkpoint import expected_tensors, save_pretrained
from lfm2engine.synthetic import make_tensor, preset_config

MOE = preset_config("default").replace(
    num_hidden_layers=3, layer_types=("conv", "full_attention", "conv"), num_experts=2, num_experts_per_tok=1,
    num_dense_layers=1, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
    intermediate_size=256, moe_intermediate_size=256)
DENSE = preset_config("default").replace(
    model_type="lfm2", num_hidden_layers=2, layer_types=("full_attention", "conv"), num_experts=0,
    num_experts_per_tok=0, num_dense_layers=0, moe_intermediate_size=0, use_expert_bias=False, hidden_size=256,
    num_attention_heads=4, num_key_value_heads=2, vocab_size=64, intermediate_size=384,
    block_auto_adjust_ff_dim=True, tie_word_embeddings=False)  # ffn_dim = 256
# a model too small for k-quants (rows of 32): the fast case of the reader tests and the fuzzer
SMALL = MOE.replace(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                    moe_intermediate_size=32, vocab_size=16)


def write_checkpoint(cfg, d, seed=0):
    save_pretrained(cfg, {n: make_tensor(cfg, n, s, seed) for n, s in expected_tensors(cfg).items()}, str(d))
    return str(d)


def expected_config(cfg):
    """What a GGUF file carries of `cfg`: the dense width after HF's auto-adjust."""
    return cfg if cfg.is_moe else cfg.replace(intermediate_size=cfg.ffn_dim, block_auto_adjust_ff_dim=False)


def tensor_info_at(buf: bytes, name: str) -> int:
    """Byte offset of tensor `name`'s info record (its name's length field) in a GGUF file."""
    key = struct.pack("<Q", len(name)) + name.encode()
    at = buf.find(key)
    assert at >= 0, name
    return at


def patch_tensor(buf: bytes, name: str, *, type_id=None, offset=None, dims=None) -> bytes:
    """A copy of GGUF bytes with tensor `name`'s type id, data offset or dims (same count) replaced."""
    b = bytearray(buf)
    at = tensor_info_at(buf, name) + 8 + len(name)
    (nd,) = struct.unpack_from("<I", b, at)
    if dims is not None:
        assert len(dims) == nd
        struct.pack_into(f"<{nd}Q", b, at + 4, *dims)
    at += 4 + 8 * nd
    if type_id is not None:
        struct.pack_into("<I", b, at, type_id)
    if offset is not None:
        struct.pack_into("<Q", b, at + 4, offset)
    return bytes(b)


def tensor_offset(buf: bytes, name: str) -> int:
    at = tensor_info_at(buf, name) + 8 + len(name)
    (nd,) = struct.unpack_from("<I", buf, at)
    return struct.unpack_from("<Q", buf, at + 4 + 8 * nd + 4)[0]


def finite(a) -> bool:
    return bool(np.isfinite(np.asarray(a, dtype=np.float32)).all())
