"""GGUF files (llama.cpp's format) for LFM2 / LFM2-MoE: reading under our names, writing.

Modules: layout (llama.cpp's tensor names and shapes <-> ours), parse (the header and tensor table,
strictly, with gguf.GGUFReader), meta (metadata <-> LFM2Config), reading (GGUFCheckpoint,
all_finite_blocks), vocab (tokenizer metadata <-> tokenizers.Tokenizer), writing (write_gguf).
See docs/gguf.md.
"""

from __future__ import annotations

import os

from .layout import gguf_name, gguf_tensors
from .meta import config_from_meta, meta_from_config
from .parse import MAGIC, read_table
from .reading import SUPPORTED, GGUFCheckpoint, all_finite_blocks, check_table
from .vocab import tokenizer_from_meta, tokenizer_json_beside
from .writing import DTYPES, tensor_types, write_gguf


def is_gguf(path: str | os.PathLike) -> bool:
    """True when `path` is a regular file that starts with the GGUF magic (whatever its suffix)."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        return False
    try:
        with open(p, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def load_gguf_tokenizer(path: str | os.PathLike, meta: dict | None = None):
    """The text tokenizer of a GGUF file (lfm2engine.tokenizer.Tokenizer): the tokenizer.json beside
    the file when there is one, else one built from the file's metadata (InputError if it has none
    lfm2engine can build)."""
    from ...tokenizer import Tokenizer

    p = os.fspath(path)
    beside = tokenizer_json_beside(p)
    if beside is not None:
        return Tokenizer(beside)
    if meta is None:
        meta = read_table(p).meta
    return Tokenizer.from_object(tokenizer_from_meta(meta, p))


__all__ = ["DTYPES", "GGUFCheckpoint", "SUPPORTED", "all_finite_blocks", "check_table", "config_from_meta",
           "gguf_name", "gguf_tensors", "is_gguf", "load_gguf_tokenizer", "meta_from_config", "read_table",
           "tensor_types", "tokenizer_from_meta", "write_gguf"]
