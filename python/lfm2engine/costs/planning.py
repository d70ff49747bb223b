"""Compute-optimal planning for a dollar budget: pick the GPU with the most effective FLOPs per
dollar, minimise L(N, D) = A/N^alpha + B/D^beta + E under C = 6 N D, and emit a Llama-style
config.json of about N parameters.

What it is: the `costs plan` arithmetic. What it is not: the scaling law itself (closed form,
numerical optimum, fits: lfm2engine.scaling) or parameter counting (model.py).
"""

from __future__ import annotations

import math

from .. import scaling
from ..errors import InputError
from .checks import check_int, check_number
from .configs import parse_config
from .model import param_breakdown

# The course's GPU menu for planning: (name, dollars per hour, peak TFLOP/s).
DEFAULT_GPUS = (("A100", 4.0, 312.0), ("V100", 2.5, 125.0), ("T4", 1.0, 65.0))


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
    n_target = check_number("N", n_target)
    vocab, seq, head_dim = check_int("vocab", vocab), check_int("seq", seq), check_int("head_dim", head_dim)

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
    budget = check_number("budget (dollars)", budget)
    mfu = check_number("mfu", mfu, maximum=1.0)
    law = law or scaling.DEFAULT_LAW
    gpus = list(DEFAULT_GPUS if gpus is None else gpus)
    if not gpus:
        raise InputError("plan needs at least one GPU option")
    options = []
    for g in gpus:
        if isinstance(g, str):
            g = parse_gpu(g)
        name, price, tflops = g
        price = check_number(f"{name} price ($/h)", price)
        tflops = check_number(f"{name} peak TFLOP/s", tflops)
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
