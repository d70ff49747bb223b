"""The weights an engine computes with cannot change or vanish under it (issue 16 items 1 and 4):
once the fused C++ model reads them in place they are frozen (no attribute can be replaced, the
layer list is a tuple, the arrays are read-only), variants are built from copies, every array is
the engine's own (a checkpoint truncated or replaced after loading cannot fault a forward), and
the digest that MPI ranks compare changes with any weight byte. Run under AddressSanitizer by
scripts/sanitize.sh."""

from __future__ import annotations

import gc
import os
import shutil

import helpers
import numpy as np
import pytest
from lfm2engine import Engine
from lfm2engine.checkpoint import Checkpoint, save_file
from lfm2engine.errors import CheckpointError, InputError

helpers.import_core()

PROMPTS = [[3, 1, 4, 1, 5, 9], [2, 6]]


@pytest.fixture
def eng(hf_ckpt):
    return Engine.from_pretrained(hf_ckpt("moe_a"))


def test_weights_cannot_be_replaced_under_the_fused_model(eng):
    want = eng.logits(PROMPTS)  # builds the fused model: from now on it reads the arrays in place
    assert eng.fused_model() is not None
    moe = next(lw for lw in eng.w.layers if lw.ew13 is not None)
    old = moe.ew13
    with pytest.raises(InputError, match="cannot replace layer weight 'ew13': these weights are frozen"):
        moe.ew13 = moe.ew13.copy()  # was: the next forward read freed memory (ASan: heap-use-after-free)
    with pytest.raises(InputError, match=r"cannot replace weights\.embed"):
        eng.w.embed = eng.w.embed.copy()
    with pytest.raises(InputError, match=r"cannot replace weights\.layers"):
        eng.w.layers = list(eng.w.layers)
    with pytest.raises(TypeError):  # the layer list is a tuple
        eng.w.layers[0] = eng.w.layers[0].copy()
    with pytest.raises(ValueError, match="read-only"):
        old[0, 0, 0] = 1.0
    assert moe.ew13 is old
    gc.collect()
    np.testing.assert_array_equal(eng.logits(PROMPTS), want)


def test_variants_are_built_from_copies(eng):
    want = eng.logits(PROMPTS)
    layers = [lw.copy() for lw in eng.w.layers]
    i = next(k for k, lw in enumerate(layers) if lw.ew13 is not None)
    layers[i].ew13 = np.ascontiguousarray(layers[i].ew13 * np.float32(0.5))  # a copy is mutable
    other = Engine(eng.config, eng.w.with_layers(layers), "cpu")
    got = other.logits(PROMPTS)
    assert not np.array_equal(got, want)
    del layers, other
    gc.collect()
    np.testing.assert_array_equal(eng.logits(PROMPTS), want)  # the original is untouched


