"""Checkpoint manifest and loader: HF files load; truncated / corrupt / missing / mis-shaped -> CheckpointError."""

import json
import os
import shutil

import numpy as np
import pytest

from helpers import small_model
from lfm2engine.checkpoint import (Checkpoint, bf16_to_f32, expected_tensors, f32_to_bf16, save_pretrained,
                                   scan)
from lfm2engine.config import LFM2Config
from lfm2engine.errors import CheckpointError
from lfm2engine.synthetic import LFM2_8B_A1B, make_tensor, preset_config, write_synthetic


def test_manifest_matches_model_md_counts():
    cfg = LFM2Config.from_dict(LFM2_8B_A1B)
    m = expected_tensors(cfg)
    assert len(m) == 2302  # MODEL.md §3.1
    total = sum(int(np.prod(s)) for n, s in m.items() if not n.endswith("expert_bias"))
    assert total == 8_339_929_856  # MODEL.md §6


def test_manifest_equals_what_transformers_writes(hf_ckpt):
    for name in ("moe_a", "dense"):
        ck = Checkpoint(hf_ckpt(name))
        assert set(ck.refs) == set(expected_tensors(ck.config))  # and nothing else: Checkpoint would refuse it


def test_bf16_conversion_roundtrip_and_rounding():
    a = np.array([1.0, -2.5, 3.14159, 1e-30, 65504.0, np.inf, 0.0], np.float32)
    b = f32_to_bf16(a)
    back = bf16_to_f32(b)
    fin = np.isfinite(a)
    assert np.all(np.abs(back[fin] - a[fin]) <= np.abs(a[fin]) * 2.0**-8)
    assert back[5] == np.inf
    assert np.isnan(bf16_to_f32(f32_to_bf16(np.array([np.nan], np.float32))))[0]
    # ties to even: 1 + 2^-8 lies halfway between bf16 1.0 and 1 + 2^-7
    assert bf16_to_f32(f32_to_bf16(np.array([1 + 2.0**-8], np.float32)))[0] == 1.0


@pytest.fixture
def small(tmp_path):
    cfg, tensors = small_model()
    return cfg, tensors, tmp_path


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
def test_roundtrip_dtypes_and_sharding(small, dtype):
    cfg, tensors, tmp = small
    save_pretrained(cfg, tensors, str(tmp / "a"), dtype=dtype)
    save_pretrained(cfg, tensors, str(tmp / "b"), dtype=dtype, max_shard_bytes=4000)
    assert os.path.isfile(tmp / "b" / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp / "b") if f.endswith(".safetensors")]) > 2
    a, b = Checkpoint(str(tmp / "a")), Checkpoint(str(tmp / "b"))
    tol = {"F32": 0, "BF16": 2.0**-8, "F16": 2.0**-10}[dtype]
    for n, t in tensors.items():
        assert np.array_equal(a.f32(n), b.f32(n))
        np.testing.assert_allclose(a.f32(n), t, rtol=tol, atol=tol * 1e-3)
    assert a.refs["model.layers.2.feed_forward.expert_bias"].dtype == "F32"  # kept fp32 on disk
    assert a.fingerprint() == b.fingerprint()


def test_truncated_file(small):
    cfg, tensors, tmp = small
    save_pretrained(cfg, tensors, str(tmp / "c"))
    p = tmp / "c" / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpoint(str(tmp / "c"))
    p.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="too short"):
        Checkpoint(str(tmp / "c"))


def test_corrupt_header(small):
    cfg, tensors, tmp = small
    save_pretrained(cfg, tensors, str(tmp / "c"))
    p = tmp / "c" / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[10:20] = b"\xff" * 10
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt|JSON"):
        Checkpoint(str(tmp / "c"))
    p.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        Checkpoint(str(tmp / "c"))


def test_missing_and_misshaped_reported_together(small):
    cfg, tensors, tmp = small
    t = dict(tensors)
    del t["model.layers.0.conv.in_proj.weight"]
    t["model.layers.1.self_attn.q_proj.weight"] = np.zeros((5, 5), np.float32)
    save_pretrained(cfg, t, str(tmp / "d"))
    with pytest.raises(CheckpointError) as ei:
        Checkpoint(str(tmp / "d"))
    msg = str(ei.value)
    assert "missing tensor 'model.layers.0.conv.in_proj.weight'" in msg
    assert "q_proj.weight' has shape [5, 5], expected [32, 32]" in msg
    assert "2 problem(s)" in msg


def test_missing_shard_and_bad_index(small):
    cfg, tensors, tmp = small
    save_pretrained(cfg, tensors, str(tmp / "e"), max_shard_bytes=4000)
    shard = sorted(f for f in os.listdir(tmp / "e") if f.endswith(".safetensors"))[0]
    os.remove(tmp / "e" / shard)
    with pytest.raises(CheckpointError, match="missing"):
        Checkpoint(str(tmp / "e"))
    (tmp / "e" / "model.safetensors.index.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(CheckpointError, match="weight_map"):
        Checkpoint(str(tmp / "e"))


def test_wrong_dtype_and_empty_dir(small):
    cfg, tensors, tmp = small
    save_pretrained(cfg, tensors, str(tmp / "f"))
    p = tmp / "f" / "model.safetensors"
    data = p.read_bytes()
    hlen = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + hlen].replace(b'"F32"', b'"I64"', 1)
    p.write_bytes(data[:8] + header + data[8 + hlen :])
    with pytest.raises(CheckpointError, match="dtype I64"):
        Checkpoint(str(tmp / "f"))
    os.makedirs(tmp / "g")
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        scan(str(tmp / "g"))


def test_config_not_matching_weights(small, hf_ckpt, tmp_path):
    d = tmp_path / "mix"
    shutil.copytree(hf_ckpt("moe_a"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] = 50
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does config.json belong"):
        Checkpoint(str(d))


def test_synthetic_default_is_deterministic_and_hf_loadable(tmp_path):
    cfg = preset_config("default")
    a = write_synthetic(str(tmp_path / "s1"), verbose=False)
    ck = Checkpoint(a)
    assert ck.config == cfg
    one = ck.f32("model.layers.5.feed_forward.experts.3.w2.weight")
    again = make_tensor(cfg, "model.layers.5.feed_forward.experts.3.w2.weight", one.shape)
    np.testing.assert_allclose(one, again, rtol=2.0**-8)
    n = sum(int(np.prod(r.shape)) for k, r in ck.refs.items() if not k.endswith("expert_bias"))
    assert n == 78_391_424
