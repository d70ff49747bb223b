"""The `python -m lfm2engine.costs` / `lfm2-costs` command line: one subcommand per cost function,
tables by default or one JSON object with --json, errors as one line on stderr with exit code 2.

What it is: argparse wiring and the handlers that turn parsed arguments into a result dict. What
it is not: the arithmetic (the other modules of this package) or the text layout (render.py).
"""

from __future__ import annotations

import argparse
import json

from .. import scaling
from ..cli import call_or_exit_code, parse_list
from .configs import SHIPPED_CONFIGS, parse_config, shipped_config_path
from .finetune import finetune_memory
from .inference import DEVICES, inference_cost
from .model import model_cost, param_breakdown
from .parallel import parallel_cost
from .planning import plan
from .render import render_configs, render_finetune, render_inference, render_model, render_parallel, render_plan


# Subcommand handlers: parsed arguments -> the result dict (what --json prints).


def cmd_model(a) -> dict:
    return model_cost(a.config, batch=a.batch, seq=a.seq, layer=a.layer, dtype_bytes=a.dtype_bytes,
                      optimizer=a.optimizer, causal=a.causal)


def cmd_plan(a) -> dict:
    law = scaling.ScalingLaw(a.A, a.alpha, a.B, a.beta, a.E)
    r = plan(a.budget, gpus=a.gpu, mfu=a.mfu, law=law, vocab=a.vocab, seq=a.seq)
    if a.config_out:
        from ..checkpoint import atomic_writer

        with atomic_writer(a.config_out, "w") as f:
            json.dump(r["model_config"], f, indent=2)
            f.write("\n")
    return r


def cmd_finetune(a) -> dict:
    return finetune_memory(hidden=a.hidden, layers=a.layers, top=a.top, rank=a.rank, lora_targets=a.lora_targets,
                           vera_targets=a.vera_targets, adapter_bias=a.adapter_bias, dtype_bytes=a.dtype_bytes)


def cmd_parallel(a) -> dict:
    return parallel_cost(a.config, dp=a.dp, tp=a.tp, pp=a.pp, ep=a.ep, microbatches=a.microbatches,
                         micro_batch=a.micro_batch, seq=a.seq, dtype_bytes=a.dtype_bytes)


def cmd_inference(a) -> dict:
    return inference_cost(a.config, device=a.device, bandwidth=None if a.bandwidth is None else a.bandwidth * 1e9,
                          peak_flops=None if a.tflops is None else a.tflops * 1e12,
                          memory=None if a.memory is None else a.memory * 1e9, context=a.context,
                          prompt=a.prompt, batch=a.batch, weight_bytes=a.weight_bytes, kv_bytes=a.kv_bytes,
                          batches=parse_list(a.batches, "--batches", low=1))


