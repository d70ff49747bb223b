"""Serving costs on one device: KV-cache and conv-state sizes, and roofline bounds (tokens/s from
FLOPs and bytes moved) for prefill and decode, with the expected distinct experts an MoE batch reads.

What it is: the `costs inference` arithmetic and the device presets. What it is not: a measurement
(benchmarks/ time the engine) or a model of kernels, launches or communication.
"""

from __future__ import annotations

from ..errors import InputError
from .arch import MLA, Arch, Attention, MoE
from .checks import check_int, check_number
from .configs import parse_config
from .layers import attention_flops
from .model import matmul_macs_per_token, param_breakdown

# name -> (memory bandwidth B/s, dense bf16/fp16 tensor-core peak FLOP/s, memory bytes, description);
# NVIDIA datasheets (SXM parts).
DEVICES = {
    "h100": (3.35e12, 989.4e12, 80e9, "H100 SXM5 80 GB: 3.35 TB/s HBM3, 989.4 TFLOP/s dense BF16"),
    "h200": (4.8e12, 989.4e12, 141e9, "H200 SXM 141 GB: 4.8 TB/s HBM3e, 989.4 TFLOP/s dense BF16"),
    "a100": (2.039e12, 312e12, 80e9, "A100 SXM 80 GB: 2.039 TB/s HBM2e, 312 TFLOP/s dense BF16"),
}


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


def expected_distinct(experts: int, top_k: int, tokens: int) -> float:
    """Expected number of distinct experts hit by `tokens` tokens under uniform routing."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def weight_bytes_touched(arch: Arch, tokens: int, weight_bytes: int) -> float:
    """Weight bytes read when `tokens` tokens pass through the model once."""
    D = arch.hidden
    routed_active = 0
    distinct = 0.0
    for lyr in arch.layers:
        if isinstance(lyr.ffn, MoE):
            one = 3 * D * lyr.ffn.width
            routed_active += lyr.ffn.top_k * one
            distinct += expected_distinct(lyr.ffn.experts, lyr.ffn.top_k, tokens) * one
    base = param_breakdown(arch)["active"] - routed_active
    gather = 0 if arch.tied else tokens * D  # rows of an untied input embedding
    return (base + distinct + gather) * weight_bytes


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
    macs = matmul_macs_per_token(arch)
    attn = sum(_decode_attention_flops(lyr.mixer, context + 1) for lyr in arch.layers)
    flops = batch * (2 * macs + attn)
    nbytes = (weight_bytes_touched(arch, batch, weight_bytes)
              + batch * st["kv_bytes_per_token"] * (context + 1)  # read the cache, write the new entry
              + batch * 2 * st["conv_state_bytes"])  # read and write the conv state
    return {"batch": batch, "context": context, **_bound(flops, nbytes, batch, bw, peak)}


def prefill(arch: Arch, batch: int, prompt: int, bw: float, peak: float, weight_bytes: int = 2,
            kv_bytes: int = 2) -> dict:
    """Roofline of prefilling `batch` prompts of `prompt` tokens (causal attention, K/V written once)."""
    st = kv_state(arch, kv_bytes)
    macs = matmul_macs_per_token(arch)
    tokens = batch * prompt
    attn = sum(sum(attention_flops(lyr.mixer, batch, prompt, causal=True)) for lyr in arch.layers)
    flops = 2 * macs * tokens + attn
    nbytes = (weight_bytes_touched(arch, tokens, weight_bytes)
              + tokens * st["kv_bytes_per_token"] + batch * st["conv_state_bytes"])
    return {"batch": batch, "prompt": prompt, **_bound(flops, nbytes, tokens, bw, peak)}


def _device(device: str | None, bandwidth: float | None, peak_flops: float | None,
            memory: float | None) -> tuple[float, float, float | None, str]:
    if device is not None and device not in DEVICES:
        raise InputError(f"unknown device {device!r}; known: {', '.join(DEVICES)} (or give bandwidth and peak)")
    bw, peak, mem, desc = DEVICES[device] if device else (None, None, None, "custom")
    if bandwidth is not None:
        bw = check_number("bandwidth (bytes/s)", bandwidth)
        desc = "custom"
    if peak_flops is not None:
        peak = check_number("peak FLOP/s", peak_flops)
        desc = "custom"
    if memory is not None:
        mem = check_number("device memory (bytes)", memory)
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
    context = check_int("context", context, minimum=0)
    prompt, batch = check_int("prompt", prompt), check_int("batch", batch)
    weight_bytes, kv_bytes = check_int("weight_bytes", weight_bytes), check_int("kv_bytes", kv_bytes)
    batches = [check_int("batches entry", x) for x in batches]
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
        "decode_flops_per_token": 2 * matmul_macs_per_token(arch)
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
