"""GGUF files through the engine (issue 14 items 1, 2): files written in the test from random
checkpoints (checkpoint.gguf.write_gguf) load with dtype "auto" (the default: every tensor as it
lies, a Q4_K_M file's q4_k / q6_k mix with v kept apart) or "float32" (dequantized, the exact
reference); auto equals float32 bit for bit (the exact mode's definition), on the fused loop and
the Python loop, prefill and decode; a q8_0 / q4_0 file equals the engine quantized on load from the
same checkpoint (the same blocks); the CLIs take `--model FILE.gguf`; re-quantizing is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf_util import MOE, write_checkpoint
from helpers import assert_close, import_core
from lfm2engine import Engine, quant
from lfm2engine.checkpoint import Checkpoint
from lfm2engine.checkpoint.gguf import write_gguf
from lfm2engine.errors import InputError
from test_quant_engine import assert_runs_equal, python_path, run

_core = import_core()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return write_checkpoint(MOE, tmp_path_factory.mktemp("gguf-src"))


@pytest.fixture(scope="module")
def gguf_file(src, tmp_path_factory):
    made = {}

    def get(dtype):
        if dtype not in made:
            made[dtype] = str(tmp_path_factory.mktemp("gguf") / f"model-{dtype}.gguf")
            write_gguf(Checkpoint(src), made[dtype], dtype, progress=False)
        return made[dtype]

    return get


def test_q4_k_m_file_loads_as_it_lies_and_equals_its_dequantized_load(gguf_file):
    path = gguf_file("q4_k_m")
    eng = Engine.from_pretrained(path)  # the default for a GGUF file: auto
    assert eng.dtype == "auto" and eng.w.types == ("q4_k", "q6_k")
    attn = [lw for i, lw in enumerate(eng.w.layers) if eng.config.is_attention_layer(i)]
    assert attn and all(quant.qtype_of(lw.wv).name == "q6_k" and quant.qtype_of(lw.wqkv).name == "q4_k"
                        for lw in attn)
    ref = Engine.from_pretrained(path, dtype="float32")
    assert ref.w.types == ("float32",) and all(lw.wv is None for lw in ref.w.layers)
    fused = run(eng)
    assert eng.fused_model() is not None
    assert_runs_equal(fused, run(ref))
    assert_runs_equal(run(python_path(eng)), fused)


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_a_file_equals_the_engine_quantized_on_load(dtype, src, gguf_file):
    """GGML's q8_0 / q4_0 rounding is quant.quantize's: the file's blocks are the engine's own."""
    from_file, on_load = Engine.from_pretrained(gguf_file(dtype)), Engine.from_pretrained(src, dtype=dtype)
    assert from_file.w.types == (dtype,) and from_file.w.digest == on_load.w.digest
    assert_runs_equal(run(from_file, 2), run(on_load, 2))


def test_numpy_backend_on_a_gguf_file_agrees_within_rounding(gguf_file):
    path = gguf_file("q4_k_m")
    a, _ = run(Engine.from_pretrained(path), 1)
    b, _ = run(Engine.from_pretrained(path, device="numpy"), 1)
    for x, y in zip(a, b):
        assert_close(x, y, k=4 * 256, name="q4_k_m cpu vs numpy")


@pytest.mark.parametrize("dtype", ["q4_0", "q4_k", "bfloat16"])
def test_a_gguf_file_is_never_requantized(gguf_file, dtype):
    with pytest.raises(InputError, match=rf"dtype '{dtype}' cannot be asked of .*model-q4_k_m.gguf: .* choose from "
                                         "auto, float32"):
        Engine.from_pretrained(gguf_file("q4_k_m"), dtype=dtype)


def cli(args, cache):
    env = dict(os.environ, LFM2ENGINE_CACHE=str(cache))
    for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"):
        env.pop(v, None)
    return subprocess.run([sys.executable, "-m", "lfm2engine.generate", *args], capture_output=True, text=True,
                          env=env, timeout=240, cwd=ROOT)


def test_generate_cli_runs_a_gguf_file(gguf_file, tmp_path):
    """--model FILE.gguf: the default workload's answers come from the file's dequantized weights,
    so -v judges the auto run exactly; generation gives the engine's tokens; --dtype q4_0 is one line."""
    path = gguf_file("q4_k_m")
    r = cli(["--model", path, "-v", "-n", "4", "--outputs", str(tmp_path / "o.bin"), "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["dtype"] == "auto" and s["validation"]["valid"] and s["model"] == path
    assert "dtype auto (q4_k, q6_k)" in r.stderr
    r = cli(["--model", path, "--prompt-ids", "1,2,3", "--max-new-tokens", "5", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokens"] == Engine.from_pretrained(path).generate([[1, 2, 3]], 5)[0]
    r = cli(["--model", path, "--dtype", "q4_0", "--prompt-ids", "1,2"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if "Error" in ln] == [
        f"[rank 0/1] InputError: dtype 'q4_0' cannot be asked of {path}: its tensors are used as they lie in the file "
        "(dtype 'auto', the default) or dequantized ('float32'); it is never re-quantized: choose from auto, float32"]


def test_server_on_a_gguf_file_without_a_tokenizer_takes_token_ids(gguf_file, capsys):
    import urllib.request

    from lfm2engine.serve.server import Server

    path = gguf_file("q4_k_m")  # written without tokenizer metadata: token ids only, with a warning
    eng = Engine.from_pretrained(path)
    with Server(eng, path, max_batch=2, max_context=32, step_tokens=8) as srv:
        assert srv.state.tokenizer is None and srv.state.model_name == "model-q4_k_m.gguf"
        body = json.dumps({"model": "model-q4_k_m.gguf", "prompt": [1, 2, 3], "max_tokens": 4}).encode()
        req = urllib.request.Request(srv.url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.loads(r.read())
    assert out["usage"]["completion_tokens"] == 4
    assert "warning: no text tokenizer" in capsys.readouterr().err


def test_q4_k_m_file_on_the_cuda_backend_equals_the_cpu_engine(gguf_file):
    """The mixed file (v apart in q6_k) through the cuda backend's Python side, on the host
    emulation of _core.cuda: eager prefill, graph capture and replay of decode steps give the CPU
    engine's bits (Engine.qkv_heads writes q, k and v by a GEMM each; no column join is needed)."""
    import fake_cuda
    from lfm2engine.backends.cuda import CudaBackend

    path = gguf_file("q4_k_m")
    gpu, cpu = Engine.from_pretrained(path, device=CudaBackend(fake_cuda)), Engine.from_pretrained(path)
    assert any(lw.wv is not None for lw in gpu.w.layers)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, cpu.config.vocab_size, n).tolist() for n in (3, 8)]
    sg, sc = gpu.session(2, 32), cpu.session(2, 32)
    assert np.array_equal(sg.prefill(prompts), sc.prefill(prompts))
    for step in range(4):  # step 0 eager, step 1 captures, then replays
        toks = [[step + 1], [step + 5]]
        assert np.array_equal(sg.forward([0, 1], toks), sc.forward([0, 1], toks)), f"step {step}"
    assert 2 in sg.backend_cache["graphs"]
