"""Fuzzing as tests (issue 16, item 9): property-based tests (hypothesis) over the safetensors
reader, the config parser, the workload files and the bindings' argument checks.

The property everywhere: a typed lfm2engine error (the bindings: the TypeError / ValueError /
IndexError their contract names), or success with finite results that match the reference.
Derandomized (the same cases on every run, no example database), bounded to a few seconds per
fuzzer; `pytest tests/test_fuzz.py --hypothesis-show-statistics` prints the cases each ran.
"""

import json
import math
import os
import struct

import numpy as np
import pytest
from helpers import assert_close, import_core
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from lfm2engine import Engine
from lfm2engine import reference as ref
from lfm2engine.checkpoint import Checkpoint, expected_tensors, manifest_size, save_pretrained
from lfm2engine.config import LFM2Config, read_config_json
from lfm2engine.errors import ConfigError, InputError, LFM2Error
from lfm2engine.synthetic import make_tensor, preset_config
from lfm2engine.workload import read_inputs, read_logits, validate

_core = import_core()

# LFM2_FUZZ_EXAMPLES=5000 for a deeper local run (CI: 200 per fuzzer, a few seconds in all)
FUZZ = settings(max_examples=int(os.environ.get("LFM2_FUZZ_EXAMPLES", "200")), deadline=None, derandomize=True,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

CFG = preset_config("default").replace(num_hidden_layers=3, layer_types=("conv", "full_attention", "conv"),
                                       num_experts=2, num_experts_per_tok=1, num_dense_layers=1, hidden_size=16,
                                       num_attention_heads=2, num_key_value_heads=1, vocab_size=40,
                                       intermediate_size=12, moe_intermediate_size=8)
PROMPT = [3, 9, 1, 17, 5]

# any JSON value, biased towards the numbers a header or config holds and their edge cases
NUMBERS = (st.integers(-3, 70) | st.integers(-2**70, 2**70) | st.sampled_from([2**31, 2**63, 2**64 + 1])
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([256.9, 1e30, -0.0, 1e-40]))
JSON = st.recursive(st.none() | st.booleans() | NUMBERS | st.text(max_size=6),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8)


class Valid(tuple):
    """(header dict, data bytes, config.json text) of a valid checkpoint (short repr in reports)."""

    def __repr__(self):
        return "<valid tiny checkpoint>"


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-valid")
    save_pretrained(CFG, {n: make_tensor(CFG, n, s) for n, s in expected_tensors(CFG).items()}, str(d))
    data = (d / "model.safetensors").read_bytes()
    hlen = struct.unpack("<Q", data[:8])[0]
    return Valid((json.loads(data[8 : 8 + hlen]), data[8 + hlen :], (d / "config.json").read_text()))


def load_and_check(d: str) -> str:
    """The property for a checkpoint directory: a typed error, or an engine whose logits are finite
    and match the NumPy reference run on the weights as loaded."""
    try:
        eng = Engine.from_pretrained(d)
        got = eng.logits([PROMPT])[0]
    except LFM2Error as e:
        event(type(e).__name__)
        return type(e).__name__
    assert np.isfinite(got).all()
    ck = Checkpoint(d)
    with np.errstate(all="ignore"):
        # the float32 reference: with weights of 1e19 a float32 sum of squares overflows, and the
        # engine and it rescale such rows alike (test_numerics_guards.test_rmsnorm_overflow)
        want = ref.forward(ck.state_dict_f32(), ck.config, PROMPT)
    assert_close(got, want, k=8 * ck.config.hidden_size, name="fuzzed checkpoint logits")
    event("loaded: logits match the reference")
    return "loaded"


def write_ck(d, header, body, config, pad=True):
    os.makedirs(d, exist_ok=True)
    hj = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        hj += b" " * (-len(hj) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + body)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(config)
    return d


FIELDS = ("dtype", "shape", "data_offsets")
EDIT = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), st.sampled_from(FIELDS), JSON),
    st.tuples(st.just("nudge"), st.integers(0, 10**6), st.sampled_from(("shape", "data_offsets")),
              st.integers(0, 1), st.integers(-9, 9)),
    st.tuples(st.just("swap"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("drop"), st.integers(0, 10**6)),
    st.tuples(st.just("rename"), st.integers(0, 10**6), st.text(max_size=12)),
    st.tuples(st.just("entry"), st.integers(0, 10**6), JSON),
    st.tuples(st.just("key"), st.integers(0, 10**6), st.sampled_from(FIELDS), st.booleans()),
)


