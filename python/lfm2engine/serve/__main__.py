"""`python -m lfm2engine.serve`: the OpenAI-compatible HTTP server, also under `mpirun -np R`.

Rank 0 loads its share of the model, speaks HTTP and schedules; every other rank loads its
share and steps the batches rank 0 broadcasts (serve/steps.py). Model loading and the plans
are generate.py's (`resolve_model`, `load_engine`): --plan dp|ep|tp behaves as there.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys

from .. import log
from ..cli import add_dtype_flag, at_least
from ..generate import PLANS, load_engine, resolve_model
from ..parallel import run_guarded


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lfm2engine.serve",
        description="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /v1/models, /health, "
                    "/metrics) with continuous batching. Run under `mpirun -np R` to serve over R ranks: rank 0 "
                    "speaks HTTP, every rank steps the same batch.")
    ap.add_argument("--model", help="checkpoint directory (config.json + *.safetensors; tokenizer.json and "
                                    "tokenizer_config.json enable text prompts and chat) or a shipped model "
                                    "(tiny, tiny-draft). Default: the built-in synthetic model (token-id prompts only)")
    ap.add_argument("--config", default="default", choices=("default", "full"),
                    help="built-in synthetic model when --model is absent (as lfm2engine.generate)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    ap.add_argument("--served-model-name", default=None,
                    help="the model id clients send (default: the model directory's name)")
    ap.add_argument("--plan", default="dp", choices=PLANS,
                    help="parallel plan over the MPI ranks: dp = a replica per rank, requests spread over them; "
                         "ep = experts sharded over ranks, requests spread; tp = every expert's FFN width sharded, "
                         "every rank runs every request (1, 2 or 4 ranks)")
    add_dtype_flag(ap)
    ap.add_argument("--bf16-dot", action="store_true", help="as lfm2engine.generate --bf16-dot")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None, help="OpenMP threads per rank (default: cores / ranks)")
    ap.add_argument("--max-batch", type=int, default=32,
                    help="sequence slots per rank (dp/ep: ranks x this many requests run at once; default 32)")
    ap.add_argument("--max-context", type=int, default=2048,
                    help="tokens per slot: prompt + max_tokens of one request (default 2048; KV budget = slots x this)")
    ap.add_argument("--step-tokens", type=int, default=256,
                    help="token budget of one engine step: decodes first, prompt chunks fill the rest (default 256)")
    ap.add_argument("--max-queue", type=int, default=256,
                    help="waiting requests beyond the running batch before new ones get 429 (default 256)")
    ap.add_argument("--max-body-bytes", type=int, default=8 << 20, help="largest request body (default 8 MiB; 413)")
    ap.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    return ap


def _main(comm, args) -> int:
    from ..errors import InputError
    from .steps import StepExecutor, check_slots

    rank = comm.Get_rank()
    log.configure(rank, comm.Get_size(), 0 if args.quiet else 1)
    missing = [m for m in ("fastapi", "uvicorn", "jinja2") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"serving needs {', '.join(missing)}: pip install 'lfm2engine[serve]'")
    for name in ("step_tokens", "max_queue", "max_body_bytes"):
        at_least(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    if not 0 <= args.port < 65536:
        raise InputError(f"--port must be in [0, 65535], found {args.port}")
    model_dir = resolve_model(args, comm)
    agreed = ("dtype", "device", "max_batch", "max_context", "step_tokens")  # every rank steps the same batches
    eng = load_engine(args, comm, model_dir, {"--" + k.replace("_", "-"): getattr(args, k) for k in agreed})
    check_slots(args.max_batch, args.max_context, eng)
    ex = StepExecutor(eng, comm, eng.parallel_plan, args.max_batch, args.max_context)
    if rank != 0:
        # mpirun forwards SIGTERM / SIGINT to every rank: the others wait for rank 0's stop
        # message (sent once uvicorn has shut down) instead of dying under it mid-step
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        ex.serve_forever()
        return 0
    from .server import Server

    try:
        srv = Server(eng, model_dir, ex, max_context=args.max_context, step_tokens=args.step_tokens,
                     max_queue=args.max_queue, model_name=args.served_model_name, host=args.host, port=args.port,
                     max_body_bytes=args.max_body_bytes, log_level="error" if args.quiet else "warning")
    except OSError as e:
        ex.close()
        raise InputError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    print(f"lfm2engine.serve: model '{srv.state.model_name}' ({args.plan} over {comm.Get_size()} rank(s), "
          f"{ex.num_slots} slots x {ex.capacity} tokens) listening on {srv.url} (pid {os.getpid()})", flush=True)
    srv.serve()
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda comm: _main(comm, args))


if __name__ == "__main__":
    sys.exit(main())
