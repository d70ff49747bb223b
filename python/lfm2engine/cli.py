"""What every command line of the package parses the same way: number lists and the prompt.

`parse_list` reads a comma-separated list of integers or numbers ("1,2,4", with ranges "1-8"),
optionally bounded, and raises InputError messages that name the flag. `resolve_prompt` turns
`--prompt TEXT` (through the checkpoint's tokenizer.json, BOS prepended) or `--prompt-ids 1,2,3`
into token ids. `add_dtype_flag` is the one --dtype; `enable_bf16_dot` checks and applies --bf16-dot.
`call_or_exit_code` is the single-process CLIs' one error report (one line, exit status 2).
Used by `lfm2engine.generate`,
`lfm2engine.specdecode` and `lfm2engine.perplexity`.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from .errors import InputError, LFM2Error
from .tokenizer import Tokenizer, load_tokenizer


def parse_list(text: str, name: str, kind: type = int, *, ranges: bool = False, low=None, high=None,
               expected: str | None = None, meaning: str = "") -> list:
    """Comma-separated values of `kind` (int or float); empty items (``1,,2``, a trailing comma)
    are skipped. ranges=True (integers only) also reads ``a-b`` as a, a + 1, ..., b.

    Bounds: every value v must satisfy low <= v (when low is given) and v < high (when high is).
    Messages name `name`: a flag ("-k"), or the key of a compound option with its "=" ("skip="),
    which is then written next to the text ("skip='x'" rather than "-k 'x'"):
      - unreadable: "{name} {text!r}: expected {expected}" when `expected` describes the syntax,
        else "{name} must be comma-separated integers (numbers), found {text!r}";
      - nothing in it: "{name} is empty";
      - out of bounds: "{name} must be >= low (meaning), found v", "{name} must be in [low, high),
        found v" or "{name} must be < high, found v" for the first such value."""
    out: list = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            dash = part.find("-", 1) if ranges else -1  # a leading '-' is a sign
            if dash > 0:
                out += list(range(int(part[:dash]), int(part[dash + 1:]) + 1))
            else:
                out.append(kind(part))
    except ValueError:
        if expected is not None:
            sep = "" if name.endswith("=") else " "
            raise InputError(f"{name}{sep}{text!r}: expected {expected}") from None
        noun = "integers" if kind is int else "numbers"
        raise InputError(f"{name} must be comma-separated {noun}, found {text!r}") from None
    if not out:
        raise InputError(f"{name} is empty")
    for v in out:
        if (low is not None and not v >= low) or (high is not None and not v < high):
            raise InputError(f"{name} must be {_bounds(low, high)}{f' ({meaning})' if meaning else ''}, found {v}")
    return out


def at_least(name: str, value, minimum, hint: str = "") -> None:
    """The CLIs' one lower-bound check: InputError "{name} must be >= {minimum}, found {value}{hint}"
    unless value >= minimum (None means "not given" and passes; NaN fails)."""
    if value is not None and not value >= minimum:
        raise InputError(f"{name} must be >= {minimum}, found {value}{hint}")


def _bounds(low, high) -> str:
    if high is None:
        return f">= {low:g}"
    if low is None:
        return f"< {high:g}"
    return f"in [{low:g}, {high:g})"


DTYPE_HELP = ("weight storage type; compute is fp32. float32 (the default for a checkpoint directory: exact), "
              "bfloat16, float16; q8_0, q4_0, q4_k: block-quantized on load (GGUF's layouts; rows must split into "
              "whole blocks of 32 / 256 weights); auto: every tensor as stored (the default for a GGUF file, which "
              "loads as auto or float32 = dequantized, never re-quantized)")


def call_or_exit_code(prog: str, fn):
    """(fn(), 0) for a single-process command line; or, when fn raises a typed error (LFM2Error:
    "<prog>: <Type>: <message>") or an OSError ("<prog>: <message>"), that one line on stderr and
    (None, 2)."""
    try:
        return fn(), 0
    except LFM2Error as e:
        print(f"{prog}: {type(e).__name__}: {e}", file=sys.stderr)
    except OSError as e:
        print(f"{prog}: {e}", file=sys.stderr)
    return None, 2


def add_dtype_flag(ap) -> None:
    """--dtype of every command line: weights.DTYPES, default None (float32, or auto for a GGUF file)."""
    from .weights import DTYPES

    ap.add_argument("--dtype", default=None, choices=DTYPES, help=DTYPE_HELP)


def enable_bf16_dot(dtype: str, device: str) -> None:
    """--bf16-dot: turn on the bf16 dot mode of the CPU ops (`_core.set_bf16_dot`); InputError unless
    --dtype bfloat16 on the cpu device of a CPU with AVX512_BF16."""
    from . import _core

    if dtype != "bfloat16" or device != "cpu":
        raise InputError(f"--bf16-dot needs --dtype bfloat16 on the cpu device (got --dtype {dtype}, "
                         f"--device {device})")
    try:
        _core.set_bf16_dot(True)
    except ValueError as e:  # no AVX512_BF16, or a SIMD path below avx512
        raise InputError(f"--bf16-dot: {e} (SIMD path {_core.simd_level()}; CPU features: "
                         f"{', '.join(_core.cpu_features())})") from None


def numerics() -> str:
    """The numerics modes of the compiled ops that change results (every MPI rank must agree on
    them, parallel.check_same_model): the SIMD path, the bf16 dot mode and the quantized-activation
    dot mode of the block types (LFM2_QUANT_DOT)."""
    from . import _core

    out = f"simd {_core.simd_level()}, bf16 dot {'on' if _core.bf16_dot() else 'off'}"
    out += f", quant dot {'on' if _core.quant_dot() else 'off'}"
    return out


class Prompt(NamedTuple):
    """A resolved prompt: its token ids, and the tokenizer that made them (None for --prompt-ids),
    for decoding the continuation back to text."""

    ids: list
    tokenizer: Tokenizer | None


def resolve_prompt(text: str | None, ids: str | None, model_dir: str, bos_token_id: int | None,
                   default=None) -> Prompt:
    """--prompt TEXT or --prompt-ids 1,2,3 -> Prompt. TEXT is encoded with model_dir/tokenizer.json
    and the BOS id prepended (when the config has one). Neither given: `default` (token ids), or an
    InputError when there is none. Both given, an empty TEXT, no tokenizer.json, unreadable ids:
    InputError."""
    if text is not None and ids is not None:
        raise InputError("give either --prompt or --prompt-ids, not both")
    if text is not None:
        tok = load_tokenizer(model_dir)
        if tok is None:
            raise InputError(f"--prompt needs {model_dir}/tokenizer.json; this checkpoint has none: use --prompt-ids")
        if not text:
            raise InputError("--prompt is empty")
        return Prompt(tok.encode(text, add_bos=bos_token_id), tok)
    if ids is not None:
        return Prompt(parse_list(ids, "--prompt-ids"), None)
    if default is None:
        raise InputError("give a prompt: --prompt TEXT or --prompt-ids 1,2,3")
    return Prompt([int(t) for t in default], None)
