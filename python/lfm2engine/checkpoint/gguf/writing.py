"""Writing an LFM2 / LFM2-MoE checkpoint as a GGUF file llama.cpp loads (gguf.GGUFWriter).

Names, shapes and metadata are llama.cpp's (layout.py, meta.py); every 2-D weight is stored in the
requested type, while norms, conv taps, the router (ffn_gate_inp) and the expert bias stay F32.
`q4_k_m` is a mix like llama.cpp's Q4_K_M (its llama-quant.cpp rule): Q4_K, with Q6_K for the
output head (token_embd when tied, else output.weight) and for attn_v / ffn_down(_exps) on the
layers its `use_more_bits` picks. The file appears complete or not at all (atomic_writer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import quant
from ...config import LFM2Config
from ...errors import InputError
from ..dtypes import f32_to_bf16
from ..writing import atomic_writer, check_writable
from .layout import ARCH_OF, block_index, gguf_name, gguf_tensors, keeps_f32
from .meta import meta_from_config
from .reading import all_finite_blocks
from .vocab import meta_from_tokenizer_json

DTYPES = ("q8_0", "q4_0", "q4_k", "q4_k_m", "f16", "bf16", "f32")
_BASE = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k": "Q4_K", "q4_k_m": "Q4_K", "f16": "F16", "bf16": "BF16", "f32": "F32"}
# llama.cpp's LlamaFileType of each choice (general.file_type: informative)
_FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k": 14, "q4_k_m": 15, "bf16": 32}
_GGML_ID = {"F32": 0, "F16": 1, "BF16": 30, **{q.ggml: q.ggml_id for q in quant.QTYPES.values()}}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers that get more bits in its _M mixes."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_types(cfg: LFM2Config, dtype: str) -> dict[str, str]:
    """{GGUF tensor name: GGML type name} of a file of `dtype` for `cfg`."""
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    base = _BASE[dtype]
    out = {g: ("F32" if keeps_f32(g) else base) for g in gguf_tensors(cfg)}
    if dtype == "q4_k_m":
        head = "token_embd.weight" if cfg.tie_word_embeddings else "output.weight"
        out[head] = "Q6_K"
        attn = cfg.attention_layers
        for j, i in enumerate(attn):
            if use_more_bits(j, len(attn)):
                out[f"blk.{i}.attn_v.weight"] = "Q6_K"
        n = cfg.num_hidden_layers
        for i in range(n):
            if use_more_bits(i, n):
                for g in (f"blk.{i}.ffn_down.weight", f"blk.{i}.ffn_down_exps.weight"):
                    if g in out:
                        out[g] = "Q6_K"
    return out


def check_widths(cfg: LFM2Config, types: dict[str, str], dtype: str) -> None:
    """InputError (one line) when a quantized tensor's rows are not whole blocks."""
    shapes = gguf_tensors(cfg)
    bad = []
    for g, t in types.items():
        q = quant.BY_GGML.get(t)
        if q is not None and shapes[g][-1] % q.block:
            bad.append(f"{g} ({t}, rows of {shapes[g][-1]})")
    if bad:
        blocks = sorted({quant.BY_GGML[t].block for t in types.values() if t in quant.BY_GGML})
        raise InputError(f"--dtype {dtype}: {len(bad)} tensor(s) have rows that are not whole blocks of "
                         f"{'/'.join(map(str, blocks))} weights: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}")


def _add_kv(w, key: str, kind: str, value) -> None:
    import gguf

    T = gguf.GGUFValueType
    if kind == "str":
        w.add_string(key, value)
    elif kind == "u32":
        w.add_uint32(key, int(value))
    elif kind == "f32":
        w.add_float32(key, float(value))
    elif kind == "bool":
        w.add_bool(key, bool(value))
    elif kind == "u32[]":
        w.add_key_value(key, [int(v) for v in value], T.ARRAY, sub_type=T.UINT32)
    elif kind == "i32[]":
        w.add_key_value(key, [int(v) for v in value], T.ARRAY, sub_type=T.INT32)
    elif kind == "str[]":
        w.add_key_value(key, list(value), T.ARRAY, sub_type=T.STRING)
    else:  # pragma: no cover - a programming error
        raise ValueError(kind)


