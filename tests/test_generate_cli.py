"""`python -m lfm2engine.generate` end to end: default model, workload files, validation, exit codes, messages."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lfm2engine.workload import read_inputs, read_logits, write_inputs, write_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, cache, timeout=240):
    env = dict(os.environ, LFM2ENGINE_CACHE=str(cache))
    for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"):
        env.pop(v, None)
    return subprocess.run([sys.executable, "-m", "lfm2engine.generate", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_default_model_workload_valid(cache, tmp_path):
    out = tmp_path / "outputs.bin"
    r = run(["-v", "-n", "8", "-w", "1", "--outputs", str(out), "--json"], cache)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["validation"]["valid"] and summary["validation"]["top1_accuracy"] == 1.0
    assert summary["samples"] == 8 and summary["samples_per_s"] > 0 and summary["prompt_tokens_per_s"] > 0
    assert "VALID" in r.stderr and "samples/s" in r.stderr
    logits = read_logits(str(out))
    assert logits.shape == (8, 8192)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]  # atomic: no temp file left


def test_bf16_mode_is_valid_on_the_bf16_checkpoint(cache, tmp_path):
    """The built-in model is stored in bfloat16, so --dtype bfloat16 computes on exactly the weights
    the answers were made from: only float32 accumulation order differs (max |error| ~1e-4), and
    the verdict must be VALID (exit 0). test_invalid_answers_reported shows the INVALID side."""
    out = tmp_path / "o.bin"
    r = run(["-v", "-n", "4", "--dtype", "bfloat16", "--outputs", str(out)], cache)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("VALID: top-1 accuracy 100.0%"), r.stdout
    answers = read_logits(os.path.join(str(cache), *_default_answers(cache)))
    assert np.abs(read_logits(str(out)) - answers[:4]).max() <= 1e-3


def _default_answers(cache):
    """The built-in workload's answers.bin, relative to the cache directory."""
    for root, _, files in os.walk(str(cache)):
        if "answers.bin" in files and "workloads" in root:
            return os.path.relpath(os.path.join(root, "answers.bin"), str(cache)),
    raise AssertionError(f"no built-in answers.bin under {cache}")


def test_invalid_answers_reported(cache, tmp_path, hf_ckpt):
    model = hf_ckpt("moe_a")
    ids = np.random.default_rng(0).integers(0, 97, size=(3, 5)).astype(np.int32)
    write_inputs(str(tmp_path / "in.bin"), ids)
    write_logits(str(tmp_path / "ans.bin"), np.zeros((3, 97), np.float32))
    r = run(["--model", model, "--inputs", str(tmp_path / "in.bin"), "--answers", str(tmp_path / "ans.bin"), "-v",
             "--outputs", str(tmp_path / "o.bin")], cache)
    assert r.returncode == 1
    assert "INVALID" in r.stdout and "first at sample 0" in r.stdout


def test_generation_mode_matches_engine(cache, hf_ckpt):
    from lfm2engine import Engine

    model = hf_ckpt("moe_b")
    r = run(["--model", model, "--prompt-ids", "5,6,7", "--max-new-tokens", "12", "--json"], cache)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["tokens"] == Engine.from_pretrained(model).generate([[5, 6, 7]], 12)[0]
    assert summary["decode_tokens_per_s"] > 0


