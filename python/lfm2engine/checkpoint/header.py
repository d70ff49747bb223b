"""One safetensors header, parsed as strictly as the format is written.

The format (https://huggingface.co/docs/safetensors): 8 bytes little-endian header length N,
N bytes of UTF-8 JSON (an object; may be padded with trailing spaces), then the data buffer.
Each entry other than "__metadata__" (an object of strings) is {"dtype", "shape", "data_offsets"}:
shape a list of non-negative integers, data_offsets [begin, end] relative to the buffer. The
buffer must be indexed entirely by the tensors, without overlaps, holes or trailing bytes (the
format forbids them so that a file cannot hold bytes no tensor owns, nor two tensors one byte).

Every problem is appended to a list (one CheckpointError lists them all, see reading.py); no
TypeError, OverflowError or RecursionError escapes for any header bytes. Data may start at any
offset (padding is optional): an unaligned tensor is copied when read (reading.Checkpoint.raw).
"""

from __future__ import annotations

import json
import math
import os
import struct

from .dtypes import DTYPE_TAGS

MAX_HEADER = 100 * 1024 * 1024  # what the reference implementation accepts
ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


class TensorRef:
    """Where one tensor lives: file, dtype tag, shape, absolute byte range."""

    __slots__ = ("file", "dtype", "shape", "start", "end")

    def __init__(self, file, dtype, shape, start, end):
        self.file, self.dtype, self.shape, self.start, self.end = file, dtype, shape, start, end


class _Invalid(ValueError):
    """Raised inside the JSON parser for what json.loads itself accepts but the format does not."""


def _no_duplicates(pairs):
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise _Invalid(f"key {k!r} appears twice")
        seen.add(k)
    return dict(pairs)


def _no_constant(name):
    raise _Invalid(f"{name} is not JSON")


def strict_json(text: str):
    """json.loads that refuses duplicate keys and NaN/Infinity; ValueError (with the reason) for
    anything else that is not JSON, including nesting too deep for the parser."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise _Invalid("nested too deeply") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(fname: str, tname: str, info, problems: list[str]):
    """(dtype, shape, begin, end) of one header entry, or None after appending what is wrong."""
    where = f"{fname}: tensor {tname!r}"
    if not isinstance(info, dict):
        problems.append(f"{where}: entry is a {type(info).__name__}, not an object with dtype, shape, data_offsets")
        return None
    bad = []
    missing, extra = ENTRY_KEYS - set(info), set(info) - ENTRY_KEYS
    if missing:
        bad.append(f"missing {', '.join(sorted(missing))}")
    if extra:
        bad.append(f"unknown key(s) {', '.join(sorted(map(repr, extra)))}")
    dt, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if "dtype" in info and not (isinstance(dt, str) and dt in DTYPE_TAGS):
        bad.append(f"dtype {dt}; supported: {', '.join(DTYPE_TAGS)}")
    if "shape" in info and not (isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape)):
        bad.append(f"shape {_short(shape)} is not a list of non-negative integers")
    if "data_offsets" in info and not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)
                                       and 0 <= offs[0] <= offs[1]):
        bad.append(f"data_offsets {_short(offs)} are not two integers 0 <= begin <= end")
    if bad:
        problems.append(f"{where}: " + "; ".join(bad))
        return None
    nbytes = math.prod(shape) * DTYPE_TAGS[dt][1]  # Python ints: no overflow for any shape
    if offs[1] - offs[0] != nbytes:
        problems.append(f"{where}: byte range [{offs[0]}, {offs[1]}) holds {offs[1] - offs[0]} bytes, "
                        f"but shape {_short(shape)} {dt} needs {nbytes}")
        return None
    return dt, tuple(shape), offs[0], offs[1]


def _short(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _layout(fname: str, spans: list[tuple[int, int, str]], buffer: int, problems: list[str]) -> None:
    """The data buffer of `buffer` bytes must be covered exactly once by the tensors' ranges."""
    at, prev = 0, None
    for b, e, n in sorted(spans):
        if b < at:
            problems.append(f"{fname}: tensor {n!r} bytes [{b}, {e}) overlap tensor {prev!r} (ends at {at})")
        elif b > at:
            problems.append(f"{fname}: bytes [{at}, {b}) of the data belong to no tensor (a hole before {n!r})")
        if e > at:
            at, prev = e, n
    if at > buffer:
        problems.append(f"{fname}: tensor {prev!r} ends at data byte {at} but the file holds {buffer} data bytes "
                        "(truncated)")
    elif at < buffer:
        problems.append(f"{fname}: {buffer - at} trailing bytes after the last tensor belong to no tensor")


def read_header(path: str, problems: list[str]) -> dict[str, TensorRef]:
    """Parse one .safetensors header; append every problem found to `problems`."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                problems.append(f"{name}: file is {size} bytes, too short for a safetensors header (truncated?)")
                return {}
            (hlen,) = struct.unpack("<Q", raw)
            if hlen > MAX_HEADER or 8 + hlen > size:
                problems.append(f"{name}: header length {hlen} exceeds the file size {size} (truncated or not safetensors)")
                return {}
            header = strict_json(f.read(hlen).decode("utf-8"))
    except OSError as e:
        problems.append(f"{name}: cannot read ({e.strerror})")
        return {}
    except (UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError and _Invalid are ValueErrors
        problems.append(f"{name}: header is not valid JSON ({e}); the file is corrupt")
        return {}
    if not isinstance(header, dict):
        problems.append(f"{name}: header is a JSON {type(header).__name__}, not an object")
        return {}
    base = 8 + hlen
    meta = header.get("__metadata__", {})
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        problems.append(f"{name}: __metadata__ must be an object of strings, found {_short(meta)}")
    out: dict[str, TensorRef] = {}
    spans = []
    n_before = len(problems)
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        got = _entry(name, tname, info, problems)
        if got is not None:
            dt, shape, b, e = got
            spans.append((b, e, tname))
            out[tname] = TensorRef(path, dt, shape, base + b, base + e)
    if len(problems) == n_before:  # the layout is only meaningful when every entry parsed
        _layout(name, spans, size - base, problems)
    return out


__all__ = ["MAX_HEADER", "TensorRef", "read_header", "strict_json"]
