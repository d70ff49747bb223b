"""Model names: the checkpoints shipped as package data, and the one resolver of model arguments.

`tiny` (LFM2-MoE, 3.4M parameters) and `tiny-draft` (dense LFM2, 0.6M) are trained on the King
James Bible by scripts/train_tiny.py and live in lfm2engine/data/models/ in Hugging Face layout
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json), next to the held-out text
kjv_test.txt. Every command line (--model, --target, --draft) and Engine.from_pretrained accept
a checkpoint directory, a GGUF file or one of these names; an existing directory of the same name wins.
"""

from __future__ import annotations

import os

from .errors import InputError

SHIPPED = ("tiny", "tiny-draft")
MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "models")


def shipped_dir(name: str) -> str:
    """Directory of a shipped checkpoint; InputError for an unknown name."""
    if name not in SHIPPED:
        raise InputError(f"unknown shipped model {name!r}; choose from {', '.join(SHIPPED)}")
    return os.path.join(MODELS_DIR, name)


def held_out_text() -> str:
    """Path of the held-out test split (the last 5 % of the KJV verses) the tiny models never saw."""
    return os.path.join(MODELS_DIR, "kjv_test.txt")


def resolve_name(path: str | os.PathLike) -> str:
    """A shipped name that is not an existing directory -> its package directory; anything else unchanged
    (so the checkpoint reader still reports what is wrong with a bad path)."""
    p = os.fspath(path)
    if p in SHIPPED and not os.path.isdir(p):
        return shipped_dir(p)
    return p


def model_dir(value: str, flag: str = "--model") -> str:
    """A command-line model argument -> checkpoint path: a directory as given, a file (a GGUF file;
    its reader says what is wrong with any other file), or a shipped name. Anything else is an
    InputError naming the flag."""
    d = resolve_name(value)
    if not (os.path.isdir(d) or os.path.isfile(d)):
        raise InputError(f"{flag} {value}: not a directory or a file (a checkpoint directory, a GGUF file, or one "
                         f"of the shipped models: {', '.join(SHIPPED)})")
    return d


def side_dir(path: str) -> str:
    """Where a model's side files lie (tokenizer.json, tokenizer_config.json): the checkpoint
    directory itself, or the directory of a GGUF file."""
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
