"""Safetensors checkpoints in the Hugging Face layout: manifest, validation, memory-mapped loading, writing.

Not a general safetensors library: it reads F32/F16/BF16 tensors (what LFM2 checkpoints hold),
checks every header against the file size and the config's manifest, reports ALL problems in one
CheckpointError, and only then maps data. Names are HF's, unchanged (MODEL.md §3.1).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile

import numpy as np

from .config import LFM2Config
from .errors import CheckpointError

# safetensors dtype tag -> (numpy storage dtype, bytes per element)
_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}
_MAX_HEADER = 100 * 1024 * 1024
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def expected_tensors(cfg: LFM2Config) -> dict[str, tuple[int, ...]]:
    """{HF tensor name: shape} — the single source of truth for what a checkpoint must hold."""
    d, v = cfg.hidden_size, cfg.vocab_size
    m: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (v, d),
        "model.embedding_norm.weight": (d,),
    }
    if not cfg.tie_word_embeddings:
        m["lm_head.weight"] = (v, d)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        m[p + "operator_norm.weight"] = (d,)
        m[p + "ffn_norm.weight"] = (d,)
        if cfg.is_attention_layer(i):
            a = p + "self_attn."
            m[a + "q_proj.weight"] = (cfg.num_attention_heads * cfg.head_dim, d)
            m[a + "k_proj.weight"] = (cfg.kv_dim, d)
            m[a + "v_proj.weight"] = (cfg.kv_dim, d)
            m[a + "out_proj.weight"] = (d, cfg.num_attention_heads * cfg.head_dim)
            m[a + "q_layernorm.weight"] = (cfg.head_dim,)
            m[a + "k_layernorm.weight"] = (cfg.head_dim,)
        else:
            c = p + "conv."
            m[c + "in_proj.weight"] = (3 * d, d)
            m[c + "conv.weight"] = (d, 1, cfg.conv_L_cache)
            m[c + "out_proj.weight"] = (d, d)
        f = p + "feed_forward."
        if cfg.is_moe_layer(i):
            m[f + "gate.weight"] = (cfg.num_experts, d)
            if cfg.use_expert_bias:
                m[f + "expert_bias"] = (cfg.num_experts,)
            fe = cfg.moe_intermediate_size
            for e in range(cfg.num_experts):
                m[f"{f}experts.{e}.w1.weight"] = (fe, d)
                m[f"{f}experts.{e}.w3.weight"] = (fe, d)
                m[f"{f}experts.{e}.w2.weight"] = (d, fe)
        else:
            ff = cfg.ffn_dim
            m[f + "w1.weight"] = (ff, d)
            m[f + "w3.weight"] = (ff, d)
            m[f + "w2.weight"] = (d, ff)
    return m


class TensorRef:
    """Where one tensor lives: file, dtype tag, shape, absolute byte range."""

    __slots__ = ("file", "dtype", "shape", "start", "end")

    def __init__(self, file, dtype, shape, start, end):
        self.file, self.dtype, self.shape, self.start, self.end = file, dtype, shape, start, end


def read_header(path: str, problems: list[str]) -> dict[str, TensorRef]:
    """Parse one .safetensors header; append every problem found to `problems`."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                problems.append(f"{name}: file is {size} bytes, too short for a safetensors header (truncated?)")
                return {}
            (hlen,) = struct.unpack("<Q", raw)
            if hlen > _MAX_HEADER or 8 + hlen > size:
                problems.append(f"{name}: header length {hlen} exceeds the file size {size} (truncated or not safetensors)")
                return {}
            header = json.loads(f.read(hlen).decode("utf-8"))
    except OSError as e:
        problems.append(f"{name}: cannot read ({e.strerror})")
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{name}: header is not valid JSON ({e}); the file is corrupt")
        return {}
    if not isinstance(header, dict):
        problems.append(f"{name}: header is not a JSON object")
        return {}
    base = 8 + hlen
    out: dict[str, TensorRef] = {}
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        try:
            dt, shape, (b, e) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            problems.append(f"{name}: tensor {tname!r} has a malformed header entry {info!r}")
            continue
        if dt not in _DTYPES:
            problems.append(f"{name}: tensor {tname!r} has dtype {dt}; supported: {', '.join(_DTYPES)}")
            continue
        nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dt][1]
        if not (0 <= b <= e) or e - b != nbytes:
            problems.append(f"{name}: tensor {tname!r} byte range [{b}, {e}) does not hold shape {list(shape)} {dt}")
            continue
        if base + e > size:
            problems.append(
                f"{name}: tensor {tname!r} ends at byte {base + e} but the file has {size} bytes (truncated)"
            )
            continue
        out[tname] = TensorRef(path, dt, shape, base + b, base + e)
    return out


