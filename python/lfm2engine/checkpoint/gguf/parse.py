"""One GGUF file's metadata and tensor table, parsed strictly before any tensor is read.

The format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): magic "GGUF", version
(2 or 3), tensor count and key/value count (u64), the key/value pairs (typed values, arrays of
them), the tensor infos (name, dims in GGML order ne[0] = row width, type id, offset relative to
the data section), padding to `general.alignment` (default 32), then the data.

The values are read with the format's own library (gguf.GGUFReader). Before it runs, `_prescan`
walks the same bytes with bounds checks only (no values kept): GGUFReader trusts the counts it
reads (an array of 10**9 elements in a small file loops until it runs off the end, nesting
recurses without limit) and stops at the first problem, while we must refuse hostile counts
cheaply and list every problem of the tensor table in one CheckpointError.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from ...errors import CheckpointError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NESTING = 3  # arrays of arrays: GGUF allows them, no LFM2 file uses them
# bytes of each scalar value type (GGUFValueType ids); 8 = string, 9 = array
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_id: int
    ne: tuple[int, ...]     # GGML dims: ne[0] is the row width
    offset: int             # relative to the data section

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy (row-major) shape: ne reversed."""
        return tuple(reversed(self.ne))


@dataclass
class Table:
    path: str
    size: int
    version: int
    alignment: int
    data_offset: int
    meta: dict            # key -> Python value (int, float, bool, str, list)
    meta_types: dict      # key -> GGUFValueType name of the value (arrays: "ARRAY[<item type>]")
    tensors: list[TensorInfo]


class _Bad(Exception):
    """A structural problem found by _prescan (message = what is wrong)."""


class _Scan:
    def __init__(self, buf, size: int):
        self.b, self.size, self.at = buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.at + n > self.size:
            raise _Bad(f"the file ends inside {what} (byte {self.at} + {n} > {self.size}): truncated or not GGUF")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = struct.unpack_from("<I", self.b, self.at)
        self.at += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = struct.unpack_from("<Q", self.b, self.at)
        self.at += 8
        return v

    def string(self, what: str) -> None:
        n = self.u64(what)
        self.need(n, what)
        self.at += n

    def value(self, t: int, what: str, depth: int = 0) -> None:
        if t in _SCALAR:
            self.need(_SCALAR[t], what)
            self.at += _SCALAR[t]
        elif t == _STRING:
            self.string(what)
        elif t == _ARRAY:
            if depth >= MAX_NESTING:
                raise _Bad(f"{what}: arrays nested more than {MAX_NESTING} deep")
            it = self.u32(what)
            n = self.u64(what)
            if it in _SCALAR:
                self.need(n * _SCALAR[it], f"{what} ({n} elements)")
                self.at += n * _SCALAR[it]
            else:
                # every element takes at least 8 bytes (a length): a count the file cannot hold is refused at once
                self.need(n * 8, f"{what} ({n} elements)")
                for _ in range(n):
                    self.value(it, what, depth + 1)
        else:
            raise _Bad(f"{what}: unknown value type id {t}")


def _prescan(buf, size: int) -> tuple[int, int, int]:
    """Walk the header with bounds checks. -> (version, tensor count, kv count); _Bad otherwise."""
    s = _Scan(buf, size)
    head = bytes(buf[0 : min(4, size)])
    if head != MAGIC[: len(head)]:
        raise _Bad(f"bad magic {head!r}, expected {MAGIC!r}: not a GGUF file")
    s.need(4, "the magic")
    s.at = 4
    version = s.u32("the version")
    if version & 0xFFFF == 0 and version:
        raise _Bad(f"big-endian GGUF (version field {version:#x}) is not supported")
    if version not in VERSIONS:
        raise _Bad(f"unsupported GGUF version {version} (supported: {', '.join(map(str, VERSIONS))})")
    n_tensors, n_kv = s.u64("the tensor count"), s.u64("the key/value count")
    # a key/value takes >= 13 bytes, a tensor info >= 24: counts beyond the file are refused before any loop
    if n_kv * 13 + n_tensors * 24 > size - s.at:
        raise _Bad(f"it declares {n_tensors} tensors and {n_kv} key/value pairs, more than its {size} bytes "
                   "can hold (truncated or corrupt)")
    for k in range(n_kv):
        s.string(f"key/value pair {k}")
        s.value(s.u32(f"key/value pair {k}"), f"key/value pair {k}")
    for k in range(n_tensors):
        what = f"tensor info {k}"
        s.string(what)
        nd = s.u32(what)
        if nd > MAX_DIMS:
            raise _Bad(f"{what}: {nd} dimensions (at most {MAX_DIMS})")
        s.need(nd * 8 + 12, what)
        s.at += nd * 8 + 12
    return version, n_tensors, n_kv


def _reader_class():
    import gguf

    class _TableReader(gguf.GGUFReader):
        """GGUFReader without the data views: the tensor table is kept as parsed (raw type ids,
        dims, offsets) and checked by us, so that every problem can be listed."""

        def _build_tensors(self, start_offs, fields):  # noqa: D401 (overrides the library's hook)
            self.tensor_fields = fields
            self.tensors = []

        def _get(self, offset, dtype, count=1, override_order=None):
            # the library's _get on a plain ndarray view of its memory map: the same values, without
            # np.memmap's per-slice bookkeeping (3x faster on a 65536-token vocabulary)
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            itemsize = np.dtype(dtype).itemsize
            arr = plain[offset: offset + itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return _TableReader


def _value(field):
    import gguf

    v = field.contents()
    types = field.types
    tname = types[0].name
    if types[0] == gguf.GGUFValueType.ARRAY:
        tname = f"ARRAY[{types[-1].name if len(types) > 1 else ''}]"
    if types[0] == gguf.GGUFValueType.BOOL:
        v = bool(v)
    elif types[0] == gguf.GGUFValueType.FLOAT32:
        # the shortest decimal of the float32: 1e-5 written as f32 reads back as 1e-05, not 9.99999974e-06
        v = float(str(np.float32(v)))
    return v, tname


def read_table(path: str) -> Table:
    """Parse the file's header. CheckpointError (one line: the first structural problem) when the
    bytes are not a well-formed GGUF; the tensor table itself is checked by `check_table`."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise CheckpointError(f"{name}: the file is empty (not a GGUF file)")
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _prescan(buf, size)
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read ({e.strerror})") from None
    except _Bad as e:
        raise CheckpointError(f"{name}: {e}") from None
    try:
        r = _reader_class()(path, "r")
        meta, meta_types = {}, {}
        for k, fld in r.fields.items():
            if k.startswith("GGUF."):
                continue
            meta[k], meta_types[k] = _value(fld)
        tensors = []
        for fld in r.tensor_fields:
            _nl, name_data, _nd, dims, raw_type, off = fld.parts
            tensors.append(TensorInfo(str(bytes(name_data), "utf-8"), int(raw_type[0]),
                                      tuple(int(x) for x in dims.tolist()), int(off[0])))
        version = int(r.fields["GGUF.version"].parts[-1][0])
        alignment, data_offset = int(r.alignment), int(r.data_offset)
        r.__dict__.pop("_plain", None)
        del r  # drops the library's memory map: tensors are read by positioned reads
    except CheckpointError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError, struct.error) as e:
        raise CheckpointError(f"{name}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    return Table(path, size, version, alignment, data_offset, meta, meta_types, tensors)
