"""Text <-> token ids through a checkpoint's tokenizer.json (the `tokenizers` package).

Without a tokenizer.json the engine runs in token-id mode (--prompt-ids).
"""

from __future__ import annotations

import os

from .errors import InputError


class Tokenizer:
    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise InputError("--prompt needs the 'tokenizers' package (pip install tokenizers)") from None
        try:
            self.tok = HFTokenizer.from_file(path)
        except Exception as e:  # the tokenizers library raises plain Exceptions
            raise InputError(f"{path}: cannot load tokenizer ({e})") from None

    def encode(self, text: str, add_bos: int | None = None) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([add_bos] if add_bos is not None else []) + ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


class TextStream:
    """Incremental decoding for streaming: push token ids one by one, get back the text each adds.
    Text is held back while it ends in an incomplete UTF-8 sequence (a byte-level token may carry
    part of a character), so the pieces concatenate to decode(all ids)."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.ids, self.shown = tok, [], 0

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[self.shown:], len(text)
        return piece

    def flush(self) -> str:
        """Whatever push held back (a sequence that really ends in an invalid byte)."""
        text = self.tok.decode(self.ids)
        piece, self.shown = text[self.shown:], len(text)
        return piece


def load_tokenizer(model_dir: str) -> Tokenizer | None:
    p = os.path.join(model_dir, "tokenizer.json")
    return Tokenizer(p) if os.path.isfile(p) else None
