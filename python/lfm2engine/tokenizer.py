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

    def token_text(self, tid: int) -> str | None:
        """The text of one token id; None for an id the tokenizer does not know (a model's
        vocabulary may be larger than its tokenizer's)."""
        if self.tok.id_to_token(int(tid)) is None:
            return None
        return self.decode([tid])


def load_tokenizer(model_dir: str) -> Tokenizer | None:
    p = os.path.join(model_dir, "tokenizer.json")
    return Tokenizer(p) if os.path.isfile(p) else None
