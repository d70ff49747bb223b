"""GGUFCheckpoint: an LFM2 / LFM2-MoE GGUF file behind the interface of checkpoint.Checkpoint.

Everything is served under OUR (Hugging Face) names and shapes (checkpoint.manifest): a stacked
expert tensor blk.N.ffn_gate_exps [E, Fe, D] is read as E separate
model.layers.N.feed_forward.experts.{e}.w1.weight [Fe, D] (expert e's contiguous bytes only), the
conv taps [D, L] as [D, 1, L]. Quantized tensors come as block arrays of lfm2engine.quant's dtypes
(shape [N, K / block]), exactly the file's bytes. Validation is the safetensors reader's: every
problem of the tensor table in one CheckpointError, before any tensor is allocated; tensors are
then read by positioned reads from the file opened once (no memory map outlives the parse).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ... import quant
from ...errors import CheckpointError
from ..dtypes import DTYPE_TAGS, all_finite, as_f32
from ..manifest import expected_tensors, manifest_size
from ..reading import TensorReader, read_exact
from .layout import gguf_name, gguf_tensors
from .meta import config_from_meta
from .parse import Table, TensorInfo, read_table

# GGML type id -> our dtype name (the float ones are safetensors' tags)
FLOAT_TYPES = {0: "F32", 1: "F16", 30: "BF16"}
SUPPORTED = {**FLOAT_TYPES, **{q.ggml_id: q.ggml for q in quant.QTYPES.values()}}


def type_name(type_id: int) -> str:
    """GGML's name of a type id ("IQ2_XS"), or "type id N" for one the gguf package does not know."""
    import gguf

    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return f"unknown type id {type_id}"