def _sources(cfg: LFM2Config) -> dict[str, list[str]]:
    """{GGUF name: the HF names it is made of (experts in order)}."""
    from ..manifest import expected_tensors

    out: dict[str, list[str]] = {}
    for hf in expected_tensors(cfg):
        out.setdefault(gguf_name(hf)[0], []).append(hf)
    return out


def _encode(x: np.ndarray, t: str) -> np.ndarray:
    if t == "F32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if t == "F16":
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(x, dtype=np.float32).astype(np.float16)
    if t == "BF16":
        return f32_to_bf16(x)
    return quant.quantize(x, quant.BY_GGML[t].name)


def write_gguf(src, out: str, dtype: str, tokenizer_json: str | None = None, progress: bool | None = None,
               name: str | None = None) -> dict[str, int]:
    """Write checkpoint `src` (checkpoint.Checkpoint or anything with .config / .f32 / .bf16 /
    .dtype_of) to GGUF file `out` in `dtype`. -> {GGML type name: tensors of that type}.
    Everything that can be refused (dtype, output path, widths, tokenizer) is, before any work."""
    import gguf
    from tqdm import tqdm

    cfg = src.config
    types = tensor_types(cfg, dtype)
    check_widths(cfg, types, dtype)
    check_writable(out)
    kv = meta_from_config(cfg)
    kv.update(meta_from_tokenizer_json(tokenizer_json, cfg.vocab_size) if tokenizer_json
              else {"tokenizer.ggml.model": ("str", "none")})
    shapes, sources = gguf_tensors(cfg), _sources(cfg)

    w = gguf.GGUFWriter(None, ARCH_OF[cfg.model_type])
    if name:
        w.add_name(name)
    w.add_file_type(_FILE_TYPE[dtype])
    if _BASE[dtype] in quant.BY_GGML:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for k, (kind, v) in kv.items():
        if k != "general.architecture":  # GGUFWriter adds it
            _add_kv(w, k, kind, v)
    order = sorted(shapes, key=lambda g: (block_index(g) is not None, block_index(g) or 0, g))
    for g in order:
        t = types[g]
        q = quant.BY_GGML.get(t)
        nb = int(np.prod(shapes[g], dtype=np.int64)) * (4 if t == "F32" else 2) if q is None else \
            int(np.prod(shapes[g][:-1], dtype=np.int64)) * q.row_bytes(shapes[g][-1])
        w.add_tensor_info(g, shapes[g], np.dtype(np.float32), nb, raw_dtype=gguf.GGMLQuantizationType(_GGML_ID[t]))
    counts: dict[str, int] = {}
    aw = atomic_writer(out, "wb")
    with aw:
        try:
            w.write_header_to_file(path=Path(aw.tmp))
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            bar = None if progress is None else not progress  # tqdm: None = only on a terminal
            for g in tqdm(order, desc=f"writing {dtype}", unit="tensor", disable=bar):
                t = types[g]
                hf = sources[g]
                if t == "BF16" and all(src.dtype_of(n) == "BF16" for n in hf):
                    parts = [src.bf16(n) for n in hf]   # bf16 -> bf16: the stored bits, no float round trip
                    a = parts[0] if len(parts) == 1 else np.stack(parts)
                else:
                    parts = [src.f32(n) for n in hf]
                    x = parts[0] if len(parts) == 1 else np.stack(parts)
                    a = _encode(x, t)
                    if t != "F32" and not all_finite_blocks(a) and np.isfinite(x).all():
                        what = ", ".join(hf[:2]) + (" ..." if len(hf) > 2 else "")
                        raise InputError(f"--dtype {dtype}: tensor {g} ({what}) overflows {t} "
                                         f"(largest |weight| {float(np.abs(x).max()):.4g})")
                a = a.reshape(a.shape[:1] + a.shape[2:]) if hf[0].endswith("conv.conv.weight") else a
                w.write_tensor_data(a)
                counts[t] = counts.get(t, 0) + 1
        finally:
            w.close()
    return counts
