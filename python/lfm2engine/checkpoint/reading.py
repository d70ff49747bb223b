"""Reading safetensors checkpoints: headers, validation against the manifest, then the tensors.

Not a general safetensors library: it reads F32/F16/BF16 tensors (what LFM2 checkpoints hold),
checks every header against the file size and the config's manifest, reports ALL problems in one
CheckpointError, and only then reads data (positioned reads into buffers of its own, no mapping).
Names are HF's, unchanged (MODEL.md §3.1).
"""

from __future__ import annotations

import os

import numpy as np

from ..config import LFM2Config
from ..errors import CheckpointError
from .dtypes import DTYPE_TAGS, as_f32, f32_to_bf16
from .header import TensorRef, read_header, strict_json
from .manifest import INDEX_NAME, expected_tensors, manifest_size


def scan(path: str | os.PathLike) -> dict[str, TensorRef]:
    """Headers of a checkpoint directory (single file, or sharded with an index)."""
    d = os.fspath(path)
    problems: list[str] = []
    idx = os.path.join(d, INDEX_NAME)
    refs: dict[str, TensorRef] = {}
    if os.path.isfile(idx):
        wmap = _read_index(idx)
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


def _read_index(idx: str) -> dict[str, str]:
    """{tensor name: shard file name} of a sharded checkpoint's index, strictly parsed."""
    try:
        with open(idx, "rb") as f:
            doc = strict_json(f.read().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"{idx}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{idx}: not a valid safetensors index ({e})") from None
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wmap, dict):
        raise CheckpointError(f"{idx}: not a valid safetensors index (needs a 'weight_map' object)")
    bad = sorted({repr(s) for s in wmap.values()
                  if not (isinstance(s, str) and s.endswith(".safetensors") and os.path.basename(s) == s)})
    if bad:
        raise CheckpointError(f"{idx}: weight_map names shard(s) {', '.join(bad[:5])}; a shard must be a "
                              "*.safetensors file name in the checkpoint directory")
    return wmap


# the manifest is listed only when it has at most this many tensors more than the checkpoint holds
# (then every missing one is named); beyond, config and weights cannot belong together
_LIST_SLACK = 10_000


def validate(cfg: LFM2Config, refs: dict[str, TensorRef], path: str) -> None:
    """Check the checkpoint's tensors against the manifest of `cfg`: every expected tensor present
    with its shape, and no tensor the config does not describe. One CheckpointError lists all."""
    hint = "\n  hint: does config.json belong to these weights?"
    n_want, elements = manifest_size(cfg)
    if n_want > len(refs) + _LIST_SLACK:
        held = sum(r.end - r.start for r in refs.values())
        raise CheckpointError(f"{path}: config.json describes {n_want} tensors ({elements} parameters, at least "
                              f"{2 * elements} bytes); the checkpoint holds {len(refs)} tensors ({held} bytes)" + hint)
    want = expected_tensors(cfg)
    problems = []
    for n, shape in want.items():
        r = refs.get(n)
        if r is None:
            problems.append(f"missing tensor {n!r} (expected shape {list(shape)})")
        elif r.shape != shape:
            problems.append(f"tensor {n!r} has shape {list(r.shape)}, expected {list(shape)}")
    for n in sorted(set(refs) - set(want)):
        problems.append(f"unexpected tensor {n!r}{_why_unexpected(cfg, n)}")
    if problems:
        raise CheckpointError(_report(path, problems) + hint)


def _why_unexpected(cfg: LFM2Config, name: str) -> str:
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
        return " (the config ties the output head to the embeddings: tie_word_embeddings is true)"
    parts = name.split(".")
    if name.startswith("model.layers.") and parts[2].isdigit() and int(parts[2]) >= cfg.num_hidden_layers:
        return f" (the config has num_hidden_layers = {cfg.num_hidden_layers})"
    if ".experts." in name and cfg.is_moe:
        return f" (the config has num_experts = {cfg.num_experts})"
    return " (not in the config's manifest)"


