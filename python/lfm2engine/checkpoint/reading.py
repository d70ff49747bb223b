"""Reading safetensors checkpoints: headers, validation against the manifest, memory-mapped tensors.

Not a general safetensors library: it reads F32/F16/BF16 tensors (what LFM2 checkpoints hold),
checks every header against the file size and the config's manifest, reports ALL problems in one
CheckpointError, and only then maps data. Names are HF's, unchanged (MODEL.md §3.1).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from ..config import LFM2Config
from ..errors import CheckpointError
from .dtypes import DTYPE_TAGS, as_f32, f32_to_bf16
from .manifest import INDEX_NAME, expected_tensors

_MAX_HEADER = 100 * 1024 * 1024


class TensorRef:
    """Where one tensor lives: file, dtype tag, shape, absolute byte range."""

    __slots__ = ("file", "dtype", "shape", "start", "end")

    def __init__(self, file, dtype, shape, start, end):
        self.file, self.dtype, self.shape, self.start, self.end = file, dtype, shape, start, end


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
            if hlen > _MAX_HEADER or 8 + hlen > size:
                problems.append(f"{name}: header length {hlen} exceeds the file size {size} (truncated or not safetensors)")
                return {}
            header = json.loads(f.read(hlen).decode("utf-8"))
    except OSError as e:
        problems.append(f"{name}: cannot read ({e.strerror})")
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{name}: header is not valid JSON ({e}); the file is corrupt")
        return {}
    if not isinstance(header, dict):
        problems.append(f"{name}: header is not a JSON object")
        return {}
    base = 8 + hlen
    out: dict[str, TensorRef] = {}
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        try:
            dt, shape, (b, e) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            problems.append(f"{name}: tensor {tname!r} has a malformed header entry {info!r}")
            continue
        if dt not in DTYPE_TAGS:
            problems.append(f"{name}: tensor {tname!r} has dtype {dt}; supported: {', '.join(DTYPE_TAGS)}")
            continue
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPE_TAGS[dt][1]
        if not (0 <= b <= e) or e - b != nbytes:
            problems.append(f"{name}: tensor {tname!r} byte range [{b}, {e}) does not hold shape {list(shape)} {dt}")
            continue
        if base + e > size:
            problems.append(
                f"{name}: tensor {tname!r} ends at byte {base + e} but the file has {size} bytes (truncated)"
            )
            continue
        out[tname] = TensorRef(path, dt, shape, base + b, base + e)
    return out


def scan(path: str | os.PathLike) -> dict[str, TensorRef]:
    """Headers of a checkpoint directory (single file, or sharded with an index)."""
    d = os.fspath(path)
    problems: list[str] = []
    idx = os.path.join(d, INDEX_NAME)
    refs: dict[str, TensorRef] = {}
    if os.path.isfile(idx):
        try:
            with open(idx, encoding="utf-8") as f:
                wmap = json.load(f)["weight_map"]
            if not isinstance(wmap, dict):
                raise TypeError
        except (OSError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{idx}: not a valid safetensors index (needs a 'weight_map' object)") from None
        shards = sorted(set(wmap.values()))
        for s in shards:
            sp = os.path.join(d, s)
            if not os.path.isfile(sp):
                problems.append(f"{s}: shard listed in {INDEX_NAME} is missing")
                continue
            got = read_header(sp, problems)
            for n, r in got.items():
                if wmap.get(n, s) != s:
                    problems.append(f"{s}: tensor {n!r} is indexed in {wmap[n]} but stored here")
                refs[n] = r
        for n, s in wmap.items():
            if n not in refs and os.path.isfile(os.path.join(d, s)):
                problems.append(f"{s}: tensor {n!r} is listed in the index but not in the shard")
    else:
        files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors")) if os.path.isdir(d) else []
        if not files:
            raise CheckpointError(f"{d}: no *.safetensors file and no {INDEX_NAME}")
        for s in files:
            for n, r in read_header(os.path.join(d, s), problems).items():
                if n in refs:
                    problems.append(f"{s}: tensor {n!r} also appears in {os.path.basename(refs[n].file)}")
                refs[n] = r
    if problems:
        raise CheckpointError(_report(d, problems))
    return refs


def _report(d: str, problems: list[str]) -> str:
    shown = problems[:20]
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return f"{d}: {len(problems)} problem(s) in the checkpoint:\n  " + "\n  ".join(shown) + more


def validate(cfg: LFM2Config, refs: dict[str, TensorRef], path: str) -> list[str]:
    """Check presence and shapes against the manifest. Returns names of unexpected tensors (ignored)."""
    want = expected_tensors(cfg)
    problems = []
    for n, shape in want.items():
        r = refs.get(n)
        if r is None:
            problems.append(f"missing tensor {n!r} (expected shape {list(shape)})")
        elif r.shape != shape:
            problems.append(f"tensor {n!r} has shape {list(r.shape)}, expected {list(shape)}")
    if problems:
        raise CheckpointError(_report(path, problems) + "\n  hint: does config.json belong to these weights?")
    return sorted(set(refs) - set(want))


class Checkpoint:
    """A validated, memory-mapped checkpoint. `raw(name)` gives the on-disk array (bf16 as uint16
    bits); `f32(name)` converts to float32; `bf16(name)` gives bf16 bits (rounding f32/f16)."""

    def __init__(self, path: str | os.PathLike, cfg: LFM2Config | None = None):
        self.path = os.fspath(path)
        self.config = cfg if cfg is not None else LFM2Config.from_hf(self.path)
        self.refs = scan(self.path)
        self.unexpected = validate(self.config, self.refs, self.path)
        self._maps: dict[str, np.memmap] = {}

    def dtype_of(self, name: str) -> str:
        return self.refs[name].dtype

    def raw(self, name: str) -> np.ndarray:
        r = self.refs[name]
        mm = self._maps.get(r.file)
        if mm is None:
            mm = self._maps[r.file] = np.memmap(r.file, dtype=np.uint8, mode="r")
        np_dt = DTYPE_TAGS[r.dtype][0]
        return mm[r.start : r.end].view(np_dt).reshape(r.shape)

    def f32(self, name: str) -> np.ndarray:
        return as_f32(self.raw(name), self.refs[name].dtype)

    def bf16(self, name: str) -> np.ndarray:
        r = self.refs[name]
        a = self.raw(name)
        return np.array(a) if r.dtype == "BF16" else f32_to_bf16(as_f32(a, r.dtype))

    def names(self):
        return expected_tensors(self.config).keys()

    def state_dict_f32(self) -> dict[str, np.ndarray]:
        """Every manifest tensor as float32 (for the NumPy reference)."""
        return {n: np.array(self.f32(n)) for n in self.names()}

    def fingerprint(self) -> str:
        """Cheap identity of the checkpoint: tensor names, shapes, dtypes, sizes, and the first bytes."""
        import hashlib

        h = hashlib.sha256(self.config.fingerprint().encode())
        for n in sorted(self.refs):
            r = self.refs[n]
            h.update(f"{n}:{r.dtype}:{r.shape}:{r.end - r.start}".encode())
        first = self.raw("model.embed_tokens.weight").reshape(-1)[:256]
        h.update(np.ascontiguousarray(first).tobytes())
        return h.hexdigest()[:16]
