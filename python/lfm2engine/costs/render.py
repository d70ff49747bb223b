"""Text rendering of the costs results: aligned tables with decimal SI units, one renderer per
subcommand (model, plan, finetune, parallel, inference, configs).

What it is: pure functions from a result dict to the text the CLI prints. What it is not: any
arithmetic (every number comes in the dict) or the JSON output (cli.py prints the dict as is).
"""

from __future__ import annotations


def _si(x: float, unit: str = "") -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3f} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _count(x: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= factor:
            return f"{x / factor:.2f}{suffix}"
    return f"{x:g}"


def _table(headers: list[str], rows: list[list], indent: str = "  ") -> str:
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        lines.append(indent + "  ".join(padded))
        if j == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_model(r: dict) -> str:
    p = r["params"]
    tot = r["params_total"]
    rows = [[k, f"{v:,}", f"{p['active_by_part'][k]:,}", f"{100 * v / tot:.2f}%"]
            for k, v in p.items() if isinstance(v, int) and k in p["active_by_part"] and v]
    rows.append(["total", f"{tot:,}", f"{r['params_active']:,}", "100.00%"])
    out = [f"{r['name']} ({r['model_type']}) from {r['source']}",
           f"batch {r['batch']}, seq {r['seq']}, {r['dtype_bytes']} bytes/element (decimal units: 1 GB = 1e9 B)", "",
           "parameters", _table(["part", "params", "active/token", "share"], rows)]
    out.append(f"  total {_count(tot)}, active {_count(r['params_active'])} "
               f"({_count(r['params_active_with_embedding'])} counting an untied input embedding)")
    if p.get("buffers_not_counted"):
        out.append(f"  router-bias buffers, not counted: {p['buffers_not_counted']:,}")
    if p.get("mtp_excluded"):
        out.append(f"  multi-token-prediction module, not counted: {p['mtp_excluded']:,}")
    out += ["", "layers", _table(
        ["kind", "count", "params", "fwd FLOPs", "peak memory"],
        [[k["kind"], k["count"], _count(k["params"]), _si(k["forward_flops"], "FLOP"),
          _si(k["peak_memory_bytes"], "B")] for k in r["layers"]])]
    lf, lm = r["layer_forward_flops_breakdown"], r["layer_peak_memory_breakdown"]
    out += ["", f"layer {r['layer_index']} ({r['layer_kind']}): {r['layer_params']:,} params",
            f"  forward {r['layer_forward_flops']:,} FLOPs = "
            + " + ".join(f"{k} {_si(v)}" for k, v in lf.items() if k != "total"),
            f"  peak memory {r['layer_peak_memory_bytes']:,} B ({_si(r['layer_peak_memory_bytes'], 'B')}) = "
            + " + ".join(f"{k} {_si(v, 'B')}" for k, v in lm.items() if k != "total")]
    tm = r["training_memory_bytes"]
    out += ["", f"model forward {r['forward_flops']:,} FLOPs ({_si(r['forward_flops'], 'FLOP')}; "
            f"{_si(r['forward_flops_per_token'], 'FLOP')}/token); train step {_si(r['train_flops'], 'FLOP')} "
            f"({_si(r['train_flops_with_recompute'], 'FLOP')} with recompute)",
            f"training memory ({r['optimizer']}): {_si(tm['total'], 'B')} = "
            + " + ".join(f"{k} {_si(v, 'B')}" for k, v in tm.items() if k != "total"),
            "", "assumptions:"] + [f"  - {a}" for a in r["assumptions"]]
    return "\n".join(out)


def render_plan(r: dict) -> str:
    law = r["law"]
    rows = [[o["gpu"], f"${o['dollars_per_hour']:g}/h", f"{o['peak_tflops']:g}",
             f"{o['effective_flops_per_dollar']:.4g}", f"{o['effective_flops']:.4g}"] for o in r["options"]]
    cfg = r["model_config"]
    return "\n".join([
        f"budget ${r['budget']:,.0f}, MFU {r['mfu']:g}; law L = {law['A']}/N^{law['alpha']} + "
        f"{law['B']}/D^{law['beta']} + {law['E']}",
        _table(["gpu", "price", "TFLOP/s", "FLOPs per $", "FLOPs for budget"], rows),
        f"chosen: {r['gpu']} ({r['gpu_hours']:,.0f} GPU-hours), C = {r['C']:.4g} FLOPs",
        f"N = {r['N']:.4g} parameters, D = {r['D']:.4g} tokens ({r['tokens_per_param']:.1f} tokens/param), "
        f"loss = {r['loss']:.4f}",
        f"numerical check (golden section): N = {r['N_numeric']:.6g} (rel. diff {r['numeric_rel_diff_N']:.1e})",
        f"model config: d={cfg['hidden_size']}, layers={cfg['num_hidden_layers']}, ffn={cfg['intermediate_size']}, "
        f"heads={cfg['num_attention_heads']}, vocab={cfg['vocab_size']}: {r['model_config_params']:,} params "
        f"({100 * r['model_config_rel_diff']:+.2f}% vs N)",
    ])


def render_finetune(r: dict) -> str:
    rows = [[k, f"{m['trainable_params']:,}", f"{m['extra_params']:,}", _si(m["extra_param_bytes"], "B"),
             _si(m["grad_bytes"], "B"), _si(m["total_bytes"], "B")] for k, m in r["methods"].items()]
    return "\n".join([
        f"transformer D={r['hidden']}, {r['layers']} layers (12 D^2 each: {r['base_params']:,} params, "
        f"{_si(r['base_param_bytes'], 'B')}), {r['dtype_bytes']} B/element, SGD; rank {r['rank']}, top {r['top']}, "
        f"LoRA on {','.join(r['lora_targets'])}, VeRA on {','.join(r['vera_targets'])}",
        _table(["method", "trainable", "extra params", "extra bytes", "grad bytes", "total"], rows),
    ])


def render_parallel(r: dict) -> str:
    pp = r["pipeline"]
    z = r["zero_bytes_per_device"]
    c = r["comm_bytes_per_device_per_step"]
    return "\n".join([
        f"{r['name']}: {r['params_total']:,} params; step = {r['microbatches']} x {r['micro_batch']} sequences "
        f"of {r['seq']} tokens, {r['dtype_bytes']} B/element",
        f"pipeline K={pp['stages']}, M={r['microbatches']}: bubble {pp['bubble_gpipe']:.4f} (GPipe and 1F1B); "
        f"micro-batches in flight: GPipe {pp['inflight_microbatches_gpipe']}, 1F1B {pp['inflight_microbatches_1f1b']}",
        f"ZeRO per device (dp={r['dp']}):",
        _table(["stage", "bytes"], [[k, _si(v, "B")] for k, v in z.items()]),
        "communication per device per step:",
        _table(["scheme", "degree", "bytes"],
               [[k, {"dp_allreduce": r["dp"], "zero3": r["dp"], "tp_megatron": r["tp"], "sp_megatron": r["tp"],
                     "ep_alltoall": r["ep"], "pp_p2p": r["pp"]}[k], _si(v, "B")] for k, v in c.items()]),
    ])


def render_inference(r: dict) -> str:
    d, p = r["decode"], r["prefill"]
    rows = [[s["batch"], f"{s['arithmetic_intensity']:.1f}", f"{s['tokens_per_s_compute_bound']:,.0f}",
             f"{s['tokens_per_s_memory_bound']:,.0f}", f"{s['tokens_per_s']:,.0f}", s["limited_by"],
             _si(s["resident_bytes"], "B") + ("" if s["fits"] is None else (" ok" if s["fits"] else " NO"))]
            for s in r["decode_sweep"]]
    return "\n".join([
        f"{r['name']} on {r['device_description']} (ridge {r['ridge_point_flops_per_byte']:.0f} FLOP/B); "
        f"weights {r['weight_bytes']} B, cache {r['kv_bytes']} B per element",
        f"weights: total {_si(r['weights_total_bytes'], 'B')}, active per token {_si(r['weights_active_bytes'], 'B')}",
        f"KV cache {r['kv_cache_bytes_per_token']:,} B/token; conv state {r['conv_state_bytes_per_sequence']:,} "
        f"B/sequence; at context {r['context']}: {_si(r['state_bytes_per_sequence'], 'B')} per sequence",
        f"decode (batch {d['batch']}, context {d['context']}): {_si(r['decode_flops_per_token'], 'FLOP')}/token, "
        f"{_si(d['bytes'], 'B')}/step, AI {d['arithmetic_intensity']:.1f} FLOP/B -> "
        f"{d['tokens_per_s']:,.0f} tok/s ({r['decode_ms_per_step']:.3f} ms/step, {d['limited_by']}-bound)",
        f"prefill (batch {p['batch']}, prompt {p['prompt']}): {_si(p['flops'], 'FLOP')}, {_si(p['bytes'], 'B')}, "
        f"AI {p['arithmetic_intensity']:.0f} FLOP/B -> {p['tokens_per_s']:,.0f} tok/s ({p['limited_by']}-bound)",
        "decode vs batch:",
        _table(["batch", "AI", "tok/s compute", "tok/s memory", "tok/s bound", "limit", "resident / fits"], rows),
    ])


def render_configs(r: dict) -> str:
    return _table(["name", "model_type", "total", "active", "path"],
                  [[k, v["model_type"], _count(v["params_total"]), _count(v["params_active"]), v["path"]]
                   for k, v in r["configs"].items()])