def read_exact(fd: int, buf: np.ndarray, start: int, end: int, file: str, name: str) -> None:
    """Fill `buf` (C-contiguous) with the file's bytes from `start` by positioned reads; a file that
    ends first (truncated or replaced while loading) is a CheckpointError naming tensor `name`
    (which spans bytes start..end of `file`)."""
    n = buf.nbytes
    view, done = memoryview(buf).cast("B"), 0
    while done < n:  # one read returns at most ~2 GiB on Linux
        try:
            got = os.preadv(fd, [view[done:]], start + done)
        except OSError as e:
            raise CheckpointError(f"{file}: reading tensor {name!r} failed ({e.strerror})") from None
        if got == 0:
            raise CheckpointError(f"{file}: the file ends inside tensor {name!r} (byte {start + done} of "
                                  f"{start}..{end}): it was truncated or replaced while loading")
        done += got


class TensorReader:
    """What every checkpoint reader (Checkpoint here, GGUFCheckpoint in gguf/reading.py) derives from
    its own names(), dtype_of(name), raw(name), f32(name) and close()."""

    def bf16(self, name: str) -> np.ndarray:
        """bf16 bits (uint16): the stored array of a BF16 tensor, else its float32 values rounded."""
        return self.raw(name) if self.dtype_of(name) == "BF16" else f32_to_bf16(self.f32(name))

    def state_dict_f32(self) -> dict[str, np.ndarray]:
        """Every manifest tensor as float32 (for the NumPy reference)."""
        return {n: np.array(self.f32(n)) for n in self.names()}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class Checkpoint(TensorReader):
    """A validated checkpoint. `raw(name)` gives the on-disk array (bf16 as uint16 bits) in a
    buffer of its own; `f32(name)` converts to float32; `bf16(name)` gives bf16 bits (rounding
    f32/f16).

    Tensors are read with positioned reads, not through a memory mapping: a file truncated while
    the engine loads gives a CheckpointError naming the tensor instead of a SIGBUS, and a file
    replaced after it was opened keeps being read from the bytes that were validated (the open
    file). Every array is then the caller's own, aligned whatever the header's padding."""

    def __init__(self, path: str | os.PathLike, cfg: LFM2Config | None = None):
        self.path = os.fspath(path)
        self.config = cfg if cfg is not None else LFM2Config.from_hf(self.path)
        self.refs = scan(self.path)
        validate(self.config, self.refs, self.path)
        self._fds: dict[str, int] = {}

    def dtype_of(self, name: str) -> str:
        return self.refs[name].dtype

    def files(self) -> list[str]:
        """The files the tensors are read from (what a replacement while loading would change)."""
        return sorted({r.file for r in self.refs.values()})

    def _read(self, name: str, buf: np.ndarray) -> None:
        """Fill `buf` (a C-contiguous array) with the first buf.nbytes bytes of tensor `name`."""
        r = self.refs[name]
        fd = self._fds.get(r.file)
        if fd is None:
            try:
                fd = self._fds[r.file] = os.open(r.file, os.O_RDONLY)
            except OSError as e:
                raise CheckpointError(f"{r.file}: cannot open ({e.strerror})") from None
        read_exact(fd, buf, r.start, r.end, r.file, name)

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored, in an array that owns its memory (no further copy is needed)."""
        r = self.refs[name]
        a = np.empty(r.shape, DTYPE_TAGS[r.dtype][0])
        self._read(name, a)
        return a

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def f32(self, name: str) -> np.ndarray:
        return as_f32(self.raw(name), self.refs[name].dtype)

    def names(self):
        return expected_tensors(self.config).keys()

    def fingerprint(self) -> str:
        """Cheap identity of the checkpoint: tensor names, shapes, dtypes, sizes, and the first bytes."""
        import hashlib

        h = hashlib.sha256(self.config.fingerprint().encode())
        for n in sorted(self.refs):
            r = self.refs[n]
            h.update(f"{n}:{r.dtype}:{r.shape}:{r.end - r.start}".encode())
        emb = self.refs["model.embed_tokens.weight"]
        first = np.empty(min(256 * DTYPE_TAGS[emb.dtype][1], emb.end - emb.start), np.uint8)
        self._read("model.embed_tokens.weight", first)
        h.update(first.tobytes())
        return h.hexdigest()[:16]