def tensor_nbytes(t: TensorInfo) -> int | None:
    """Bytes of a tensor of a supported type (None otherwise); Python ints, no overflow."""
    n_rows = 1
    for x in t.ne[1:]:
        n_rows *= x
    name = SUPPORTED.get(t.type_id)
    if name is None:
        return None
    if name in DTYPE_TAGS:
        return n_rows * (t.ne[0] if t.ne else 1) * DTYPE_TAGS[name][1]
    q = quant.BY_GGML[name]
    return n_rows * (t.ne[0] // q.block) * q.nbytes if t.ne else None


def check_table(table: Table, want: dict[str, tuple[int, ...]]) -> list[str]:
    """Every problem of the tensor table: types, row widths, alignment, bytes past the end,
    overlaps, duplicates, and names / shapes against the GGUF manifest `want`."""
    problems: list[str] = []
    seen: dict[str, TensorInfo] = {}
    spans = []
    for t in table.tensors:
        where = f"tensor {t.name!r}"
        if t.name in seen:
            problems.append(f"{where} appears twice")
            continue
        seen[t.name] = t
        tn = SUPPORTED.get(t.type_id)
        if tn is None:
            problems.append(f"{where} has GGML type {type_name(t.type_id)}, which lfm2engine does not read "
                            f"(supported: {', '.join(SUPPORTED.values())})")
            continue
        if any(x < 1 for x in t.ne) or not t.ne:
            problems.append(f"{where} has dims {list(t.ne)}; every dimension must be >= 1")
            continue
        if tn in quant.BY_GGML and t.ne[0] % quant.BY_GGML[tn].block:
            problems.append(f"{where}: a {tn} row needs a multiple of {quant.BY_GGML[tn].block} weights, "
                            f"its rows have {t.ne[0]}")
            continue
        if t.offset % table.alignment:
            problems.append(f"{where} starts at data offset {t.offset}, not a multiple of the alignment "
                            f"{table.alignment}")
        nb = tensor_nbytes(t)
        start = table.data_offset + t.offset
        if start + nb > table.size:
            problems.append(f"{where} spans bytes {start}..{start + nb} but the file has {table.size} bytes "
                            "(truncated)")
        spans.append((t.offset, t.offset + nb, t.name))
    end, prev = 0, None
    for b, e, n in sorted(spans):
        if b < end:
            problems.append(f"tensor {n!r} (data bytes {b}..{e}) overlaps tensor {prev!r} (ends at {end})")
        if e > end:
            end, prev = e, n
    for n, shape in want.items():
        t = seen.get(n)
        if t is None:
            problems.append(f"missing tensor {n!r} (expected shape {list(shape)})")
        elif t.shape != shape:
            problems.append(f"tensor {n!r} has shape {list(t.shape)}, expected {list(shape)}")
    for n in sorted(set(seen) - set(want)):
        problems.append(f"unexpected tensor {n!r} (not part of an LFM2 model with this metadata)")
    return problems


# the GGUF manifest is listed only when it has at most this many tensors more than the file holds
_LIST_SLACK = 10_000


def _check_size(cfg, table: Table, path: str) -> None:
    """Refuse metadata describing a model far beyond the file (65536 layers of 65536 experts) before
    its manifest is listed: counted, not listed (checkpoint.manifest_size)."""
    n_hf, elements = manifest_size(cfg)
    n_moe = cfg.num_hidden_layers - cfg.num_dense_layers if cfg.is_moe else 0
    n_gguf = n_hf - n_moe * 3 * (cfg.num_experts - 1)  # each layer's experts are 3 stacked tensors
    if n_gguf > len(table.tensors) + _LIST_SLACK or elements // 8 > table.size:
        raise CheckpointError(f"{path}: the metadata describes {n_gguf} tensors of {elements} weights in all; the "
                              f"file holds {len(table.tensors)} tensors in {table.size} bytes (corrupt metadata?)")


def _report(path: str, problems: list[str]) -> str:
    shown = problems[:20]
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return f"{path}: {len(problems)} problem(s) in the GGUF file:\n  " + "\n  ".join(shown) + more


class GGUFCheckpoint(TensorReader):
    """A validated GGUF file, read like checkpoint.Checkpoint (same methods, our names)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            self.table = read_table(self.path)
            st = os.fstat(self._fd)
            if st.st_size != self.table.size:
                raise CheckpointError(f"{self.path}: the file changed while it was parsed")
            self.meta = self.table.meta
            shapes = {t.name: t.shape for t in self.table.tensors}
            self.config = config_from_meta(self.meta, shapes, self.path)
            _check_size(self.config, self.table, self.path)
            problems = check_table(self.table, gguf_tensors(self.config))
            if problems:
                raise CheckpointError(_report(self.path, problems))
        except BaseException:
            self.close()
            raise
        self.infos = {t.name: t for t in self.table.tensors}
        self._shapes = expected_tensors(self.config)
        self._where = {n: gguf_name(n) for n in self._shapes}

    # ------------------------------------------------------------------ the Checkpoint interface
    def names(self):
        return self._where.keys()

    def files(self) -> list[str]:
        """The files the tensors are read from: this one."""
        return [self.path]

    def dtype_of(self, name: str) -> str:
        return SUPPORTED[self.infos[self._where[name][0]].type_id]

    def _range(self, name: str) -> tuple[int, int, TensorInfo]:
        g, e = self._where[name]
        t = self.infos[g]
        start, nb = self.table.data_offset + t.offset, tensor_nbytes(t)
        if e is not None:
            per = nb // t.ne[-1]
            start, nb = start + e * per, per
        return start, start + nb, t

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored (float32 / float16 / uint16 bf16 bits / a block array [N, K / block])
        in an array that owns its memory, with OUR shape."""
        start, end, t = self._range(name)
        shape = self._shapes[name]
        tn = SUPPORTED[t.type_id]
        if tn in DTYPE_TAGS:
            a = np.empty(shape, DTYPE_TAGS[tn][0])
        else:
            q = quant.BY_GGML[tn]
            a = np.empty(shape[:-1] + (shape[-1] // q.block,), q.dtype)
        read_exact(self._open_fd(), a, start, end, self.path, name)
        return a

    def _open_fd(self) -> int:
        if self._fd is None:
            raise CheckpointError(f"{self.path}: the checkpoint is closed")
        return self._fd

    def f32(self, name: str) -> np.ndarray:
        a = self.raw(name)
        return quant.dequantize(a) if quant.is_quantized(a) else as_f32(a, self.dtype_of(name))

    def fingerprint(self) -> str:
        """Cheap identity: config, tensor names / types / shapes, and the embedding's first bytes."""
        h = hashlib.sha256(self.config.fingerprint().encode())
        for n in sorted(self.infos):
            t = self.infos[n]
            h.update(f"{n}:{t.type_id}:{t.ne}:{tensor_nbytes(t)}".encode())
        start, end, _ = self._range("model.embed_tokens.weight")
        first = np.empty(min(1024, end - start), np.uint8)
        read_exact(self._open_fd(), first, start, end, self.path, "model.embed_tokens.weight")
        h.update(first.tobytes())
        return h.hexdigest()[:16]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def all_finite_blocks(a: np.ndarray) -> bool:
    """True when no value of `a` can be NaN or Inf: for a float array every element is finite
    (checkpoint.all_finite); for a block array every f16 scale field (d, and dmin of q4_k) is
    finite, since the integer codes cannot be."""
    q = quant.qtype_of(a)
    if q is None:
        return all_finite(a)
    return all(all_finite(np.ascontiguousarray(a[f])) for f in ("d", "dmin") if f in q.dtype.names)
