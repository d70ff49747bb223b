"""`lfm2engine.perplexity`: sliding windows, fp32 perplexity of the shipped tiny model equal to
transformers' on the same text and windows, inputs.bin mode, CLI output and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lfm2engine import Engine
from lfm2engine.errors import InputError
from lfm2engine.models import held_out_text, shipped_dir
from lfm2engine.perplexity import main, rows_perplexity, text_perplexity, token_nll, windows
from lfm2engine.tokenizer import load_tokenizer
from lfm2engine.workload import write_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")}
    return subprocess.run([sys.executable, "-m", "lfm2engine.perplexity", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("n, ctx, stride", [(1, 4, 2), (10, 4, 2), (10, 4, 4), (11, 4, 1), (3, 8, 3), (100, 16, 5)])
def test_windows_score_every_token_once(n, ctx, stride):
    ws = windows(n, ctx, stride)
    scored = [i for w in ws for i in range(w.end - w.scored, w.end)]
    assert scored == list(range(n))
    assert all(w.end - w.begin <= ctx and w.begin % stride == 0 for w in ws)
    # every scored token has >= ctx - stride tokens of context inside its window (or all before it)
    assert all(w.end - w.scored - w.begin >= min(ctx - stride, w.end - w.scored) for w in ws)


@pytest.mark.parametrize("ctx, stride", [(0, 1), (4, 0), (4, 5)])
def test_windows_bad_arguments(ctx, stride):
    with pytest.raises(InputError, match="--ctx|--stride"):
        windows(10, ctx, stride)


def test_token_nll_is_log_softmax():
    lg = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32) * 30
    t = np.array([0, 6, 3, 3, 1])
    x = lg.astype(np.float64)
    want = -(x - np.log(np.exp(x).sum(1, keepdims=True)))[np.arange(5), t]
    np.testing.assert_allclose(token_nll(lg, t), want, rtol=1e-12)


def hf_text_perplexity(model, ids, ctx, stride, bos):
    """The same windows scored by transformers (fp32, eager)."""
    import torch

    total, count = 0.0, 0
    for w in windows(len(ids), ctx, stride):
        seq = ([bos] if bos is not None else []) + ids[w.begin:w.end]
        with torch.no_grad():
            lg = model(torch.tensor([seq]), use_cache=False).logits[0].double()
        f = max(1, len(seq) - w.scored)
        lp = torch.log_softmax(lg[f - 1:len(seq) - 1], dim=-1)
        total -= float(lp[torch.arange(len(seq) - f), torch.tensor(seq[f:])].sum())
        count += len(seq) - f
    return float(np.exp(total / count)), count


@pytest.mark.parametrize("bos", [True, False])
def test_fp32_perplexity_equals_transformers(hf_model, bos):
    d = shipped_dir("tiny")
    with open(held_out_text(), encoding="utf-8") as f:
        text = f.read()[:1500]
    ids = load_tokenizer(d).encode(text)
    eng = Engine.from_pretrained(d)
    b = eng.config.bos_token_id if bos else None
    ours = text_perplexity(eng, ids, ctx=96, stride=40, bos=b, batch_size=3)
    want, count = hf_text_perplexity(hf_model(d), ids, 96, 40, b)
    assert ours["scored"] == count == len(ids) - (0 if bos else 1)
    assert abs(ours["perplexity"] - want) <= 1e-4 * want, (ours["perplexity"], want)
    assert ours["perplexity"] < 200  # a trained model: far below the vocabulary size (2048)


def test_rows_perplexity_matches_text_windows():
    eng = Engine.from_pretrained("tiny")
    ids = load_tokenizer(shipped_dir("tiny")).encode("And it came to pass, when the king heard it, that he said")
    rows = np.array([ids[:8], ids[4:12]], np.int32)
    got = rows_perplexity(eng, rows, batch_size=1)
    # each row alone = the text mode over that row without BOS, one window
    a = text_perplexity(eng, list(rows[0]), ctx=8, stride=8, bos=None)
    b = text_perplexity(eng, list(rows[1]), ctx=8, stride=8, bos=None)
    assert got["scored"] == 14
    assert np.isclose(got["nll"], (a["nll"] * 7 + b["nll"] * 7) / 14, rtol=1e-12)


def test_cli_text_and_inputs(tmp_path):
    r = run("--model", "tiny", "--text", "held-out", "--max-tokens", "300", "--ctx", "64", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["scored"] == 300 and res["windows"] == 9 and res["stride"] == 32 and res["bos"]
    assert "perplexity" in r.stderr and "windows" in r.stderr  # the progress bar
    eng = Engine.from_pretrained("tiny")
    ids = load_tokenizer(shipped_dir("tiny")).encode(open(held_out_text(), encoding="utf-8").read())[:300]
    assert res["perplexity"] == pytest.approx(text_perplexity(eng, ids, 64, 32, 1)["perplexity"], rel=1e-9)
    write_inputs(str(tmp_path / "in.bin"), np.array([ids[:20], ids[20:40], ids[40:60]], np.int32))
    r = run("--model", "tiny", "--inputs", str(tmp_path / "in.bin"), "-q")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("perplexity ") and "over 57 tokens" in r.stdout


@pytest.mark.parametrize("args, words", [
    (["--model", "tiny", "--text", "/nonexistent.txt"], "InputError: --text /nonexistent.txt: cannot read"),
    (["--model", "tiny", "--text", "held-out", "--stride", "200"], "--stride must be in [1, ctx=128]"),
    (["--model", "tiny", "--text", "held-out", "--ctx", "5000"], "exceeds the model's context"),
    (["--model", "nope", "--text", "held-out"], "InputError: --model nope: not a directory"),
    (["--model", "tiny", "--inputs", "/nonexistent.bin"], "InputError: /nonexistent.bin: cannot read"),
    (["--model", "tiny", "--text", "held-out", "--bf16-dot"], "--bf16-dot needs --dtype bfloat16"),
])
def test_cli_errors(args, words, capsys):
    assert main([*args, "-q"]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_cli_text_without_tokenizer(hf_ckpt, tmp_path, capsys):
    p = tmp_path / "t.txt"
    p.write_text("hello")
    assert main(["--model", hf_ckpt("moe_a"), "--text", str(p), "-q"]) == 2
    assert "tokenizer.json" in capsys.readouterr().err
