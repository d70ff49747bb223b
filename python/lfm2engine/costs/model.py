"""What a whole model costs: parameters by part (total and active per token), forward FLOPs,
training memory, and `model_cost`, the report behind `costs model`.

What it is: sums of the per-layer figures (layers.py) plus the embedding, final norm and head.
What it is not: planning (planning.py), parallelism (parallel.py) or decode/prefill bounds
(inference.py), which build on these totals.
"""

from __future__ import annotations

from ..errors import InputError
from .arch import Arch, MoE
from .checks import check_int
from .configs import parse_config
from .layers import layer_activation_elements, layer_forward_flops, layer_params, layer_parts, layer_peak_memory

# Adam in mixed precision (ZeRO paper convention): fp32 master weights + momentum + variance.
ADAM_STATE_BYTES = 12


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


def head_macs(arch: Arch) -> int:
    """Multiply-adds per token of the LM head, the [D, V] projection."""
    return arch.vocab * arch.hidden


def matmul_macs_per_token(arch: Arch) -> int:
    """Matmul multiply-adds per token over every layer and the head (attention scores excluded)."""
    return sum(macs for lyr in arch.layers for _, _, macs in layer_parts(lyr, arch.hidden).values()) + head_macs(arch)


def model_forward_flops(arch: Arch, batch: int, seq: int, causal: bool = False) -> dict[str, int]:
    """Whole-model forward FLOPs over B x S tokens, by group; the head is the [D, V] projection."""
    out: dict[str, int] = {}
    for layer in arch.layers:
        for g, v in layer_forward_flops(layer, arch.hidden, batch, seq, causal).items():
            if g != "total":
                out[g] = out.get(g, 0) + v
    out["head"] = 2 * batch * seq * head_macs(arch)
    out["total"] = sum(out.values())
    return out


def _pick_layer(arch: Arch, batch: int, seq: int, layer: int | None, causal: bool = False) -> int:
    if layer is not None:
        check_int("layer", layer, minimum=0)
        if layer >= arch.n_layers:
            raise InputError(f"layer {layer} is out of range: {arch.name} has layers 0..{arch.n_layers - 1}")
        return layer
    flops = [layer_forward_flops(lyr, arch.hidden, batch, seq, causal)["total"] for lyr in arch.layers]
    return flops.index(max(flops))


def seq_or_default(arch: Arch, seq: int | None) -> int:
    """seq checked, or the config's max_position_embeddings when seq is None (InputError if it has none)."""
    if seq is None:
        if arch.max_position_embeddings is None:
            raise InputError(f"{arch.source}: no max_position_embeddings in the config; give a sequence length")
        return arch.max_position_embeddings
    return check_int("seq", seq)


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
    batch = check_int("batch", batch)
    seq = seq_or_default(arch, seq)
    dtype_bytes = check_int("dtype_bytes", dtype_bytes)
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