def apply(header: dict, edit) -> None:
    names = sorted(k for k in header if k != "__metadata__")
    op, i = edit[0], edit[1] % len(names)
    n = names[i]
    if op == "set" and isinstance(header[n], dict):
        header[n][edit[2]] = edit[3]
    elif op == "nudge" and isinstance(header[n], dict) and isinstance(header[n].get(edit[2]), list):
        v = header[n][edit[2]]
        if v:
            j = edit[3] % len(v)
            if isinstance(v[j], int):
                v[j] += edit[4]
    elif op == "swap":  # two tensors trade places in the data: legal where shapes and dtypes agree
        m = names[edit[2] % len(names)]
        header[n], header[m] = header[m], header[n]
    elif op == "drop":
        del header[n]
    elif op == "rename":
        header[edit[2]] = header.pop(n)
    elif op == "entry":
        header[n] = edit[2]
    elif op == "key" and isinstance(header[n], dict):
        if edit[3]:
            header[n].pop(edit[2], None)
        else:
            header[n]["extra_" + edit[2]] = 1


@FUZZ
@given(edits=st.lists(EDIT, min_size=1, max_size=4), pad=st.booleans(), tail=st.integers(-40, 40))
def test_fuzz_safetensors_header(valid, tmp_path_factory, edits, pad, tail):
    header, body, config = valid
    h = json.loads(json.dumps(header))
    for e in edits:
        apply(h, e)
    body = body[:tail] if tail < 0 else body + bytes(tail)
    load_and_check(write_ck(str(tmp_path_factory.mktemp("h")), h, body, config, pad))


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.none() | st.floats(0, 1))
def test_fuzz_safetensors_bytes(valid, tmp_path_factory, flips, cut):
    """Raw byte edits anywhere (header or data) and truncation at any point."""
    header, body, config = valid
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    raw = bytearray(struct.pack("<Q", len(hj)) + hj + body)
    for where, byte in flips:
        raw[int(where * len(raw))] = byte
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    d = str(tmp_path_factory.mktemp("b"))
    write_ck(d, b"", b"", config)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(raw)
    load_and_check(d)


CONFIG_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size", "layer_types", "full_attn_idxs", "max_position_embeddings",
               "norm_eps", "rope_theta", "rope_parameters", "conv_L_cache", "conv_bias", "tie_word_embeddings",
               "tie_embedding", "bos_token_id", "eos_token_id", "pad_token_id", "moe_intermediate_size",
               "num_experts", "num_experts_per_tok", "num_dense_layers", "use_expert_bias",
               "routed_scaling_factor", "norm_topk_prob", "dtype", "head_dim", "block_ff_dim",
               "block_auto_adjust_ff_dim", "block_ffn_dim_multiplier", "block_multiple_of")
CONFIG_EDIT = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(CONFIG_KEYS), JSON),
    st.tuples(st.just("del"), st.sampled_from(CONFIG_KEYS), st.none()),
    st.tuples(st.just("scale"), st.sampled_from(CONFIG_KEYS), st.sampled_from([0, -1, 2, 3, 2**20, 2**62])),
)


def check_config(d: dict, shapes_only: bool) -> str:
    try:
        cfg = LFM2Config.from_dict(d, shapes_only=shapes_only)
    except ConfigError:
        event("ConfigError")
        return "ConfigError"
    event("accepted")
    for f in ("norm_eps", "rope_theta", "routed_scaling_factor"):
        assert math.isfinite(getattr(cfg, f))
    n_tensors, n_elements = manifest_size(cfg)  # no overflow, no listing
    assert 0 < n_tensors and 0 < n_elements < 2**127
    if n_tensors <= 20_000:
        m = expected_tensors(cfg)
        assert len(m) == n_tensors and all(all(isinstance(s, int) and s >= 1 for s in sh) for sh in m.values())
    if not shapes_only:  # a valid config survives its own HF form
        assert LFM2Config.from_dict(cfg.to_hf_dict()) == cfg
    return "ok"


@FUZZ
@given(base=st.sampled_from(["moe", "dense"]), edits=st.lists(CONFIG_EDIT, min_size=1, max_size=4),
       shapes_only=st.booleans())
