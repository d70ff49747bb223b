"""`python -m lfm2engine.perplexity`: perplexity of a checkpoint over a text file or an inputs.bin.

Text (--text FILE): the file is tokenized with the checkpoint's tokenizer.json (no BOS) into one
stream of N tokens, scored with a sliding window as in llama.cpp's `llama-perplexity` and the
Hugging Face perplexity recipe: windows of --ctx tokens start every --stride tokens; each window
is fed as [BOS] + tokens[begin : begin + ctx] (BOS when the config has one; --no-bos leaves it out)
and scores only the tokens that no earlier window scored, so every token is predicted exactly once,
with at least ctx - stride tokens of context (the first window: from BOS alone on). Workload
(--inputs inputs.bin): every row is its own sequence; tokens 1..L-1 of each row are scored.

    perplexity = exp(sum of -log p(token | context) / number of scored tokens)

log-softmax is taken in float64 over the engine's float32 logits. Prints one line (or --json, a
JSON object) on stdout; a tqdm progress bar on stderr. Bad input: `InputError: message`, exit 2.
`--text held-out` names the KJV test split shipped with the tiny models (models.held_out_text()).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import NamedTuple

import numpy as np

from . import log
from .cli import add_dtype_flag, at_least, enable_bf16_dot
from .errors import InputError
from .models import SHIPPED, model_dir


class Window(NamedTuple):
    """tokens[begin:end] fed after an optional BOS; the last `scored` of them are scored."""

    begin: int
    end: int
    scored: int


def windows(n: int, ctx: int, stride: int) -> list[Window]:
    """Sliding windows over a stream of n tokens: begin = 0, stride, 2·stride, ...; every token is
    scored by exactly one window (the first that reaches it). 1 <= stride <= ctx."""
    at_least("--ctx", ctx, 1)
    if not 1 <= stride <= ctx:
        raise InputError(f"--stride must be in [1, ctx={ctx}], found {stride}")
    out, prev_end, begin = [], 0, 0
    while prev_end < n:
        end = min(begin + ctx, n)
        out.append(Window(begin, end, end - prev_end))
        prev_end, begin = end, begin + stride
    return out


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return lse - x[np.arange(len(targets)), targets]


def all_logits(eng, seqs: list[np.ndarray], batch_size: int = 8):
    """Yield (seq, logits [len(seq), V]) for each sequence, batch_size sequences per forward call."""
    for a in range(0, len(seqs), batch_size):
        part = seqs[a:a + batch_size]
        s = eng.session(len(part), max(len(x) for x in part))
        logits = s.forward(list(range(len(part))), part, all_logits=True)
        off = 0
        for x in part:
            yield x, logits[off:off + len(x)]
            off += len(x)


def text_sequences(ids, ctx: int, stride: int, bos: int | None) -> tuple[list[np.ndarray], list[int]]:
    """The windows of a token stream as sequences to run, and the first scored position of each."""
    ids = np.asarray(ids, dtype=np.int32)
    head = np.asarray([] if bos is None else [bos], np.int32)
    seqs, first = [], []
    for w in windows(len(ids), ctx, stride):
        seq = np.concatenate([head, ids[w.begin:w.end]])
        seqs.append(seq)
        first.append(max(1, len(seq) - w.scored))  # without BOS the stream's first token is not scored
    return seqs, first


def _score(eng, seqs: list[np.ndarray], first: list[int], batch_size: int, progress) -> tuple[float, int]:
    """Sum of NLL and count over sequences: in seqs[j], positions first[j]..len-1 are scored
    (each predicted from the positions before it)."""
    total, count = 0.0, 0
    for j, (x, lg) in enumerate(all_logits(eng, seqs, batch_size)):
        nll = token_nll(lg[first[j] - 1:len(x) - 1], x[first[j]:])
        total += float(nll.sum())
        count += len(nll)
        if (j + 1) % batch_size == 0 or j + 1 == len(seqs):
            progress((j % batch_size) + 1)
    return total, count


def text_perplexity(eng, ids, ctx: int, stride: int, bos: int | None, batch_size: int = 8,
                    progress=lambda n: None) -> dict:
    """Sliding-window perplexity of one token stream (module docstring). ids: token ids (no BOS)."""
    ids = np.asarray(ids, dtype=np.int32)
    if ids.size < (1 if bos is not None else 2):
        raise InputError(f"the text has {ids.size} token(s): too few to score")
    if (bos is not None) + ctx > eng.config.max_position_embeddings:
        raise InputError(f"--ctx {ctx}{' + BOS' if bos is not None else ''} exceeds the model's context of "
                         f"{eng.config.max_position_embeddings} tokens")
    seqs, first = text_sequences(ids, ctx, stride, bos)
    total, count = _score(eng, seqs, first, batch_size, progress)
    return {"tokens": int(ids.size), "scored": count, "windows": len(seqs), "ctx": ctx, "stride": stride,
            "bos": bos is not None, "nll": total / count, "perplexity": float(np.exp(total / count))}


def rows_perplexity(eng, rows: np.ndarray, batch_size: int = 8, progress=lambda n: None) -> dict:
    """Perplexity of the rows of an inputs.bin: tokens 1..L-1 of every row, each row on its own."""
    if rows.shape[1] < 2:
        raise InputError(f"inputs rows hold {rows.shape[1]} token(s); at least 2 are needed to score one")
    seqs = eng.check_prompts(list(rows))
    total, count = _score(eng, seqs, [1] * len(seqs), batch_size, progress)
    return {"rows": int(rows.shape[0]), "seq_len": int(rows.shape[1]), "scored": count,
            "nll": total / count, "perplexity": float(np.exp(total / count))}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lfm2engine.perplexity",
        description="Perplexity of a checkpoint over a text file (sliding window, as llama-perplexity) or over "
                    "the rows of an inputs.bin workload.")
    ap.add_argument("--model", required=True,
                    help=f"checkpoint directory or shipped model ({', '.join(SHIPPED)})")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="UTF-8 text file, tokenized with the checkpoint's tokenizer.json "
                                    "('held-out': the KJV test split the shipped tiny models never saw)")
    src.add_argument("--inputs", help="inputs.bin: every row is scored as its own sequence")
    ap.add_argument("--ctx", type=int, default=128, help="tokens per window, without BOS (default 128)")
    ap.add_argument("--stride", type=int, default=None, help="window start step (default ctx / 2)")
    ap.add_argument("--no-bos", action="store_true", help="do not put BOS in front of each window")
    ap.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of the text")
    add_dtype_flag(ap)
    ap.add_argument("--bf16-dot", action="store_true",
                    help="with --dtype bfloat16 on an AVX512_BF16 CPU: bf16-rounded activations (vdpbf16ps)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch-size", type=int, default=8, help="windows per forward call (default 8)")
    ap.add_argument("--threads", type=int, default=None, help="threads for the C++ ops (default: all cores)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar, only errors on stderr")
    return ap


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"--text {path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"--text {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _main(args) -> int:
    from .engine import Engine
    from .models import held_out_text
    from .tokenizer import load_tokenizer

    log.configure(0, 1, 0 if args.quiet else 1)
    at_least("--batch-size", args.batch_size, 1)
    at_least("--max-tokens", args.max_tokens, 1)
    stride = args.stride if args.stride is not None else max(1, args.ctx // 2)
    windows(1, args.ctx, stride)  # validates --ctx / --stride before loading anything
    mdir = model_dir(args.model, "--model")
    if args.bf16_dot:
        enable_bf16_dot(args.dtype, args.device)
    eng = Engine.from_pretrained(mdir, dtype=args.dtype, device=args.device, num_threads=args.threads)
    t0 = time.perf_counter()
    if args.text is not None:
        path = held_out_text() if args.text == "held-out" else args.text
        tok = load_tokenizer(mdir)
        if tok is None:
            raise InputError(f"--text needs {mdir}/tokenizer.json; this checkpoint has none: use --inputs")
        ids = tok.encode(_read_text(path))
        if args.max_tokens is not None:
            ids = ids[:args.max_tokens]
        bos = None if args.no_bos else eng.config.bos_token_id
        total = len(windows(len(ids), args.ctx, stride)) if ids else 0
        run = lambda progress: text_perplexity(eng, ids, args.ctx, stride, bos, args.batch_size, progress)  # noqa: E731
        res = dict(_with_progress(run, total, "windows", args.quiet), text=path)
    else:
        from .workload import read_inputs

        rows = read_inputs(args.inputs)
        run = lambda progress: rows_perplexity(eng, rows, args.batch_size, progress)  # noqa: E731
        res = dict(_with_progress(run, rows.shape[0], "rows", args.quiet), inputs=args.inputs)
    res.update(model=mdir, dtype=eng.dtype, bf16_dot=bool(args.bf16_dot), seconds=time.perf_counter() - t0)
    if args.json:
        print(json.dumps(res), flush=True)
    else:
        print(f"perplexity {res['perplexity']:.4f} (mean NLL {res['nll']:.5f} nats) over {res['scored']} tokens, "
              f"{mdir}, {eng.dtype_description}{' + bf16 dot' if args.bf16_dot else ''}", flush=True)
    return 0


def _with_progress(run, total: int, unit: str, quiet: bool) -> dict:
    from tqdm import tqdm

    with tqdm(total=total, unit=unit, disable=quiet, file=sys.stderr, desc="perplexity") as bar:
        return run(bar.update)


def main(argv=None) -> int:
    from .parallel import run_guarded

    args = build_parser().parse_args(argv)
    return run_guarded(lambda comm: _main(args))


if __name__ == "__main__":
    sys.exit(main())
