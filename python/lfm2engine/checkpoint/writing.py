"""Writing checkpoints: atomic files, streamed safetensors, config.json + (sharded) weights.

Tensors are streamed one at a time (`make(name)`), so a real-size checkpoint never sits in
memory; every file appears complete or not at all (atomic_writer).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile

import numpy as np

from ..config import LFM2Config
from ..errors import InputError
from .dtypes import DTYPE_TAGS, TAG_NAMES, encode
from .manifest import INDEX_NAME, SINGLE_NAME, expected_tensors


def write_safetensors(path: str, specs: dict[str, tuple[int, ...]], make, dtype: str = "F32",
                      progress=None) -> None:
    """Stream tensors to one .safetensors file atomically without holding them all in memory.

    specs: {name: shape}; make(name) -> float32 array (or uint16 bf16 bits) of that shape, called
    once per tensor in sorted-name order; expert_bias stays F32 (MODEL.md §8)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for n in sorted(specs):
        tag = "F32" if (dtype == "F32" or n.endswith("expert_bias")) else dtype
        nb = int(np.prod(specs[n], dtype=np.int64)) * DTYPE_TAGS[tag][1]
        header[n] = {"dtype": tag, "shape": list(specs[n]), "data_offsets": [off, off + nb]}
        off += nb
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with atomic_writer(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for n in sorted(specs):
            a = make(n)
            if tuple(a.shape) != tuple(specs[n]):
                raise ValueError(f"{n}: made shape {a.shape}, declared {specs[n]}")
            if a.dtype == np.uint16 and header[n]["dtype"] != "BF16":
                raise ValueError(f"{n}: bf16 bits given for a {header[n]['dtype']} tensor")
            b = encode(a, header[n]["dtype"])
            f.write(memoryview(b).cast("B"))
            if progress is not None:
                progress(b.nbytes)


def save_file(tensors: dict[str, np.ndarray], path: str, dtype: str = "F32") -> None:
    """Write a .safetensors file atomically. float32 arrays are stored as `dtype` (F32, F16 or
    BF16); uint16 arrays are taken as bf16 bits already."""
    specs = {n: tuple(a.shape) for n, a in tensors.items()}
    if any(a.dtype == np.uint16 for a in tensors.values()):
        dtype = "BF16"
    write_safetensors(path, specs, tensors.__getitem__, dtype)


def check_writable(path: str, what: str = "output") -> str:
    """Up-front check that `path` can be written atomically: its directory exists and is writable,
    and `path` is not a directory. -> the absolute path; InputError naming `what` otherwise.
    Nothing is created (a missing directory is an error, never made silently)."""
    p = os.path.abspath(os.fspath(path))
    d = os.path.dirname(p)
    if os.path.isdir(p):
        raise InputError(f"{what} {path}: is a directory; give a file name")
    if not os.path.isdir(d):
        raise InputError(f"{what} {path}: the directory {d} does not exist")
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: the directory {d} is not writable")
    if os.path.exists(p) and not os.path.isfile(p):
        raise InputError(f"{what} {path}: exists and is not a regular file")
    return p


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


class atomic_writer:
    """Context manager: write to a temp file in the target's directory, then os.replace().

    The directory must exist (check_writable); the file gets the mode a plain open() would give
    (0666 minus the umask), not mkstemp's 0600; on any failure (in the body, on close, on the
    rename) the temp file is removed and the target is left as it was."""

    def __init__(self, path: str, mode: str = "wb"):
        self.path, self.mode = os.fspath(path), mode

    def __enter__(self):
        p = check_writable(self.path)
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(p))
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            self.f = os.fdopen(fd, self.mode)
        except BaseException:
            os.close(fd)
            os.unlink(self.tmp)
            raise
        return self.f

    def __exit__(self, exc_type, exc, tb):
        try:
            self.f.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if os.path.lexists(self.tmp):
                os.unlink(self.tmp)
        return False


def save_pretrained(cfg: LFM2Config, tensors, out_dir: str, dtype: str = "F32",
                    max_shard_bytes: int | None = None, progress=None) -> None:
    """Write config.json + safetensors (sharded with an index when max_shard_bytes is set).

    `tensors` is a dict of arrays, or a callable name -> array for the manifest of `cfg`
    (streamed, so a real-size checkpoint never sits in memory)."""
    os.makedirs(out_dir, exist_ok=True)
    if callable(tensors):
        specs, make = expected_tensors(cfg), tensors
    else:
        specs, make = {n: tuple(a.shape) for n, a in tensors.items()}, tensors.__getitem__
    itemsize = DTYPE_TAGS[dtype][1]
    if max_shard_bytes is None:
        write_safetensors(os.path.join(out_dir, SINGLE_NAME), specs, make, dtype, progress)
    else:
        shards: list[dict] = [{}]
        size = 0
        for n in sorted(specs):
            nb = int(np.prod(specs[n], dtype=np.int64)) * itemsize
            if shards[-1] and size + nb > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][n] = specs[n]
            size += nb
        wmap = {}
        for k, sh in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(os.path.join(out_dir, fname), sh, make, dtype, progress)
            wmap.update({n: fname for n in sh})
        with atomic_writer(os.path.join(out_dir, INDEX_NAME), "w") as f:
            json.dump({"metadata": {}, "weight_map": wmap}, f, indent=1)
    hf = cfg.to_hf_dict()
    hf["dtype"] = TAG_NAMES[dtype]
    with atomic_writer(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
