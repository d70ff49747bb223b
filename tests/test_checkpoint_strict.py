"""The safetensors reader is as strict as the format (issue 16, item 3): each class of malformed
header or layout, and each config the weights do not match, is one CheckpointError/ConfigError
that names what is wrong; a legal but unpadded header loads and runs."""

import json
import os
import struct
import time

import numpy as np
import pytest

from helpers import small_model
from lfm2engine.checkpoint import Checkpoint, expected_tensors, manifest_size, save_pretrained
from lfm2engine.config import LFM2Config
from lfm2engine.errors import CheckpointError, ConfigError


@pytest.fixture
def small(tmp_path):
    cfg, tensors = small_model()
    d = tmp_path / "ck"
    save_pretrained(cfg, tensors, str(d))
    return cfg, tensors, d


def split(path):
    data = path.read_bytes()
    hlen = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + hlen]), data[8 + hlen :]


def write(path, header, body, pad=True):
    hj = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        hj += b" " * (-len(hj) % 8)
    path.write_bytes(struct.pack("<Q", len(hj)) + hj + body)


def problems_of(d, match=None, n=None):
    with pytest.raises(CheckpointError, match=match) as ei:
        Checkpoint(str(d))
    msg = str(ei.value)
    if n is not None:
        assert f"{n} problem(s)" in msg, msg
    return msg


def first_two(header):
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    return names[0], names[1]


def test_overlap_alias_and_hole(small):
    cfg, _, d = small
    p = d / "model.safetensors"
    h, body = split(p)
    a, b = first_two(h)
    h[b]["data_offsets"] = list(h[a]["data_offsets"])  # b aliases a's bytes (same shape) ...
    h[b]["shape"] = h[a]["shape"]
    h[b]["dtype"] = h[a]["dtype"]
    write(p, h, body)
    msg = problems_of(d, n=2)
    assert f"tensor {b!r}" in msg and "overlap" in msg
    assert "belong to no tensor (a hole" in msg  # ... and b's own bytes are owned by nobody


def test_trailing_bytes(small):
    _, _, d = small
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes() + b"\0" * 12)
    problems_of(d, match="12 trailing bytes after the last tensor", n=1)


def test_duplicate_keys_nan_and_non_object(small):
    _, _, d = small
    p = d / "model.safetensors"
    h, body = split(p)
    hj = json.dumps(h, separators=(",", ":")).encode()
    a = first_two(h)[0]
    dup = hj[:-1] + b',"' + a.encode() + b'":' + json.dumps(h[a]).encode() + b"}"
    write(p, dup, body)
    problems_of(d, match=f"key '{a}' appears twice")
    write(p, hj.replace(b'"F32"', b"NaN", 1), body)
    problems_of(d, match="NaN is not JSON")
    write(p, b"[1, 2]", body)
    problems_of(d, match="header is a JSON list, not an object")
    write(p, b"[" * 100_000 + b"]" * 100_000, body)
    problems_of(d, match="not valid JSON")


def test_bad_types_reported_together(small):
    _, _, d = small
    p = d / "model.safetensors"
    h, body = split(p)
    names = sorted(k for k in h if k != "__metadata__")
    h[names[0]]["shape"] = [256.9]
    h[names[1]]["shape"] = ["8"]
    h[names[2]]["data_offsets"] = ["0", "4"]
    h[names[3]]["data_offsets"] = [True, 4]
    h[names[4]]["shape"] = [2**70, 2**70]
    h[names[5]] = [1, 2]
    h[names[6]]["extra"] = 1
    h[names[7]]["shape"] = [-1]
    h["__metadata__"] = {"format": 1}
    write(p, h, body)
    msg = problems_of(d, n=9)
    assert msg.count("is not a list of non-negative integers") == 3
    assert msg.count("are not two integers") == 2
    assert "shape [1180591620717411303424, 1180591620717411303424] F32 needs" in msg
    assert "entry is a list" in msg and "unknown key(s) 'extra'" in msg and "__metadata__" in msg


