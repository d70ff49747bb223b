"""`python -m lfm2engine.generate`: run a workload or generate text/tokens, mpirun-aware.

Workload mode (default): last-token logits of each prompt of inputs.bin -> outputs.bin (atomic),
-v validates against answers.bin. Generation mode (--prompt / --prompt-ids): continues the
prompt by --max-new-tokens; with --prompt the text is streamed to stdout token by token. Without
--model, the built-in synthetic model and workload are used (--model tiny: the shipped trained model).
Throughput goes to stderr; --json prints a machine-readable summary on stdout (rank 0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

from . import log
from .checkpoint import check_writable
from .cli import add_dtype_flag, at_least, enable_bf16_dot, resolve_prompt
from .cli import numerics as cli_numerics
from .errors import InputError
from .models import SHIPPED, model_dir
from .parallel import ParallelPlan, agree, check_same_model, run_guarded
from .sampling import Sampler
from .synthetic import PRESETS
from .parallel import data_parallel as dpl
from .parallel.comm import node_local

PLANS = ("dp", "ep", "tp")
GEN_DEFAULT_NEW_TOKENS = 16


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lfm2engine.generate",
        description="LFM2 / LFM2-MoE inference. Workload mode (default) writes last-token logits of "
                    "inputs.bin to outputs.bin; generation mode (--prompt/--prompt-ids) continues a prompt. "
                    "Run under `mpirun -np R` to split the work over R ranks.")
    ap.add_argument("--model", help="Hugging Face checkpoint directory (config.json + *.safetensors), a GGUF file "
                                    f"(LFM2 / LFM2-MoE, e.g. a Q4_K_M build) or a shipped "
                                    f"model ({', '.join(SHIPPED)}: trained on the King James Bible, with a "
                                    "tokenizer). Default: the built-in synthetic model (see --config)")
    ap.add_argument("--config", default="default", choices=tuple(PRESETS),
                    help="built-in synthetic model when --model is absent: 'default' (LFM2-8B-A1B structure "
                         "scaled to run in seconds), 'real8' (its real shapes, 8 layers, 4.9 GB) or 'full' "
                         "(real-size LFM2-8B-A1B, random weights, 16.7 GB)")
    ap.add_argument("--inputs", help="inputs.bin (default: the model's built-in workload, 32 × 16 tokens)")
    ap.add_argument("--answers", help="answers.bin for -v (default: the built-in workload's answers)")
    ap.add_argument("--outputs", default="outputs.bin", help="where to write logits (default outputs.bin)")
    ap.add_argument("-n", type=int, default=None, help="number of samples to run (default: all)")
    ap.add_argument("-v", "--validate", action="store_true", help="compare outputs with answers.bin: VALID/INVALID")
    ap.add_argument("-w", "--warmup", type=int, default=0, help="warm-up passes before timing (default 0)")
    add_dtype_flag(ap)
    ap.add_argument("--bf16-dot", action="store_true",
                    help="with --dtype bfloat16 on an AVX512_BF16 CPU: round activations to bf16 and use vdpbf16ps "
                         "(faster prefill, approximate results; as LFM2_BF16_DOT=1)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per forward call (default 16)")
    ap.add_argument("--threads", type=int, default=None, help="OpenMP threads per rank (default: all cores / ranks)")
    ap.add_argument("--plan", default="dp", choices=PLANS,
                    help="parallel plan over the MPI ranks: dp = every rank holds the model, samples are split "
                         "(default: no communication); ep = samples split, experts sharded E/R per rank "
                         "(all-to-all per MoE layer); tp = every expert's FFN width sharded 1/R per rank "
                         "(R = 1, 2 or 4). All plans give the same tokens")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help=f"tokens to generate in generation mode (default {GEN_DEFAULT_NEW_TOKENS})")
    ap.add_argument("--prompt", help="prompt text (needs tokenizer.json in the model directory)")
    ap.add_argument("--prompt-ids", help="prompt as comma-separated token ids, e.g. 1,2,3")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop-at-eos", action="store_true", help="stop a sequence at the config's eos token")
    ap.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    ap.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    return ap


# Arguments every rank must share (they shape the work split or the result); the prompt and the
# workload's token ids are compared too (run_inputs); --plan and --bf16-dot are compared as the
# plan and the numerics. Paths, --threads, -q and --json may differ.
AGREED_ARGS = ("n", "batch_size", "warmup", "dtype", "device", "max_new_tokens", "temperature", "top_k", "top_p",
               "seed", "stop_at_eos", "validate")


def generation_mode(args) -> bool:
    return args.prompt is not None or args.prompt_ids is not None


def check_args(args, rank: int) -> None:
    """Everything about the arguments that needs no file and no model: on every rank, first."""
    at_least("-n", args.n, 1)
    at_least("-w", args.warmup, 0)
    at_least("--threads", args.threads, 1, " (leave it out for the default)")
    at_least("--batch-size", args.batch_size, 1)
    if generation_mode(args):
        for flag, given in (("-v", args.validate), ("--inputs", args.inputs), ("--answers", args.answers),
                            ("-n", args.n is not None)):
            if given:
                raise InputError(f"{flag} is for workload mode; it cannot be combined with --prompt/--prompt-ids")
        if args.max_new_tokens is None:
            args.max_new_tokens = GEN_DEFAULT_NEW_TOKENS
        at_least("--max-new-tokens", args.max_new_tokens, 1)
        Sampler(args.temperature, args.top_k, args.top_p, args.seed)  # InputError on a bad sampling flag
    else:
        if args.max_new_tokens is not None:
            raise InputError("--max-new-tokens needs a prompt (--prompt or --prompt-ids); workload mode "
                             "computes last-token logits only")
        if args.validate and args.inputs is not None and args.answers is None:
            raise InputError(f"-v with --inputs {args.inputs} needs --answers (the answers of that workload)")
        if rank == 0:  # the rank that writes: an unwritable target fails now, not after the run
            check_writable(args.outputs, "--outputs")


def resolve_model(args, comm) -> str:
    """The checkpoint directory or GGUF file; the built-in synthetic one is written by rank 0 on
    first use (agree() is the barrier before the other ranks read it). Also resolves the default
    --dtype (float32, or auto for a GGUF file), which the ranks then compare."""
    from .engine import default_dtype

    if args.model:
        path = agree(comm, lambda: model_dir(args.model, "--model"))  # a directory, a file, or a shipped model
    else:
        from .synthetic import default_model_dir

        first = comm.Get_rank() == 0
        path = agree(comm, lambda: default_model_dir(args.config, create=first, verbose=first and not args.quiet))
    if args.dtype is None:
        args.dtype = default_dtype(path)
    return path


class Job:
    """What a run needs besides the weights, read and checked before they are loaded."""

    def __init__(self, cfg, prompt=None, tokenizer=None, ids=None, answers=None, inputs_path=None):
        self.cfg, self.prompt, self.tokenizer = cfg, prompt, tokenizer
        self.ids, self.answers, self.inputs_path = ids, answers, inputs_path
        self.checkpoint = None  # the open GGUF file cfg came from, if any (load_engine loads from it)


def prepare(args, comm, model_dir) -> Job:
    """Read the config, the prompt (tokenizer) or the workload (inputs, -n, answers) and check the
    prompts against the config, on every rank, before any weight is loaded."""
    from .engine import check_prompts, read_config
    from .workload import default_workload, read_inputs, read_logits

    rank = comm.Get_rank()
    # three agree() calls on every rank, whatever the mode (ranks given different modes must still
    # meet in the same collectives; check_same_model then tells them apart)
    cfg, ck = agree(comm, lambda: read_config(model_dir))  # ck: a GGUF file, parsed once for both

    def files():
        if generation_mode(args) or args.inputs is not None:
            return args.inputs, args.answers
        ip, dflt = default_workload(model_dir, create=rank == 0, verbose=rank == 0 and not args.quiet)
        return ip, args.answers or dflt  # the built-in workload, made by rank 0 on first use

    inputs, answers = agree(comm, files)

    def gen():
        prompt, tok = resolve_prompt(args.prompt, args.prompt_ids, model_dir, cfg.bos_token_id)
        check_prompts(cfg, [prompt], args.max_new_tokens)
        return Job(cfg, prompt=prompt, tokenizer=tok)

    def work():
        ids = read_inputs(inputs)
        n = ids.shape[0] if args.n is None else args.n
        if n > ids.shape[0]:
            raise InputError(f"-n {n}: the workload {inputs} has {ids.shape[0]} samples (choose 1..{ids.shape[0]})")
        ids = ids[:n]
        check_prompts(cfg, list(ids))  # ids in range, prompt fits the context
        ans = None
        if args.validate and rank == 0:  # rank 0 validates
            ans = read_logits(answers)
            if ans.shape[1] != cfg.vocab_size or ans.shape[0] < n:
                raise InputError(f"{answers}: holds {ans.shape[0]} × {ans.shape[1]} logits; need >= {n} × "
                                 f"{cfg.vocab_size} for this workload and model")
        return Job(cfg, ids=ids, answers=ans, inputs_path=inputs)

    job = agree(comm, gen if generation_mode(args) else work)
    job.checkpoint = ck
    return job


def run_inputs(args, job: Job) -> dict:
    """The values every rank must share (check_same_model): AGREED_ARGS and a digest of the token ids."""
    out = {"--" + k.replace("_", "-") if len(k) > 1 else "-" + k: getattr(args, k) for k in AGREED_ARGS}
    toks = np.ascontiguousarray(job.ids if job.ids is not None else np.asarray(job.prompt, np.int32), np.int32)
    out["token ids"] = f"{toks.shape} sha256 {hashlib.sha256(toks.tobytes()).hexdigest()[:16]}"
    return out


def default_threads(size: int) -> int:
    """Threads per rank: the node's cores shared by its `size` ranks, and no more than the cores
    this process may run on (a rank bound to one core by the launcher gets one thread)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(usable, (os.cpu_count() or 1) // size))


def load_engine(args, comm, model_dir, inputs: dict | None = None, checkpoint=None):
    """Load the engine on every rank (from `checkpoint`, the open checkpoint of model_dir, where
    the caller has one) and check that the ranks agree (check_same_model) on the model, plan,
    numerics and `inputs` (the caller's {name: value} that shape the work: run_inputs here, the
    slot and step sizes in serve); install the plan's executor."""
    from .engine import Engine

    plan = agree(comm, lambda: ParallelPlan(args.plan, comm.Get_size(), comm.Get_rank()))  # before loading
    threads = args.threads or default_threads(node_local(comm)[1])  # cores shared by this node's ranks
    # every agree() below runs on every rank whatever its arguments: collectives must pair up
    agree(comm, lambda: enable_bf16_dot(args.dtype, args.device) if args.bf16_dot else None)
    numerics = cli_numerics()
    t0 = time.perf_counter()
    verbose = not args.quiet and comm.Get_rank() == 0
    if checkpoint is None:
        eng = agree(comm, lambda: Engine.from_pretrained(model_dir, dtype=args.dtype, device=args.device,
                                                         num_threads=threads, verbose=verbose))
    else:
        eng = agree(comm, lambda: Engine.from_checkpoint(checkpoint, dtype=args.dtype, device=args.device,
                                                         num_threads=threads, verbose=verbose))
    log.info(f"loaded {model_dir} ({eng.config.model_type}, {eng.config.num_hidden_layers} layers, "
             f"dtype {eng.dtype_description}) in {time.perf_counter() - t0:.2f} s; {comm.Get_size()} rank(s) × "
             f"{threads} threads")
    check_same_model(comm, eng.config.fingerprint(), eng.fingerprint, args.plan, numerics, inputs)
    eng.parallel_plan = plan
    if args.plan != "dp":  # also on 1 rank: tp's canonical slice sums give the same bits at 1, 2 and 4 ranks
        from .parallel import executors

        executors.install(eng, plan, comm)
    return eng


def run_workload(args, comm, eng, model_dir, job: Job) -> dict:
    from .workload import write_logits

    rank, size = comm.Get_rank(), comm.Get_size()
    ids, ans, n = job.ids, job.answers, job.ids.shape[0]
    plan = eng.parallel_plan  # dp/ep: this rank's share of the samples; tp: all of them

    def run_all():  # every rank makes plan.num_passes() forward passes (EP meets in each MoE layer)
        return dpl.local_logits(eng, plan, ids, args.batch_size)

    for _ in range(args.warmup):
        run_all()
    comm.Barrier()
    t0 = time.perf_counter()
    local = run_all()
    comm.Barrier()
    elapsed = time.perf_counter() - t0
    logits = dpl.gather_logits(comm, plan, local, n)
    summary = {"mode": "workload", "model": model_dir, "dtype": eng.dtype, "plan": args.plan, "ranks": size,
               "samples": n, "seq_len": int(ids.shape[1]), "seconds": elapsed,
               "samples_per_s": n / elapsed, "prompt_tokens_per_s": n * ids.shape[1] / elapsed}
    if rank == 0:
        write_logits(args.outputs, logits)
        summary["outputs"] = args.outputs
        log.info(f"{n} samples × {ids.shape[1]} tokens in {elapsed:.3f} s: {n / elapsed:.2f} samples/s, "
                 f"{n * ids.shape[1] / elapsed:.1f} prompt tokens/s -> {args.outputs}")
        if ans is not None:
            summary["validation"] = judge(args, model_dir, ids, logits, ans, eng.dtype)
    return summary


def judge(args, model_dir, ids, logits, ans, dtype: str = "float32") -> dict:
    """-v: every logit within 1e-3 of the answers -> VALID. Mismatching samples that a routing
    near-tie explains (workload.explain_near_ties; tried when at most 1/20 of the samples
    mismatch) are listed apart and not judged (docs/validation.md). Prints the verdict.
    A block type quantized on load (--dtype q8_0|q4_0|q4_k) is judged against the reference on the
    dequantized weights (workload.quantized_answers: what the engine is defined to compute); its
    agreement with the float answers (the quantization's error) is reported beside, not judged."""
    from .quant import QUANT_DTYPES
    from .workload import explain_near_ties, mismatching_samples, quantized_answers, validate, with_near_ties

    n = logits.shape[0]
    out = sys.stderr if args.json else sys.stdout
    vs_float = None
    if dtype in QUANT_DTYPES:
        vs_float = validate(logits, ans)
        print(f"{dtype}: against the float model's answers (the quantization error, not judged): top-1 agreement "
              f"{vs_float['top1_accuracy'] * 100:.1f}%, max |error| {vs_float['max_abs_error']:.2e}; judging "
              f"against the NumPy reference on the dequantized {dtype} weights", file=out, flush=True)
        ans = quantized_answers(model_dir, dtype, ids, verbose=not args.quiet)
    res = validate(logits, ans)
    if vs_float is not None:
        res["float_answers"] = {k: vs_float[k] for k in ("top1_accuracy", "max_abs_error", "mismatches")}
    bad = [] if res["valid"] else mismatching_samples(logits, ans)
    if bad and len(bad) <= max(1, n // 20) and vs_float is None:  # (near ties: on the float reference only)
        log.info(f"{len(bad)} sample(s) off by > 1e-3: checking them for MoE routing near-ties with the reference")
        res = with_near_ties(res, logits, ans, explain_near_ties(model_dir, ids, logits, bad))
    ties = res.get("near_ties", [])
    judged = res.get("judged", n)
    verdict = "VALID" if res["valid"] else "INVALID"
    line = (f"{verdict}: top-1 accuracy {res['top1_accuracy'] * 100:.1f}%, "
            f"max |error| {res['max_abs_error']:.2e} over {judged} samples")
    if ties:
        line += f"; {len(ties)} of {n} samples not judged (MoE routing near-ties, listed below)"
    if not res["valid"] and "first_mismatch" in res:
        fm = res["first_mismatch"]
        line += (f"; {res['mismatches']} logits off by > 1e-3, first at sample {fm['sample']} "
                 f"index {fm['index']}: {fm['output']:.6f} vs {fm['answer']:.6f}")
    for t in ties:
        line += (f"\n  near-tie: sample {t['sample']}, layer {t['layer']}, token {t['token']}: expert scores "
                 f"{t['margin']:.2e} apart < float32 bound {t['bound']:.2e}; with the other expert there the "
                 "reference matches within 1e-3")
    print(line, file=out, flush=True)
    return res


def run_generation(args, comm, eng, model_dir, job: Job) -> dict:
    rank, size = comm.Get_rank(), comm.Get_size()
    prompt, tok = job.prompt, job.tokenizer
    t0 = time.perf_counter()
    steps = {"n": 0}
    t_first = [None]

    def on_step(step, live):
        if t_first[0] is None:
            t_first[0] = time.perf_counter()
        steps["n"] = step

    # Text mode: the prompt, then each token's text as it comes (rank 0 runs the single prompt under
    # every plan), decoded incrementally as the server does (a split UTF-8 character is held back).
    from .tokenizer import TextTracker

    stream = TextTracker(tok, []) if tok is not None and rank == 0 and not args.json else None
    on_token = None
    if stream is not None:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()

        def on_token(_i, token):
            sys.stdout.write(stream.push(token))
            sys.stdout.flush()

    # dp: rank 0 runs the prompt; ep: rank 0 runs it, the others serve their experts; tp: all run it
    res = dpl.plan_generate(eng, eng.parallel_plan, comm, [prompt], args.max_new_tokens, on_step=on_step,
                            on_token=on_token, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            seed=args.seed, stop_at_eos=args.stop_at_eos)
    out = res[0] if rank == 0 else []
    elapsed = time.perf_counter() - t0
    comm.Barrier()
    summary = {"mode": "generate", "model": model_dir, "dtype": eng.dtype, "plan": args.plan, "ranks": size,
               "prompt_ids": list(map(int, prompt)), "tokens": out, "seconds": elapsed}
    if rank == 0:
        prefill_s = (t_first[0] or time.perf_counter()) - t0
        decode_s = max(elapsed - prefill_s, 1e-9)
        summary.update(prefill_tokens_per_s=len(prompt) / max(prefill_s, 1e-9),
                       decode_tokens_per_s=max(len(out) - 1, 0) / decode_s)
        if tok is not None:
            summary["text"] = tok.decode(out)
        if stream is not None:  # the streamed text's tail and its newline, before the stats line on stderr
            print(stream.push(None), flush=True)
        elif not args.json:
            print(" ".join(map(str, out)), flush=True)
        log.info(f"prompt {len(prompt)} tokens, generated {len(out)} in {elapsed:.3f} s "
                 f"(prefill {summary['prefill_tokens_per_s']:.1f} tok/s, decode {summary['decode_tokens_per_s']:.1f} tok/s)")
    return summary


def _main(comm, args) -> int:
    rank = comm.Get_rank()
    log.configure(rank, comm.Get_size(), 0 if args.quiet else 1)
    agree(comm, lambda: check_args(args, rank))  # typed errors before any expensive work, printed once
    model_dir = resolve_model(args, comm)
    job = prepare(args, comm, model_dir)
    eng = load_engine(args, comm, model_dir, run_inputs(args, job), job.checkpoint)
    if job.checkpoint is not None:
        job.checkpoint.close()  # the engine holds its own copies of the weights
    if generation_mode(args):
        summary = run_generation(args, comm, eng, model_dir, job)
    else:
        summary = run_workload(args, comm, eng, model_dir, job)
    if rank == 0 and args.json:
        print(json.dumps(summary), flush=True)
    if summary.get("validation") is not None and not summary["validation"]["valid"]:
        return 1
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda comm: _main(comm, args))


if __name__ == "__main__":
    sys.exit(main())
