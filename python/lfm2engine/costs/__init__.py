"""lfm2engine.costs: what a model costs to train and to serve, computed exactly from a Hugging Face config.json.

Parameter counts (by part; total and active per token), forward FLOPs and peak memory of a layer and
of the model, training memory, compute-optimal planning under a scaling law (lfm2engine.scaling),
fine-tuning memory (freezing, adapters, LoRA, VeRA), pipeline/ZeRO/communication arithmetic, and
KV-cache and roofline bounds for prefill and decode. It is arithmetic only: nothing is allocated or
timed. Families by `model_type`: llama, lfm2, lfm2_moe, deepseek_v3. The LFM2-8B-A1B numbers must equal
docs/MODEL.md §5-6; counts equal transformers' `num_parameters()` (checked in tests/test_costs.py).
CLI: `python -m lfm2engine.costs {model,plan,finetune,parallel,inference,configs} ... [--json]` (docs/costs.md).

Modules, one concern each: checks (argument validation), configs (config.json -> Arch; LFM2 rules
from lfm2engine.config.LFM2Config), arch (the normalized architecture), layers (per-layer
accounting), model (whole-model parameters, FLOPs, training memory, `model_cost`), planning
(`plan`), finetune (`finetune_memory`), parallel (`parallel_cost`), inference (`inference_cost`),
render (tables), cli (`main`). This file only re-exports their public names.
"""

from .. import scaling
from .arch import MLA, Arch, Attention, DenseMLP, Layer, MoE, ShortConv
from .checks import check_int, check_number
from .cli import build_parser, cmd_configs, main
from .configs import CONFIG_DIR, SHIPPED_CONFIGS, SUPPORTED_MODEL_TYPES, load_config, parse_config, shipped_config_path
from .finetune import finetune_memory
from .inference import (
    DEVICES,
    decode_step,
    expected_distinct,
    inference_cost,
    kv_state,
    prefill,
    weight_bytes_touched,
)
from .layers import (
    attention_flops,
    layer_activation_elements,
    layer_forward_flops,
    layer_params,
    layer_parts,
    layer_peak_memory,
)
from .model import (
    ADAM_STATE_BYTES,
    head_macs,
    matmul_macs_per_token,
    model_cost,
    model_forward_flops,
    param_breakdown,
    seq_or_default,
    training_memory,
)
from .parallel import bubble_fraction, parallel_cost, zero_memory_per_device
from .planning import DEFAULT_GPUS, llama_config_for_params, parse_gpu, plan
from .render import render_configs, render_finetune, render_inference, render_model, render_parallel, render_plan

# The names these had when costs was one module (tests/test_costs.py still uses them).
_expected_distinct = expected_distinct
_weight_bytes_touched = weight_bytes_touched
_cmd_configs = cmd_configs

__all__ = [
    "ADAM_STATE_BYTES", "CONFIG_DIR", "DEFAULT_GPUS", "DEVICES", "SHIPPED_CONFIGS", "SUPPORTED_MODEL_TYPES",
    "MLA", "Arch", "Attention", "DenseMLP", "Layer", "MoE", "ShortConv",
    "attention_flops", "bubble_fraction", "build_parser", "check_int", "check_number", "cmd_configs",
    "decode_step", "expected_distinct", "finetune_memory", "head_macs", "inference_cost", "kv_state",
    "layer_activation_elements", "layer_forward_flops", "layer_params", "layer_parts", "layer_peak_memory",
    "llama_config_for_params", "load_config", "main", "matmul_macs_per_token", "model_cost",
    "model_forward_flops", "parallel_cost", "param_breakdown", "parse_config", "parse_gpu", "plan", "prefill",
    "render_configs", "render_finetune", "render_inference", "render_model", "render_parallel", "render_plan",
    "scaling", "seq_or_default", "shipped_config_path", "training_memory", "weight_bytes_touched",
    "zero_memory_per_device",
]
