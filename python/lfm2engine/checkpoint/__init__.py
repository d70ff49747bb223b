"""Safetensors checkpoints in the Hugging Face layout: manifest, validation, loading by positioned reads,
writing and editing. Names are HF's, unchanged (MODEL.md §3.1).

Modules: manifest (what a checkpoint holds), dtypes (F32/F16/BF16 tags and conversions), header
(one safetensors header, parsed strictly), reading (validation against the manifest, Checkpoint), writing (atomic_writer, write_safetensors, save_file,
save_pretrained), editing (write_pruned_checkpoint); the gguf package reads and writes llama.cpp's
GGUF files (GGUFCheckpoint, write_gguf). `open_checkpoint(path)` opens either kind. Every name is
importable from `lfm2engine.checkpoint`.
"""

import os

from ..errors import CheckpointError
from .dtypes import DTYPE_TAGS, TAG_NAMES, all_finite, as_f32, bf16_to_f32, encode, f32_to_bf16
from .editing import write_pruned_checkpoint
from .gguf import GGUFCheckpoint, all_finite_blocks, is_gguf, write_gguf
from .header import TensorRef, read_header
from .manifest import INDEX_NAME, SINGLE_NAME, expected_tensors, manifest_size
from .reading import Checkpoint, scan, validate
from .writing import atomic_writer, check_writable, save_file, save_pretrained, write_safetensors


def open_checkpoint(path, cfg=None):
    """A GGUF file (recognized by its magic, whatever its name) -> GGUFCheckpoint; anything else ->
    Checkpoint (a safetensors directory, with `cfg` or its config.json)."""
    if is_gguf(path):
        if cfg is not None:
            raise TypeError("a GGUF file carries its own config; pass no cfg")
        return GGUFCheckpoint(path)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        raise CheckpointError(f"{os.fspath(path)}: starts with {head!r}, not b'GGUF': not a GGUF file (a safetensors "
                              "checkpoint is a directory holding config.json and *.safetensors)")
    return Checkpoint(path, cfg)


__all__ = [
    "Checkpoint", "GGUFCheckpoint", "all_finite_blocks", "is_gguf", "open_checkpoint", "write_gguf",
    "DTYPE_TAGS", "INDEX_NAME", "SINGLE_NAME", "TAG_NAMES", "TensorRef", "all_finite", "as_f32",
    "atomic_writer", "bf16_to_f32", "check_writable", "encode", "expected_tensors", "f32_to_bf16", "manifest_size",
    "read_header", "save_file", "save_pretrained", "scan", "validate", "write_pruned_checkpoint", "write_safetensors",
]