def scan(path: str | os.PathLike) -> dict[str, TensorRef]:
    """Headers of a checkpoint directory (single file, or sharded with an index)."""
    d = os.fspath(path)
    problems: list[str] = []
    idx = os.path.join(d, INDEX_NAME)
    refs: dict[str, TensorRef] = {}
    if os.path.isfile(idx):
        try:
            with open(idx, encoding="utf-8") as f:
                wmap = json.load(f)["weight_map"]
            if not isinstance(wmap, dict):
                raise TypeError
        except (OSError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{idx}: not a valid safetensors index (needs a 'weight_map' object)") from None
        shards = sorted(set(wmap.values()))
        for s in shards:
            sp = os.path.join(d, s)
            if not os.path.isfile(sp):
                problems.append(f"{s}: shard listed in {INDEX_NAME} is missing")
                continue
            got = read_header(sp, problems)
            for n, r in got.items():
                if wmap.get(n, s) != s:
                    problems.append(f"{s}: tensor {n!r} is indexed in {wmap[n]} but stored here")
                refs[n] = r
        for n, s in wmap.items():
            if n not in refs and os.path.isfile(os.path.join(d, s)):
                problems.append(f"{s}: tensor {n!r} is listed in the index but not in the shard")
    else:
        files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors")) if os.path.isdir(d) else []
        if not files:
            raise CheckpointError(f"{d}: no *.safetensors file and no {INDEX_NAME}")
        for s in files:
            for n, r in read_header(os.path.join(d, s), problems).items():
                if n in refs:
                    problems.append(f"{s}: tensor {n!r} also appears in {os.path.basename(refs[n].file)}")
                refs[n] = r
    if problems:
        raise CheckpointError(_report(d, problems))
    return refs


def _report(d: str, problems: list[str]) -> str:
    shown = problems[:20]
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return f"{d}: {len(problems)} problem(s) in the checkpoint:\n  " + "\n  ".join(shown) + more


def validate(cfg: LFM2Config, refs: dict[str, TensorRef], path: str) -> list[str]:
    """Check presence and shapes against the manifest. Returns names of unexpected tensors (ignored)."""
    want = expected_tensors(cfg)
    problems = []
    for n, shape in want.items():
        r = refs.get(n)
        if r is None:
            problems.append(f"missing tensor {n!r} (expected shape {list(shape)})")
        elif r.shape != shape:
            problems.append(f"tensor {n!r} has shape {list(r.shape)}, expected {list(shape)}")
    if problems:
        raise CheckpointError(_report(path, problems) + "\n  hint: does config.json belong to these weights?")
    return sorted(set(refs) - set(want))


def _as_f32(arr: np.ndarray, tag: str) -> np.ndarray:
    if tag == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32, copy=False)


class Checkpoint:
    """A validated, memory-mapped checkpoint. `raw(name)` gives the on-disk array (bf16 as uint16
    bits); `f32(name)` converts to float32; `bf16(name)` gives bf16 bits (rounding f32/f16)."""

    def __init__(self, path: str | os.PathLike, cfg: LFM2Config | None = None):
        self.path = os.fspath(path)
        self.config = cfg if cfg is not None else LFM2Config.from_hf(self.path)
        self.refs = scan(self.path)
        self.unexpected = validate(self.config, self.refs, self.path)
        self._maps: dict[str, np.memmap] = {}

    def dtype_of(self, name: str) -> str:
        return self.refs[name].dtype

    def raw(self, name: str) -> np.ndarray:
        r = self.refs[name]
        mm = self._maps.get(r.file)
        if mm is None:
            mm = self._maps[r.file] = np.memmap(r.file, dtype=np.uint8, mode="r")
        np_dt = _DTYPES[r.dtype][0]
        return mm[r.start : r.end].view(np_dt).reshape(r.shape)

    def f32(self, name: str) -> np.ndarray:
        return _as_f32(self.raw(name), self.refs[name].dtype)

    def bf16(self, name: str) -> np.ndarray:
        r = self.refs[name]
        a = self.raw(name)
        return np.array(a) if r.dtype == "BF16" else f32_to_bf16(_as_f32(a, r.dtype))

    def names(self):
        return expected_tensors(self.config).keys()

    def state_dict_f32(self) -> dict[str, np.ndarray]:
        """Every manifest tensor as float32 (for the NumPy reference)."""
        return {n: np.array(self.f32(n)) for n in self.names()}

    def fingerprint(self) -> str:
        """Cheap identity of the checkpoint: tensor names, shapes, dtypes, sizes, and the first bytes."""
        import hashlib

        h = hashlib.sha256(self.config.fingerprint().encode())
        for n in sorted(self.refs):
            r = self.refs[n]
            h.update(f"{n}:{r.dtype}:{r.shape}:{r.end - r.start}".encode())
        first = self.raw("model.embed_tokens.weight").reshape(-1)[:256]
        h.update(np.ascontiguousarray(first).tobytes())
        return h.hexdigest()[:16]


