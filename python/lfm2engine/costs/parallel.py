"""Parallel-training arithmetic: the pipeline bubble, ZeRO model-state memory per device, and the
bytes each device sends per step under DP, ZeRO-3, Megatron TP and SP, EP all-to-all and PP.

What it is: the `costs parallel` figures, each scheme taken alone at its degree. What it is not:
a planner that combines schemes, or anything this engine's MPI plans measure (lfm2engine.parallel).
"""

from __future__ import annotations

from ..errors import InputError
from .arch import MoE
from .checks import check_int
from .configs import parse_config
from .model import ADAM_STATE_BYTES, param_breakdown, seq_or_default


def bubble_fraction(stages: int, microbatches: int) -> float:
    """Idle fraction of a synchronous pipeline, (K-1)/(M+K-1): the same for GPipe and 1F1B."""
    k, m = check_int("stages", stages), check_int("microbatches", microbatches)
    return (k - 1) / (m + k - 1)


def zero_memory_per_device(params: int, dp: int, stage: int, dtype_bytes: int = 2,
                           optimizer_bytes: int = ADAM_STATE_BYTES) -> int:
    """Bytes of model states per data-parallel device under ZeRO stage 0..3 (Rajbhandari et al. 2020).

    Weights and gradients take dtype_bytes per parameter, optimizer states optimizer_bytes (12 for
    Adam: fp32 master, m, v). Stage 1 shards optimizer states, 2 also gradients, 3 also weights.
    """
    p, n = check_int("params", params), check_int("dp", dp)
    stage = check_int("stage", stage, minimum=0)
    if stage > 3:
        raise InputError(f"ZeRO stage must be 0, 1, 2 or 3, found {stage}")
    w = g = p * dtype_bytes
    o = p * check_int("optimizer_bytes", optimizer_bytes, minimum=0)
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
    dp, tp, pp, ep = (check_int(k, v) for k, v in (("dp", dp), ("tp", tp), ("pp", pp), ("ep", ep)))
    m, b = check_int("microbatches", microbatches), check_int("micro_batch", micro_batch)
    seq = seq_or_default(arch, seq)
    dtype_bytes = check_int("dtype_bytes", dtype_bytes)
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