def test_text_prompt_with_tokenizer(cache, hf_ckpt, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    model = tmp_path / "m"
    shutil.copytree(hf_ckpt("moe_b"), model)
    vocab = {f"w{i}": i for i in range(131)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(model / "tokenizer.json"))
    r = run(["--model", str(model), "--prompt", "w5 w6 w7", "--max-new-tokens", "4", "--json"], cache)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["prompt_ids"] == [1, 5, 6, 7]  # BOS + words
    assert s["text"] == " ".join(f"w{t}" for t in s["tokens"])


@pytest.mark.parametrize("args, words", [
    (["--prompt-ids", "1,2,100000"], "InputError: prompt 0: token id 100000"),
    (["--prompt-ids", "1,x"], "InputError: --prompt-ids must be comma-separated"),
    (["--prompt", "hello"], "tokenizer.json"),
    (["--prompt-ids", "1", "--max-new-tokens", "5000"], "exceed the context"),
    (["-n", "0"], "-n must be >= 1"),
    (["--prompt-ids", "1,2", "--bf16-dot"], "--bf16-dot needs --dtype bfloat16"),
])
def test_cli_errors(cache, hf_ckpt, args, words):
    r = run(["--model", hf_ckpt("moe_a"), *args], cache)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert words in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_files(cache, tmp_path, hf_ckpt):
    model = hf_ckpt("moe_a")
    (tmp_path / "in.bin").write_bytes(np.array([4, 5, 1, 2], "<i4").tobytes())  # says 4×5, holds 2 ids
    r = run(["--model", model, "--inputs", str(tmp_path / "in.bin")], cache)
    assert r.returncode == 2 and "truncated or not an inputs.bin" in r.stderr
    write_inputs(str(tmp_path / "ok.bin"), np.ones((2, 3), np.int32))
    write_logits(str(tmp_path / "a.bin"), np.zeros((2, 50), np.float32))
    r = run(["--model", model, "--inputs", str(tmp_path / "ok.bin"), "--answers", str(tmp_path / "a.bin"), "-v"],
            cache)
    assert r.returncode == 2 and "logits; need" in r.stderr
    r = run(["--model", str(tmp_path / "nope")], cache)
    assert r.returncode == 2 and "not a directory" in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    st = broken / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-64])
    r = run(["--model", str(broken)], cache)
    assert r.returncode == 2 and "CheckpointError" in r.stderr and "truncated" in r.stderr


def test_workload_tool_roundtrip(cache, tmp_path, hf_ckpt):
    env = dict(os.environ, LFM2ENGINE_CACHE=str(cache))
    r = subprocess.run([sys.executable, "-m", "lfm2engine.workload", "make", "--model", hf_ckpt("moe_c"), "--out",
                        str(tmp_path), "-n", "3", "--seq-len", "6"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert read_inputs(str(tmp_path / "inputs.bin")).shape == (3, 6)
    assert read_logits(str(tmp_path / "answers.bin")).shape == (3, 64)
    r = run(["--model", hf_ckpt("moe_c"), "--inputs", str(tmp_path / "inputs.bin"), "--answers",
             str(tmp_path / "answers.bin"), "-v", "--outputs", str(tmp_path / "o.bin")], cache)
    assert r.returncode == 0 and "VALID" in r.stdout


def test_quantized_dtype_end_to_end_is_judged_honestly(cache, tmp_path):
    """--dtype q4_0 on the built-in model: the logits are the q4_0 engine's, bit for bit; -v judges them
    against the reference on the dequantized q4_0 weights (VALID) and reports, unjudged, how far they
    are from the float model's answers (the quantization error: never called VALID)."""
    from lfm2engine import Engine

    out = tmp_path / "q.bin"
    r = run(["-v", "-n", "4", "--dtype", "q4_0", "--outputs", str(out), "--json"], cache)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["dtype"] == "q4_0" and s["validation"]["valid"]
    f = s["validation"]["float_answers"]
    assert f["mismatches"] > 0 and f["max_abs_error"] > 1e-3  # the quantization error is reported, not hidden
    assert "q4_0: against the float model's answers (the quantization error, not judged): top-1 agreement" in r.stderr
    assert "VALID: top-1 accuracy 100.0%" in r.stderr
    ids = read_inputs(os.path.join(str(cache), *_default_answers(cache)).replace("answers.bin", "inputs.bin"))
    want = Engine.from_pretrained(s["model"], dtype="q4_0").logits(list(ids[:4]))
    np.testing.assert_array_equal(read_logits(str(out)), want)


def test_quantized_dtype_refused_where_widths_do_not_split(cache):
    r = run(["--dtype", "q4_k", "--prompt-ids", "1,2"], cache)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "Error" in ln]
    assert len(lines) == 1 and "InputError: dtype q4_k: rows must split into whole blocks of 256 weights" in lines[0]
    assert "experts.0.w2.weight [256, 128]" in lines[0]
