"""Bad GGUF files (issue 14, item 6): truncated at several points, wrong magic / version, unknown
and unsupported types, unaligned or overlapping tensors, mismatched shapes, missing / unexpected
tensors, hostile counts -> one CheckpointError listing the problems (never a hang, crash or
MemoryError); and a derandomized hypothesis fuzzer of GGUF bytes."""

import os
import struct

import gguf
import pytest
from gguf_util import SMALL, patch_tensor, tensor_offset, write_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfm2engine.checkpoint import Checkpoint, GGUFCheckpoint, write_gguf
from lfm2engine.errors import CheckpointError, LFM2Error

FUZZ = settings(max_examples=int(os.environ.get("LFM2_FUZZ_EXAMPLES", "200")), deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf-bad")
    src = Checkpoint(write_checkpoint(SMALL, d / "src"))
    out = d / "ok.gguf"
    write_gguf(src, str(out), "q8_0", progress=False)
    return out.read_bytes()


def _load(tmp_path, data: bytes, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return GGUFCheckpoint(p)


def _problems(tmp_path, data: bytes) -> str:
    with pytest.raises(CheckpointError) as e:
        _load(tmp_path, data)
    return str(e.value)


def test_valid_fixture_loads(tmp_path, valid):
    g = _load(tmp_path, valid)
    assert g.config.hidden_size == 32 and g.dtype_of("model.embed_tokens.weight") == "Q8_0"


@pytest.mark.parametrize("frac", [0.0, 0.001, 0.01, 0.05, 0.2, 0.5, 0.9, 0.999])
def test_truncated_anywhere(tmp_path, valid, frac):
    cut = valid[: int(len(valid) * frac)]
    msg = _problems(tmp_path, cut)
    assert "truncated" in msg or "empty" in msg or "ends inside" in msg, msg


def test_truncated_data_lists_every_cut_tensor(tmp_path, valid):
    msg = _problems(tmp_path, valid[: len(valid) - 3000])
    assert msg.count("(truncated)") >= 2 and "problem(s) in the GGUF file" in msg, msg


@pytest.mark.parametrize("head, match", [
    (b"GGUG", "bad magic b'GGUG'"), (b"\x00\x00\x00\x00", "bad magic"),
    (b"GGUF" + struct.pack("<I", 1), "unsupported GGUF version 1"),
    (b"GGUF" + struct.pack("<I", 4), "unsupported GGUF version 4"),
    (b"GGUF" + struct.pack(">I", 3), "big-endian GGUF"),
])
def test_magic_and_version(tmp_path, valid, head, match):
    assert match in _problems(tmp_path, head + valid[len(head):])


def test_unknown_and_unsupported_types_are_named(tmp_path, valid):
    bad = patch_tensor(valid, "blk.0.shortconv.in_proj.weight", type_id=int(gguf.GGMLQuantizationType.IQ2_XS))
    bad = patch_tensor(bad, "blk.1.attn_q.weight", type_id=999)
    msg = _problems(tmp_path, bad)
    assert "'blk.0.shortconv.in_proj.weight' has GGML type IQ2_XS, which lfm2engine does not read" in msg, msg
    assert "'blk.1.attn_q.weight' has GGML type unknown type id 999" in msg, msg
    assert "supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K" in msg


def test_unaligned_overlapping_misshapen_all_listed(tmp_path, valid):
    off = tensor_offset(valid, "blk.1.attn_k.weight")
    bad = patch_tensor(valid, "blk.1.attn_k.weight", offset=off + 4)                 # unaligned, overlaps the next
    bad = patch_tensor(bad, "blk.0.ffn_norm.weight", dims=(16,))                      # shape mismatch
    bad = patch_tensor(bad, "blk.2.ffn_up_exps.weight", dims=(48, 32, 2), type_id=8)  # Q8_0 rows of 48
    msg = _problems(tmp_path, bad)
    assert "'blk.1.attn_k.weight' starts at data offset" in msg and "not a multiple of the alignment 32" in msg, msg
    assert "overlaps tensor" in msg, msg
    assert "tensor 'blk.0.ffn_norm.weight' has shape [16], expected [32]" in msg, msg
    assert "a Q8_0 row needs a multiple of 32 weights, its rows have 48" in msg, msg


def _rewrite(tmp_path, valid, drop=(), add=(), reshape=None):
    """The valid file re-written by gguf.GGUFWriter with tensors dropped / added / reshaped."""
    src = gguf.GGUFReader(_write(tmp_path, valid, "src.gguf"))
    out = tmp_path / "re.gguf"
    w = gguf.GGUFWriter(str(out), "lfm2moe")
    for k, f in src.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        t = f.types
        if t[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, f.contents(), t[0], sub_type=t[-1])
        else:
            w.add_key_value(k, f.contents(), t[0])
    for t in src.tensors:
        if t.name in drop:
            continue
        data = t.data
        if reshape and t.name in reshape:
            data = data.reshape(reshape[t.name])
        w.add_tensor(t.name, data.copy(), raw_dtype=t.tensor_type)
    for n, a in add:
        w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out.read_bytes()


def _write(tmp_path, data, name):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_missing_and_unexpected_tensors(tmp_path, valid):
    import numpy as np

    data = _rewrite(tmp_path, valid, drop=("blk.1.attn_v.weight", "blk.2.ffn_down_exps.weight"),
                    add=(("blk.9.attn_v.weight", np.zeros((4, 4), np.float32)),))
    msg = _problems(tmp_path, data)
    assert "3 problem(s)" in msg, msg
    assert "missing tensor 'blk.1.attn_v.weight' (expected shape [16, 32])" in msg
    assert "missing tensor 'blk.2.ffn_down_exps.weight' (expected shape [2, 32, 32])" in msg
    assert "unexpected tensor 'blk.9.attn_v.weight'" in msg


def test_experts_stacked_in_the_wrong_shape(tmp_path, valid):
    data = _rewrite(tmp_path, valid, reshape={"blk.2.ffn_gate_exps.weight": (1, 64, 34)})  # bytes of [1, 64, 32] q8_0
    want = "tensor 'blk.2.ffn_gate_exps.weight' has shape [1, 64, 32], expected [2, 32, 32]"
    assert want in _problems(tmp_path, data)


@pytest.mark.parametrize("field, value", [(8, 2**62), (16, 2**40), (8, 2**64 - 1), (16, 2**64 - 1)])
def test_hostile_counts_in_the_header(tmp_path, valid, field, value):
    bad = bytearray(valid)
    struct.pack_into("<Q", bad, field, value)
    assert "more than its" in _problems(tmp_path, bytes(bad))


def test_hostile_array_and_string_lengths(tmp_path, valid):
    i = valid.find(b"lfm2moe.attention.head_count_kv")
    at = i + len(b"lfm2moe.attention.head_count_kv") + 4 + 4    # after key, value type (array), item type
    bad = bytearray(valid)
    struct.pack_into("<Q", bad, at, 2**60)                       # an array of 2**60 u32
    assert "elements" in _problems(tmp_path, bytes(bad))
    j = valid.find(b"general.architecture")
    bad = bytearray(valid)
    struct.pack_into("<Q", bad, j + len(b"general.architecture") + 4, 2**63)   # the value string's length
    assert "ends inside" in _problems(tmp_path, bytes(bad))


def test_metadata_describing_a_model_beyond_the_file(tmp_path, valid):
    def set_u32(buf, key, v):
        i = buf.find(key.encode())
        b = bytearray(buf)
        struct.pack_into("<I", b, i + len(key) + 4, v)
        return bytes(b)

    bad = set_u32(set_u32(valid, "lfm2moe.block_count", 60000), "lfm2moe.expert_count", 60000)
    bad = bad.replace(b"lfm2moe.attention.head_count_kv", b"lfm2moe.attention.head_count_kw")  # per-layer list
    assert "the metadata describes" in _problems(tmp_path, bad)


def test_duplicate_tensor_name(tmp_path, valid):
    a, b = "blk.0.ffn_norm.weight", "blk.1.ffn_norm.weight"
    bad = valid.replace(struct.pack("<Q", len(b)) + b.encode(), struct.pack("<Q", len(a)) + a.encode(), 1)
    msg = _problems(tmp_path, bad)
    assert "'blk.0.ffn_norm.weight' appears twice" in msg and "missing tensor 'blk.1.ffn_norm.weight'" in msg, msg


@FUZZ
@given(data=st.data())
def test_fuzz_gguf_bytes(tmp_path, valid, data):
    """Mutated files: a typed error, or a file whose every tensor reads (a CheckpointError at worst)."""
    b = bytearray(valid)
    n_header = valid.find(b"token_embd.weight") + 200                      # most mutations hit the header / table
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["byte", "u32", "u64", "cut", "insert"]))
        at = data.draw(st.integers(0, min(n_header, len(b) - 1)) if data.draw(st.booleans())
                       else st.integers(0, len(b) - 1))
        if kind == "byte":
            b[at] = data.draw(st.integers(0, 255))
        elif kind in ("u32", "u64") and at + 8 <= len(b):
            v = data.draw(st.sampled_from([0, 1, 2, 31, 33, 255, 2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1]))
            if kind == "u32":
                struct.pack_into("<I", b, at, v & 0xFFFFFFFF)
            else:
                struct.pack_into("<Q", b, at, v)
        elif kind == "cut":
            del b[at:]
            if not b:
                break
        elif kind == "insert":
            b[at:at] = bytes(data.draw(st.integers(1, 9)))
    p = tmp_path / "fuzz.gguf"
    p.write_bytes(bytes(b))
    try:
        g = GGUFCheckpoint(p)
    except LFM2Error:
        return
    for n in g.names():
        g.raw(n)
    g.close()