def test_unexpected_tensors(small, tmp_path):
    cfg, tensors, _ = small
    t = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"]})
    save_pretrained(cfg, t, str(tmp_path / "head"))
    problems_of(tmp_path / "head", match="unexpected tensor 'lm_head.weight' .*tie_word_embeddings is true", n=1)
    # a 3-layer file read with a 2-layer config: the third layer's tensors are all unexpected
    two = cfg.replace(num_hidden_layers=2, layer_types=cfg.layer_types[:2])
    save_pretrained(cfg, tensors, str(tmp_path / "three"))
    (tmp_path / "three" / "config.json").write_text(json.dumps(two.to_hf_dict()))
    n_extra = sum(1 for n in tensors if n.startswith("model.layers.2."))
    msg = problems_of(tmp_path / "three", match="num_hidden_layers = 2", n=n_extra)
    assert "unexpected tensor 'model.layers.2.conv.in_proj.weight'" in msg


def test_index_shard_names_are_checked(small, tmp_path):
    cfg, tensors, _ = small
    d = tmp_path / "sh"
    save_pretrained(cfg, tensors, str(d), max_shard_bytes=4000)
    idx = d / "model.safetensors.index.json"
    doc = json.loads(idx.read_text())
    k = next(iter(doc["weight_map"]))
    doc["weight_map"][k] = "../elsewhere.safetensors"
    idx.write_text(json.dumps(doc))
    problems_of(d, match="a shard must be a \\*.safetensors file name")
    doc["weight_map"][k] = 7
    idx.write_text(json.dumps(doc))
    problems_of(d, match="weight_map names shard")
    idx.write_text('{"weight_map": {}, "weight_map": {}}')
    problems_of(d, match="appears twice")


def test_config_sizes_refused_before_listing(small, tmp_path):
    cfg, _, d = small
    hf = json.loads((d / "config.json").read_text())
    for key, v in (("num_experts", 2**63), ("num_experts", 10**30), ("num_hidden_layers", 2**63),
                   ("vocab_size", 2**40), ("moe_intermediate_size", 2**31)):
        with pytest.raises(ConfigError, match=f"{key} .*exceeds"):
            LFM2Config.from_dict(dict(hf, **{key: v}))
    # within the bounds but far more tensors than the file holds: refused without listing them
    big = dict(hf, num_experts=65_536, num_hidden_layers=1024, layer_types=["conv"] * 1024, vocab_size=2**31 - 1)
    (d / "config.json").write_text(json.dumps(big))
    t0 = time.process_time()
    msg = problems_of(d, match="config.json describes")
    assert time.process_time() - t0 < 5, "the manifest of 2e8 tensors must not be listed"
    n, el = manifest_size(LFM2Config.from_dict(big))
    assert f"{n} tensors ({el} parameters" in msg


DENSE = {"model_type": "lfm2", "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 3,
         "num_attention_heads": 2, "intermediate_size": 30, "full_attn_idxs": [1], "tie_embedding": False}


@pytest.mark.parametrize("moe", [True, False])
def test_manifest_size_counts_the_manifest(small, moe):
    cfg = small[0] if moe else LFM2Config.from_dict(DENSE)
    m = expected_tensors(cfg)
    assert manifest_size(cfg) == (len(m), sum(int(np.prod(s)) for s in m.values()))


def test_unpadded_header_loads_and_runs(small, tmp_path):
    """Data may start at any offset: an odd header length leaves every tensor unaligned."""
    from lfm2engine import Engine

    cfg, _, d = small
    p = d / "model.safetensors"
    h, body = split(p)
    u = tmp_path / "unaligned"
    os.makedirs(u)
    (u / "config.json").write_text((d / "config.json").read_text())
    hj = json.dumps(h, separators=(",", ":")).encode()
    hj += b" " * ((1 - len(hj)) % 8)  # 8 + len(hj) odd
    write(u / "model.safetensors", hj, body, pad=False)
    ck = Checkpoint(str(u))
    assert ck.refs["model.embed_tokens.weight"].start % 4 == 1
    ids = [[3, 5, 7, 11, 2]]
    for dtype in ("float32", "bfloat16"):
        a = Engine.from_pretrained(str(d), dtype=dtype).logits(ids)
        b = Engine.from_pretrained(str(u), dtype=dtype).logits(ids)
        assert np.array_equal(a, b)