def cmd_configs(a) -> dict:
    out = {}
    for n in SHIPPED_CONFIGS:
        arch = parse_config(n)
        pb = param_breakdown(arch)
        out[n] = {"path": shipped_config_path(n), "model_type": arch.model_type,
                  "params_total": pb["total"], "params_active": pb["active"]}
    return {"configs": out}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lfm2engine.costs",
        description="Training and inference cost arithmetic from a Hugging Face config.json "
                    "(llama, lfm2, lfm2_moe, deepseek_v3). Every subcommand prints a table, or with --json "
                    "one JSON object on stdout. Errors: one line on stderr, exit code 2. See docs/costs.md.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cfg_help = f"config.json path, a directory holding one, or a shipped name ({', '.join(SHIPPED_CONFIGS)})"
    json_help = "print one JSON object on stdout instead of tables"

    m = sub.add_parser("model", help="parameters, layer/model FLOPs, layer peak memory, training memory",
                       description="Parameter breakdown (total, active per token), forward FLOPs and fp16 peak "
                                   "memory of one layer and of the model, training memory. JSON keys include "
                                   "params_total, params_active, layer_forward_flops, layer_peak_memory_bytes.")
    m.add_argument("config", help=cfg_help)
    m.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
    m.add_argument("--seq", type=int, default=None, help="tokens per sequence (default max_position_embeddings)")
    m.add_argument("--layer", type=int, default=None, help="layer index to detail (default: largest forward FLOPs)")
    m.add_argument("--dtype-bytes", type=int, default=2, help="bytes per weight/activation element (default 2, fp16)")
    m.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="for training memory (default adam)")
    m.add_argument("--causal", action="store_true",
                   help="count only the causal S(S+1)/2 attention pairs (default: all S x S, the course convention)")
    m.add_argument("--json", action="store_true", help=json_help)
    m.set_defaults(func=cmd_model, render=render_model)

    p = sub.add_parser("plan", help="compute-optimal N and D for a dollar budget",
                       description="Pick the GPU with the most effective FLOPs per dollar, then minimise "
                                   "L(N, D) = A/N^alpha + B/D^beta + E under C = 6 N D. JSON keys include "
                                   "gpu, N, D, loss, C, model_config.")
    p.add_argument("--budget", type=float, required=True, help="dollars")
    p.add_argument("--gpu", action="append", default=None, metavar="NAME:$PER_HOUR:TFLOPS",
                   help="a GPU option (repeat; replaces the defaults A100:4.0:312, V100:2.5:125, T4:1.0:65)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization (default 0.4)")
    d = scaling.DEFAULT_LAW
    p.add_argument("--A", type=float, default=d.A, help=f"law constant A (default {d.A})")
    p.add_argument("--alpha", type=float, default=d.alpha, help=f"law exponent alpha (default {d.alpha})")
    p.add_argument("--B", type=float, default=d.B, help=f"law constant B (default {d.B})")
    p.add_argument("--beta", type=float, default=d.beta, help=f"law exponent beta (default {d.beta})")
    p.add_argument("--E", type=float, default=d.E, help=f"irreducible loss E (default {d.E})")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary of the emitted config (default 32000)")
    p.add_argument("--seq", type=int, default=2048, help="max_position_embeddings of the emitted config (2048)")
    p.add_argument("--config-out", default=None, metavar="PATH", help="also write the emitted config.json here")
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=cmd_plan, render=render_plan)

    f = sub.add_parser("finetune", help="extra parameter and gradient bytes of freezing/adapters/LoRA/VeRA",
                       description="Memory beyond the frozen model for fine-tuning the course's transformer "
                                   "(Q/K/V/O D x D, MLP D x 4D and 4D x D per layer), fp16, plain SGD.")
    f.add_argument("--hidden", type=int, default=4096, help="D (default 4096)")
    f.add_argument("--layers", type=int, default=32, help="number of layers (default 32)")
    f.add_argument("--top", type=int, default=2, help="freeze: number of top layers trained (default 2)")
    f.add_argument("--rank", type=int, default=8, help="adapter width / LoRA and VeRA rank R (default 8)")
    f.add_argument("--lora-targets", default="q,v", help="comma list from q,k,v,o,up,down (default q,v)")
    f.add_argument("--vera-targets", default=None, help="comma list for VeRA (default: the LoRA targets)")
    f.add_argument("--adapter-bias", action="store_true", help="adapters carry biases (R + D each)")
    f.add_argument("--dtype-bytes", type=int, default=2, help="bytes per element (default 2, fp16)")
    f.add_argument("--json", action="store_true", help=json_help)
    f.set_defaults(func=cmd_finetune, render=render_finetune)

    q = sub.add_parser("parallel", help="pipeline bubble, ZeRO memory, communication volume per step",
                       description="Each scheme is taken alone at its degree: DP (and ZeRO-3), Megatron TP, "
                                   "Megatron SP, EP all-to-all, PP point-to-point.")
    q.add_argument("config", help=cfg_help)
    for name, default, h in (("dp", 8, "data-parallel degree"), ("tp", 8, "tensor/sequence-parallel degree"),
                             ("pp", 4, "pipeline stages K"), ("ep", 8, "expert-parallel degree"),
                             ("microbatches", 8, "micro-batches per step M"),
                             ("micro-batch", 1, "sequences per micro-batch")):
        q.add_argument(f"--{name}", type=int, default=default, help=f"{h} (default {default})")
    q.add_argument("--seq", type=int, default=None, help="tokens per sequence (default max_position_embeddings)")
    q.add_argument("--dtype-bytes", type=int, default=2, help="bytes per element (default 2)")
    q.add_argument("--json", action="store_true", help=json_help)
    q.set_defaults(func=cmd_parallel, render=render_parallel)

    i = sub.add_parser("inference", help="KV cache, conv state, roofline tokens/s for prefill and decode",
                       description="Decode and prefill bounds on one device from FLOPs and bytes moved.")
    i.add_argument("config", help=cfg_help)
    i.add_argument("--device", choices=tuple(DEVICES), default="h100", help="device preset (default h100)")
    i.add_argument("--bandwidth", type=float, default=None, help="override: memory bandwidth in GB/s")
    i.add_argument("--tflops", type=float, default=None, help="override: peak TFLOP/s")
    i.add_argument("--memory", type=float, default=None, help="override: device memory in GB")
    i.add_argument("--context", type=int, default=4096, help="cached tokens per sequence at decode (default 4096)")
    i.add_argument("--prompt", type=int, default=4096, help="prompt tokens per sequence for prefill (default 4096)")
    i.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    i.add_argument("--weight-bytes", type=int, default=2, help="bytes per weight (2 bf16, 4 fp32; default 2)")
    i.add_argument("--kv-bytes", type=int, default=2, help="bytes per cache element (default 2)")
    i.add_argument("--batches", default="1,2,4,8,16,32,64,128,256", help="batch sizes of the decode sweep")
    i.add_argument("--json", action="store_true", help=json_help)
    i.set_defaults(func=cmd_inference, render=render_inference)

    c = sub.add_parser("configs", help="list the shipped configs", description="The shipped config.json files.")
    c.add_argument("--json", action="store_true", help=json_help)
    c.set_defaults(func=cmd_configs, render=render_configs)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    result, code = call_or_exit_code(f"lfm2engine.costs {args.command}", lambda: args.func(args))
    if code:
        return code
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(args.render(result))
    return 0

