"""Tokenizers in GGUF metadata: written from a tokenizer.json, read back into a `tokenizers.Tokenizer`.

What works (docs/gguf.md): byte-level BPE vocabularies, `tokenizer.ggml.model` "gpt2", the style of
every LFM2 tokenizer: the token list, the merges ("a b"), token types (3 control / 4 user-defined
become added tokens) and the pre-tokenizer named by `tokenizer.ggml.pre`: "gpt-2" (and "default" /
absent: GPT-2's ByteLevel regex) or "lfm2" / "llama-bpe" (llama 3's split regex, merges ignored for
whole-vocabulary words, as llama.cpp does). Other models ("llama" SentencePiece, "none") have no
text tokenizer here: token-id mode, or a tokenizer.json beside the file.
"""

from __future__ import annotations

import json
import os

from ...errors import InputError

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp's token types (gguf.TokenType)
_GPT2 = ("gpt-2", "default", None)
_LLAMA3 = ("lfm2", "llama-bpe")
# llama 3's pre-tokenizer split (the tokenizer.json form; llama.cpp's llama-vocab.cpp spells it without (?i:))
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def tokenizer_from_meta(meta: dict, source: str):
    """A `tokenizers.Tokenizer` from GGUF metadata, or InputError saying why there is none."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    if kind != "gpt2":
        raise InputError(f"{source}: tokenizer.ggml.model is {kind!r}; lfm2engine builds text tokenizers for "
                         "'gpt2' (byte-level BPE) only: put the model's tokenizer.json beside the file or use "
                         "token ids")
    if pre not in _GPT2 + _LLAMA3:
        raise InputError(f"{source}: tokenizer.ggml.pre {pre!r} is not one lfm2engine knows "
                         f"({', '.join(p for p in _GPT2 + _LLAMA3 if p)}): put the model's tokenizer.json beside "
                         "the file")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges", [])
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * (len(tokens) if isinstance(tokens, list) else 0)
    if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)
            and isinstance(merges, list) and all(isinstance(m, str) and " " in m for m in merges)
            and isinstance(types, list) and len(types) == len(tokens)):
        raise InputError(f"{source}: the tokenizer metadata (tokens, merges, token types) is malformed")
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    llama3 = pre in _LLAMA3
    try:
        tok = Tokenizer(models.BPE(vocab, pairs, ignore_merges=llama3))
    except Exception as e:  # the tokenizers library raises plain Exceptions
        raise InputError(f"{source}: the tokenizer metadata does not make a BPE tokenizer ({e})") from None
    if llama3:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == CONTROL]
    user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)
    return tok


def _pre_name(pre: dict | None) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json pre_tokenizer (InputError if none fits)."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) \
            and not pre.get("add_prefix_space", False):
        return "gpt-2"
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        seq = pre.get("pretokenizers", [])
        if len(seq) == 2 and seq[0].get("type") == "Split" and seq[1].get("type") == "ByteLevel" \
                and not seq[1].get("use_regex", True):
            rx = seq[0].get("pattern", {}).get("Regex")
            if rx == LLAMA3_SPLIT:
                return "lfm2"
    raise InputError(f"tokenizer.json: pre-tokenizer {json.dumps(pre)[:120]} has no llama.cpp name lfm2engine "
                     "knows (GPT-2's ByteLevel, or LFM2's / llama 3's split); --no-tokenizer writes the file "
                     "without a vocabulary")


def meta_from_tokenizer_json(path: str, vocab_size: int) -> dict[str, tuple[str, object]]:
    """{key: (kind, value)} of a byte-level BPE tokenizer.json, in llama.cpp's "gpt2" style:
    tokens padded to the model's vocabulary with [PAD{i}] (type UNUSED), like its converter."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        model = d["model"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a readable tokenizer.json ({e})") from None
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise InputError(f"{path}: a {model.get('type')!r} tokenizer; GGUF output supports byte-level BPE only")
    pre = _pre_name(d.get("pre_tokenizer"))
    tokens: list[str | None] = [None] * vocab_size
    types = [NORMAL] * vocab_size
    for t, i in model["vocab"].items():
        if 0 <= i < vocab_size:
            tokens[i] = t
    for a in d.get("added_tokens", []):
        i = a.get("id")
        if isinstance(i, int) and 0 <= i < vocab_size:
            tokens[i] = a["content"]
            types[i] = CONTROL if a.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokenizer.ggml.model": ("str", "gpt2"), "tokenizer.ggml.pre": ("str", pre),
            "tokenizer.ggml.tokens": ("str[]", tokens), "tokenizer.ggml.token_type": ("i32[]", types),
            "tokenizer.ggml.merges": ("str[]", merges)}


def tokenizer_json_beside(path: str) -> str | None:
    p = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer.json")
    return p if os.path.isfile(p) else None