def f32_to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even; NaN stays NaN."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bf16_to_f32(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _encode(a: np.ndarray, tag: str) -> np.ndarray:
    if a.dtype == np.uint16:  # already bf16 bits
        return np.ascontiguousarray(a)
    a32 = np.ascontiguousarray(a, dtype=np.float32)
    return {"F32": a32, "F16": a32.astype(np.float16), "BF16": f32_to_bf16(a32)}[tag]


def write_safetensors(path: str, specs: dict[str, tuple[int, ...]], make, dtype: str = "F32",
                      progress=None) -> None:
    """Stream tensors to one .safetensors file atomically without holding them all in memory.

    specs: {name: shape}; make(name) -> float32 array (or uint16 bf16 bits) of that shape, called
    once per tensor in sorted-name order; expert_bias stays F32 (MODEL.md §8)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for n in sorted(specs):
        tag = "F32" if (dtype == "F32" or n.endswith("expert_bias")) else dtype
        nb = int(np.prod(specs[n], dtype=np.int64)) * _DTYPES[tag][1]
        header[n] = {"dtype": tag, "shape": list(specs[n]), "data_offsets": [off, off + nb]}
        off += nb
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with atomic_writer(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for n in sorted(specs):
            a = make(n)
            if tuple(a.shape) != tuple(specs[n]):
                raise ValueError(f"{n}: made shape {a.shape}, declared {specs[n]}")
            if a.dtype == np.uint16 and header[n]["dtype"] != "BF16":
                raise ValueError(f"{n}: bf16 bits given for a {header[n]['dtype']} tensor")
            b = _encode(a, header[n]["dtype"])
            f.write(memoryview(b).cast("B"))
            if progress is not None:
                progress(b.nbytes)


def save_file(tensors: dict[str, np.ndarray], path: str, dtype: str = "F32") -> None:
    """Write a .safetensors file atomically. float32 arrays are stored as `dtype` (F32, F16 or
    BF16); uint16 arrays are taken as bf16 bits already."""
    specs = {n: tuple(a.shape) for n, a in tensors.items()}
    if any(a.dtype == np.uint16 for a in tensors.values()):
        dtype = "BF16"
    write_safetensors(path, specs, tensors.__getitem__, dtype)


class atomic_writer:
    """Context manager: write to a temp file in the target's directory, then os.replace()."""

    def __init__(self, path: str, mode: str = "wb"):
        self.path, self.mode = os.fspath(path), mode

    def __enter__(self):
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
        self.f = os.fdopen(fd, self.mode)
        return self.f

    def __exit__(self, exc_type, exc, tb):
        self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
        return False


def save_pretrained(cfg: LFM2Config, tensors, out_dir: str, dtype: str = "F32",
                    max_shard_bytes: int | None = None, progress=None) -> None:
    """Write config.json + safetensors (sharded with an index when max_shard_bytes is set).

    `tensors` is a dict of arrays, or a callable name -> array for the manifest of `cfg`
    (streamed, so a real-size checkpoint never sits in memory)."""
    os.makedirs(out_dir, exist_ok=True)
    if callable(tensors):
        specs, make = expected_tensors(cfg), tensors
    else:
        specs, make = {n: tuple(a.shape) for n, a in tensors.items()}, tensors.__getitem__
    itemsize = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    if max_shard_bytes is None:
        write_safetensors(os.path.join(out_dir, SINGLE_NAME), specs, make, dtype, progress)
    else:
        shards: list[dict] = [{}]
        size = 0
        for n in sorted(specs):
            nb = int(np.prod(specs[n], dtype=np.int64)) * itemsize
            if shards[-1] and size + nb > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][n] = specs[n]
            size += nb
        wmap = {}
        for k, sh in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(os.path.join(out_dir, fname), sh, make, dtype, progress)
            wmap.update({n: fname for n in sh})
        with atomic_writer(os.path.join(out_dir, INDEX_NAME), "w") as f:
            json.dump({"metadata": {}, "weight_map": wmap}, f, indent=1)
    hf = cfg.to_hf_dict()
    hf["dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    with atomic_writer(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
