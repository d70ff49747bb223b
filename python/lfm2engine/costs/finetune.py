"""Fine-tuning memory of the course's transformer: full training, freezing, adapters, LoRA and VeRA,
with plain SGD in fp16 (extra parameters plus gradients of what is trained).

What it is: the `costs finetune` arithmetic on a D-wide, L-layer model of 12 D^2 per layer. What it
is not: a reading of any config.json (it takes D and L directly) or optimizer-state accounting
(model.py's training_memory covers Adam).
"""

from __future__ import annotations

from ..errors import InputError
from .checks import check_int

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
    D, L = check_int("hidden", hidden), check_int("layers", layers)
    top, R = check_int("top", top, minimum=0), check_int("rank", rank)
    if top > L:
        raise InputError(f"top {top} exceeds the number of layers {L}")
    dtype_bytes = check_int("dtype_bytes", dtype_bytes)
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