def test_fuzz_config(base, edits, shapes_only):
    d = CFG.to_hf_dict() if base == "moe" else {
        "model_type": "lfm2", "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 2, "intermediate_size": 30, "full_attn_idxs": [1]}
    for op, key, v in edits:
        if op == "set":
            d[key] = v
        elif op == "del":
            d.pop(key, None)
        elif isinstance(d.get(key), int) and not isinstance(d.get(key), bool):
            d[key] = d[key] * v
    check_config(d, shapes_only)


@FUZZ
@given(blob=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_fuzz_config_json_file(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("c") / "config.json"
    p.write_bytes(blob)
    try:
        d, _ = read_config_json(str(p))
    except ConfigError:
        event("ConfigError (file)")
        return
    assert isinstance(d, dict)
    check_config(d, False)


def header_then(n, m, body):
    return struct.pack("<ii", n, m) + body


def sized(n, m, delta, fill):
    """A header (n, m) and a body of n*m*4 + delta bytes."""
    return header_then(n, m, (fill * (4 * n * m + delta + 1))[: max(0, 4 * n * m + delta)])


WORKLOAD_BYTES = st.one_of(
    st.builds(sized, st.integers(1, 4), st.integers(1, 5), st.sampled_from([0, 0, 0, -1, 1, 4, -4]),
              st.binary(min_size=1, max_size=8)),
    st.binary(max_size=64),
    st.builds(header_then, st.integers(-3, 6), st.integers(-3, 6), st.binary(max_size=160)),
    st.builds(header_then, st.integers(-2**31, 2**31 - 1), st.integers(-2**31, 2**31 - 1), st.binary(max_size=16)),
)


@FUZZ
@given(blob=WORKLOAD_BYTES, kind=st.sampled_from(["inputs", "logits"]))
def test_fuzz_workload_files(tmp_path_factory, blob, kind):
    p = tmp_path_factory.mktemp("w") / "f.bin"
    p.write_bytes(blob)
    try:
        a = read_inputs(str(p)) if kind == "inputs" else read_logits(str(p))
    except InputError:
        event("InputError")
        return
    event("read")
    n, m = struct.unpack("<ii", blob[:8])
    assert a.shape == (n, m) and a.tobytes() == blob[8:]


@pytest.fixture(scope="module")
def engine(valid, tmp_path_factory):
    """(engine, float64 weights) of the valid checkpoint."""
    header, body, config = valid
    d = write_ck(str(tmp_path_factory.mktemp("e")), header, body, config)
    return Engine.from_pretrained(d), {k: v.astype(np.float64) for k, v in Checkpoint(d).state_dict_f32().items()}


@FUZZ
@given(ids=st.lists(st.integers(-2**31, 2**31 - 1) | st.integers(0, 45), min_size=1, max_size=6))
def test_fuzz_workload_prompts(engine, tmp_path_factory, ids):
    """An inputs.bin of arbitrary ids: InputError, or logits that are finite and equal the reference."""
    eng, w64 = engine
    p = tmp_path_factory.mktemp("p") / "in.bin"
    p.write_bytes(struct.pack("<ii", 1, len(ids)) + np.asarray(ids, "<i4").tobytes())
    prompts = list(read_inputs(str(p)))
    try:
        eng.check_prompts(prompts)
    except InputError:
        assert any(not 0 <= i < CFG.vocab_size for i in ids)
        event("InputError")
        return
    event("ran")
    got = eng.logits(prompts)[0]
    assert np.isfinite(got).all()
    assert_close(got, ref.forward(w64, CFG, ids), k=8 * CFG.hidden_size)


VALUES = st.floats(width=32, allow_nan=True, allow_infinity=True)


@FUZZ
@given(out=st.lists(VALUES, min_size=6, max_size=6), ans=st.lists(VALUES, min_size=6, max_size=6))
def test_fuzz_validation_never_passes_non_finite(out, ans):
    o, a = np.array(out, np.float32).reshape(2, 3), np.array(ans, np.float32).reshape(2, 3)
    res = validate(o, a)
    finite = np.isfinite(o).all() and np.isfinite(a).all()
    assert res["valid"] == bool(finite and (np.abs(o.astype(np.float64) - a) <= 1e-3).all())


# ------------------------------------------------------------------ bindings
DTYPES = ("float32", "float16", "uint16", "int32", "float64", "int64", "uint8")
WEIGHT = ("float32", "uint16", "float16")
B = 2  # cache / state slots


def valid_args(op, t, k, n, v, wdt):
    """(dtype, shape, int range) of each array argument of a valid call of `op` (dims from 1..9;
    t may be 0), then the scalar arguments. Ints are drawn in [0, range) (sorted where the
    contract groups rows), a mutation may push one outside."""
    f, i = "float32", "int32"
    return {
        "gemm": ([(f, (t, n), 0), (f, (t, k), 0), (wdt, (n, k), 0)], ()),
        "rmsnorm": ([(f, (t, k), 0), (f, (t, k), 0), (f, (k,), 0)], ("scalar",)),
        "embedding": ([(f, (t, k), 0), (wdt, (v, k), 0), (i, (t,), v)], ()),
        "argmax": ([(i, (t,), 0), (f, (t, v), 0)], ()),
        "swiglu": ([(f, (t, n), 0), (f, (t, 2 * n), 0)], ()),
        "rope": ([(f, (t, n, 2 * k), 0), (i, (t,), 4 * v)], ("scalar",)),
        "kv_write": ([(f, (B, n, v, k), 0), (f, (B, n, v, k), 0), (f, (t, n, k), 0), (f, (t, n, k), 0),
                      (i, (t,), B), (i, (t,), v)], ()),
        "attention": ([(f, (t, 2 * n, 2 * k), 0), (f, (t, 2 * n, 2 * k), 0), (f, (B, n, v, 2 * k), 0),
                       (f, (B, n, v, 2 * k), 0), (i, (t,), B), (i, (t,), v)], ()),
        "shortconv": ([(f, (t, k), 0), (f, (t, 3 * k), 0), (f, (k, 3), 0), (f, (B, 2, k), 0), ("sorted", (t,), B)],
                      ()),
        "moe_route": ([(i, (t, min(n, v)), 0), (f, (t, min(n, v)), 0), (f, (t, v), 0), (f, (v,), 0)],
                      ("bool", "scalar")),
        "moe_expert_rows": ([(f, (t, k), 0), (f, (t, k), 0), (i, (t,), v), (wdt, (v, 2 * n, k), 0),
                             (wdt, (v, k, n), 0)], ()),
    }[op]


OPS = ("gemm", "rmsnorm", "embedding", "argmax", "swiglu", "rope", "kv_write", "attention", "shortconv", "moe_route",
       "moe_expert_rows")
MUTATION = st.one_of(
    st.tuples(st.just("dtype"), st.integers(0, 5), st.sampled_from(DTYPES)),
    st.tuples(st.just("dim"), st.integers(0, 5), st.integers(0, 3), st.integers(-2, 2)),
    st.tuples(st.just("ndim"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("layout"), st.integers(0, 5), st.sampled_from(["strided", "fortran", "readonly"])),
    st.tuples(st.just("alias"), st.integers(0, 5), st.integers(0, 5)),
    st.tuples(st.just("range"), st.integers(0, 5), st.sampled_from([-1, 0, 1, 2**31 - 1])),
)


def build(dt, shape, rng, hi):
    if dt == "uint16":  # bf16 bits of finite numbers
        bits = np.asarray(rng.standard_normal(shape), np.float32).reshape(-1).view(np.uint32) >> 16
        return bits.astype(np.uint16).reshape(shape)
    if dt == "sorted":  # a contract that groups a sequence's rows: sorted ids
        return np.sort(rng.integers(0, hi, size=shape).reshape(-1)).reshape(shape).astype(np.int32)
    if np.dtype(dt).kind == "f":
        return np.asarray(rng.standard_normal(shape) * 3, dtype=dt)
    return np.asarray(rng.integers(0, max(hi, 1), size=shape), dtype=dt)


@FUZZ
@given(op=st.sampled_from(OPS),
       dims=st.tuples(st.integers(0, 4), st.integers(1, 9), st.integers(1, 5), st.integers(1, 7)),
       wdt=st.sampled_from(WEIGHT), mutations=st.lists(MUTATION, max_size=2),
       scalar=st.sampled_from([1e-5, 1e4, 1.0, 0.0, -1.0, float("nan"), float("inf")]), flag=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fuzz_binding_arguments(op, dims, wdt, mutations, scalar, flag, seed):
    """Valid calls of the CPU ops with up to two argument mutations (dtype, a dimension, the rank,
    layout, read-only output, aliasing, an index out of range): the binding raises the TypeError /
    ValueError / IndexError of its contract, or every argument afterwards (outputs, in-place
    state, untouched inputs) equals what the numpy backend's contract makes of the same call."""
    from lfm2engine.backends import numpy_ops

    # RoPE with 0 < theta < 1 turns faster than 1 rad per position: at positions near 2**31 its
    # angle exceeds 1e14 rad, whose float64 rounding alone moves sin/cos past fp32 tolerances in
    # any implementation (the deep run met it); the contract is compared for other thetas
    assume(not (op == "rope" and 0 < scalar < 1))
    rng = np.random.default_rng(seed)
    specs, scalars = valid_args(op, *dims, wdt)
    specs = [[dt, list(sh), hi] for dt, sh, hi in specs]
    alias, layout, ranges = {}, {}, {}
    for m in mutations:
        j = m[1] % len(specs)
        if m[0] == "dtype":
            specs[j][0] = m[2]
        elif m[0] == "dim" and specs[j][1]:
            d = m[2] % len(specs[j][1])
            specs[j][1][d] = max(0, specs[j][1][d] + m[3])
        elif m[0] == "ndim":
            specs[j][1] = specs[j][1][:-1] if m[2] else specs[j][1] + [1]
        elif m[0] == "layout":
            layout[j] = m[2]
        elif m[0] == "alias":
            alias[j] = m[2] % len(specs)
        else:
            ranges[j] = m[2]
    args = [build(dt, tuple(sh), rng, hi) for dt, sh, hi in specs]
    for j, val in ranges.items():
        a = args[j]
        if a.size and a.dtype.kind in "iu":
            a.reshape(-1)[0] = val + (specs[j][2] if val in (0, 1) else 0) if a.dtype.kind == "i" else 0
    for j, how in layout.items():
        a = args[j]
        if how == "strided" and a.ndim:
            args[j] = np.repeat(a, 2, axis=-1)[..., ::2]
        elif how == "fortran":
            args[j] = np.asfortranarray(a)
        else:
            a.flags.writeable = False
    for j, src in alias.items():
        args[j] = args[src]
    extra = tuple(flag if s == "bool" else scalar for s in scalars)
    before = [a.copy() for a in args]
    try:
        getattr(_core.cpu, op)(*args, *extra)
    except (TypeError, ValueError, IndexError) as e:
        event(f"{op}: {type(e).__name__}")
        return
    event(f"{op}: accepted")
    # accepted: the numpy contract on copies (aliases kept) gives the same arguments afterwards
    want = contract(numpy_ops, op, args, before, extra)
    mags = contract(numpy_ops, op, args, before, extra, absolute=True)
    # float32 accumulation over at most every argument's last dimension (chained GEMMs of the
    # experts), with room for the kernels' vectorized exp in silu/softmax (factor 8), relative to
    # the size of the terms (the contract run on |inputs|), not of a result that cancels
    reduce_len = sum(a.shape[-1] for a in args if a.ndim) or 1
    for j, (got, exp, mag) in enumerate(zip(args, want, mags)):
        if got.dtype.kind == "f":
            scale = max(float(np.sqrt(np.mean(np.square(mag, dtype=np.float64)))) if mag.size else 0.0,
                        float(np.sqrt(np.mean(np.square(exp, dtype=np.float64)))) if exp.size else 0.0)
            assert_close(got, exp, k=reduce_len, factor=8.0, scale=scale, name=f"{op} argument {j}")
        else:
            assert np.array_equal(got, exp), f"{op} argument {j}: {got} != {exp}"


def contract(numpy_ops, op, args, before, extra, absolute=False):
    """The arguments after the numpy backend's `op` on copies of `before` (aliased arguments stay
    aliased); absolute=True runs it on |float inputs| (the size of the terms)."""
    copies: dict = {}
    out = []
    for j, a in enumerate(args):
        if id(a) not in copies:
            b = before[j].copy()
            if absolute and b.dtype.kind == "f":
                b = np.abs(b)
            elif absolute and b.dtype == np.uint16:  # bf16 bits: clear the sign
                b = b & np.uint16(0x7FFF)
            copies[id(a)] = b
        out.append(copies[id(a)])
    with np.errstate(all="ignore"):
        getattr(numpy_ops, op)(*out, *extra)
    return out