def test_an_engine_given_new_weights_rebuilds_its_fused_model(eng):
    want = eng.logits(PROMPTS)
    f = eng.fused_model()
    layers = [lw.copy() for lw in eng.w.layers]
    eng.w = eng.w.with_layers(layers)
    assert eng.fused_model() is not f
    np.testing.assert_array_equal(eng.logits(PROMPTS), want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_checkpoint_truncated_or_replaced_after_loading(hf_ckpt, tmp_path, dtype):
    """Every weight array is the engine's own copy, not a view of the file mapping: cutting the
    file (which would make a mapped read SIGBUS) or replacing it changes nothing."""
    d = tmp_path / "m"
    shutil.copytree(hf_ckpt("moe_a"), d)
    eng = Engine.from_pretrained(str(d), dtype=dtype)
    f = d / "model.safetensors"
    os.truncate(f, 0)
    gc.collect()
    a = eng.logits(PROMPTS)
    f.unlink()
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    np.testing.assert_array_equal(eng.logits(PROMPTS), a)
    assert np.isfinite(a).all()
    arrays = [eng.w.embed] + [getattr(lw, s) for lw in eng.w.layers for s in lw.NAMES]
    assert all(x.flags.owndata for x in arrays if isinstance(x, np.ndarray))


def test_checkpoint_truncated_while_loading_is_a_checkpoint_error(hf_ckpt, tmp_path):
    """Tensors are read with positioned reads, not through a mapping: a file cut after its header
    was validated (while the engine loads) gives a CheckpointError naming the tensor, not a SIGBUS;
    a file replaced after it was opened is still read from the validated bytes."""
    from lfm2engine.weights import Weights

    d = tmp_path / "m"
    shutil.copytree(hf_ckpt("moe_a"), d)
    f = d / "model.safetensors"
    ck = Checkpoint(str(d))
    last = max(ck.refs, key=lambda n: ck.refs[n].end)
    want = np.array(ck.f32(last))  # opens the file
    keep = f.read_bytes()
    f.unlink()
    f.write_bytes(b"\0" * 64)  # replaced: the open file is still the validated one
    np.testing.assert_array_equal(ck.f32(last), want)
    ck.close()
    f.write_bytes(keep[: ck.refs[last].start + 10])  # cut inside the last tensor, then reopened
    with pytest.raises(CheckpointError, match=f"ends inside tensor '{last}'.*truncated or replaced while loading"):
        ck.f32(last)
    with pytest.raises(CheckpointError, match="truncated or replaced while loading"):
        Weights(ck, "float32", Engine.from_pretrained(hf_ckpt("moe_a")).backend)


def test_digest_changes_with_any_weight_byte(hf_ckpt, tmp_path):
    src = hf_ckpt("moe_a")
    base = Engine.from_pretrained(src)
    ck = Checkpoint(src)
    name = "model.layers.1.feed_forward.experts.2.w2.weight"
    for k, change in enumerate((lambda v: np.nextafter(v, np.float32(np.inf)), lambda v: np.float32(1e-30))):
        d = tmp_path / f"m{k}"
        shutil.copytree(src, d)
        tensors = {n: np.array(ck.f32(n)) for n in ck.refs}
        t = tensors[name].reshape(-1)
        t[t.size // 2] = change(t[t.size // 2])  # one ulp; a tiny value
        save_file(tensors, str(d / "model.safetensors"))
        other = Engine.from_pretrained(str(d))
        assert other.w.digest != base.w.digest and other.fingerprint != base.fingerprint
    again = Engine.from_pretrained(src)
    assert again.w.digest == base.w.digest and again.fingerprint == base.fingerprint


def test_the_fused_model_pins_every_array_it_reads(eng):
    """Even when the freeze is bypassed on purpose, the fused model reads the arrays of its own
    snapshot, which keeps them alive (under scripts/sanitize.sh: no heap-use-after-free)."""
    want = eng.logits(PROMPTS)
    for lw in eng.w.layers:
        for s in lw.NAMES:
            a = getattr(lw, s)
            if isinstance(a, np.ndarray):
                object.__setattr__(lw, s, np.zeros_like(a))  # the engine's reference to every array dropped
    object.__setattr__(eng.w, "embed", np.zeros_like(eng.w.embed))
    gc.collect()
    np.testing.assert_array_equal(eng.logits(PROMPTS), want)  # a plain pass runs wholly in the fused model


def test_a_checkpoint_replaced_while_loading_is_a_checkpoint_error(hf_ckpt, tmp_path, monkeypatch):
    """A mapped file replaced (or rewritten) half-way through the load would mix old and new
    weights: the load notices and refuses."""
    import lfm2engine.weights as W
    from lfm2engine.errors import CheckpointError

    d = tmp_path / "m"
    shutil.copytree(hf_ckpt("moe_a"), d)
    f = d / "model.safetensors"
    real, calls = W._own, [0]

    def own(a):
        calls[0] += 1
        if calls[0] == 3:  # another writer's atomic replacement, mid-load
            shutil.copy(f, d / "new")
            os.replace(d / "new", f)
        return real(a)

    monkeypatch.setattr(W, "_own", own)
    with pytest.raises(CheckpointError, match="model.safetensors: the file was replaced or changed while the engine"):
        Engine.from_pretrained(str(d))
    monkeypatch.setattr(W, "_own", real)
    assert Engine.from_pretrained(str(d)).logits(PROMPTS).shape == (2, 97)
