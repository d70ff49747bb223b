"""Text <-> token ids through a checkpoint's tokenizer.json (the `tokenizers` package).

Without a tokenizer.json the engine runs in token-id mode (--prompt-ids). TextTracker turns a
growing list of generated ids into text deltas (incremental detokenization, stop strings): the
one decoder behind `generate --prompt` streaming and the server.
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

    @classmethod
    def from_object(cls, tok) -> "Tokenizer":
        """Wrap a `tokenizers.Tokenizer` built in memory (e.g. from a GGUF file's metadata)."""
        self = cls.__new__(cls)
        self.tok = tok
        return self

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
    """The tokenizer of a checkpoint directory (its tokenizer.json; None without one) or of a GGUF
    file (the tokenizer.json beside it, else one built from its metadata: checkpoint.gguf)."""
    if os.path.isfile(model_dir):
        from .checkpoint.gguf import load_gguf_tokenizer

        return load_gguf_tokenizer(model_dir)
    p = os.path.join(model_dir, "tokenizer.json")
    return Tokenizer(p) if os.path.isfile(p) else None


class TextTracker:
    """Token ids -> text deltas, with stop strings (tokenizer=None: ids as text).

    Decoding is incremental, as in vLLM: only the tokens from `prefix` on are decoded again after
    each new token, and their text beyond that of ids[prefix:read] is the new text, once it no
    longer ends in an incomplete UTF-8 character. Costs O(1) decode calls of a few tokens per
    token instead of decoding the whole continuation each time."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tok, self.stop = tokenizer, list(stop)
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] decode to the tail of `text` already taken
        self.text = ""  # the decoded continuation so far (before any stop string)
        self.sent = 0  # characters of `text` already sent
        self.stopped = False

    def token_text(self, tid: int) -> str:
        text = self.tok.token_text(tid) if self.tok is not None else None
        return f"token_id:{tid}" if text is None else text

    def _decode_new(self, final: bool) -> None:
        before = self.tok.decode(self.ids[self.prefix : self.read])
        after = self.tok.decode(self.ids[self.prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)

    def push(self, tid: int | None) -> str:
        """Add a token (None: flush at the end) -> new text to send; sets `stopped` when a stop
        string appeared (the text is cut before it)."""
        if self.tok is None:
            return "" if tid is None else f" {tid}"
        if self.stopped:
            return ""
        if tid is not None:
            self.ids.append(tid)
        self._decode_new(final=tid is None)
        full = self.text
        for s in self.stop:  # the earliest stop string wins
            k = full.find(s, max(0, self.sent - len(s) + 1))
            if k >= 0:
                self.stopped = True
                full = full[:k]
        end = len(full)
        if tid is not None and not self.stopped:  # hold back a tail that may still grow into a stop string
            end -= max((n for s in self.stop for n in range(1, min(len(s) - 1, end) + 1) if full.endswith(s[:n])),
                       default=0)
        end = max(end, self.sent)
        out, self.sent = full[self.sent : end], end
        return out
