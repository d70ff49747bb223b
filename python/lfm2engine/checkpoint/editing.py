"""Editing checkpoints: new checkpoints derived from an existing one.

`write_pruned_checkpoint` removes whole layers (a layer-pruned draft for speculative decoding
that shares the vocabulary and the embeddings); its logits equal Engine.derive(skip_layers=...).
"""

from __future__ import annotations

from ..errors import InputError
from .dtypes import TAG_NAMES
from .reading import Checkpoint
from .writing import save_pretrained

LAYER_PREFIX = "model.layers."


def write_pruned_checkpoint(src_dir: str, drop_layers, out_dir: str) -> str:
    """Write to out_dir the checkpoint src_dir without the layers `drop_layers` (the others are
    renumbered in order; dense layers of an MoE stay first), stored in the source's dtype (F32
    when the config names none). Returns out_dir."""
    ck = Checkpoint(src_dir)
    cfg = ck.config
    drop = {int(i) for i in drop_layers}
    keep = [i for i in range(cfg.num_hidden_layers) if i not in drop]
    if not keep or any(not 0 <= i < cfg.num_hidden_layers for i in drop):
        raise InputError(f"prune: cannot drop layers {sorted(drop)} of a {cfg.num_hidden_layers}-layer model")
    changes = {"num_hidden_layers": len(keep), "layer_types": tuple(cfg.layer_types[i] for i in keep)}
    if cfg.is_moe:  # dense layers come first and stay first
        changes["num_dense_layers"] = sum(1 for i in keep if i < cfg.num_dense_layers)
    new_cfg = cfg.replace(**changes)
    tensors = {}
    for name in ck.names():
        if name.startswith(LAYER_PREFIX):
            i, rest = name[len(LAYER_PREFIX):].split(".", 1)
            if int(i) in drop:
                continue
            name_out = f"{LAYER_PREFIX}{keep.index(int(i))}.{rest}"
        else:
            name_out = name
        tensors[name_out] = ck.f32(name)
    tag = {name: t for t, name in TAG_NAMES.items()}.get(cfg.torch_dtype, "F32")
    save_pretrained(new_cfg, tensors, out_dir, dtype=tag)
    return out_dir
