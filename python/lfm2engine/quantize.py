"""python -m lfm2engine.quantize SRC OUT.gguf --dtype TYPE: write a checkpoint as a GGUF file once.

SRC is a safetensors checkpoint directory (Hugging Face layout) or a shipped model name; OUT is
written atomically in llama.cpp's names and metadata, so that both lfm2engine (--model OUT.gguf)
and llama.cpp load it. TYPE: q8_0, q4_0, q4_k, q4_k_m (llama.cpp's Q4_K_M mix), f16, bf16, f32;
norms, conv taps, the router and the expert bias stay F32 (docs/gguf.md). The tokenizer.json of
SRC, when there is one, goes into the file's metadata; without one the file has llama.cpp's
"none" vocabulary (token ids only), as with --no-tokenizer. Every refusal (unknown type, unwritable output, a width that
is not whole blocks, a bad checkpoint) comes before any work: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from .cli import call_or_exit_code
from .errors import InputError


def build_parser() -> argparse.ArgumentParser:
    from .checkpoint.gguf import DTYPES
    from .models import SHIPPED

    ap = argparse.ArgumentParser(prog="python -m lfm2engine.quantize",
                                 description="Write a safetensors checkpoint as a (quantized) GGUF file.")
    ap.add_argument("src", help=f"checkpoint directory or shipped model ({', '.join(SHIPPED)})")
    ap.add_argument("out", help="the GGUF file to write (replaced atomically)")
    ap.add_argument("--dtype", required=True, help=f"one of {', '.join(DTYPES)}")
    ap.add_argument("--name", default=None, help="general.name of the file (default: the source's directory name)")
    ap.add_argument("--no-tokenizer", action="store_true",
                    help="write llama.cpp's 'none' vocabulary (token ids only) even when SRC has a tokenizer.json")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def run(src: str, out: str, dtype: str, name: str | None = None, quiet: bool = False,
        tokenizer: bool = True) -> dict[str, int]:
    from .checkpoint import Checkpoint
    from .checkpoint.gguf import DTYPES, write_gguf
    from .checkpoint.writing import check_writable
    from .models import resolve_name

    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    check_writable(out, "OUT")
    d = resolve_name(src)
    if not os.path.isdir(d):
        raise InputError(f"SRC {src}: not a checkpoint directory (nor a shipped model name)")
    ckpt = Checkpoint(d)
    try:
        tj = os.path.join(d, "tokenizer.json")
        return write_gguf(ckpt, out, dtype, tokenizer_json=tj if tokenizer and os.path.isfile(tj) else None,
                          progress=False if quiet else None, name=name or os.path.basename(os.path.abspath(d)))
    finally:
        ckpt.close()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    counts, code = call_or_exit_code(
        "lfm2engine.quantize",
        lambda: run(args.src, args.out, args.dtype, args.name, args.quiet, tokenizer=not args.no_tokenizer))
    if code:
        return code
    mix = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes; tensors: {mix})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
