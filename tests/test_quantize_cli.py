"""python -m lfm2engine.quantize (issue 14, item 3): writes a GGUF the reader loads; every refusal
(unknown dtype, unwritable output, widths that are not whole blocks, a bad source) comes before any
work, as one line on stderr with exit status 2, and leaves no file behind."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf_util import SMALL, write_checkpoint

from lfm2engine import quant
from lfm2engine.checkpoint import Checkpoint, GGUFCheckpoint
from lfm2engine.models import shipped_dir
from lfm2engine.quantize import main


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_checkpoint(SMALL, tmp_path_factory.mktemp("qcli") / "small")


def test_writes_a_gguf_the_reader_loads(small, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main([small, str(out), "--dtype", "q4_0", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    g, s = GGUFCheckpoint(out), Checkpoint(small)
    a = g.raw("model.layers.0.conv.in_proj.weight")
    assert a.tobytes() == quant.quantize(s.f32("model.layers.0.conv.in_proj.weight"), "q4_0").tobytes()
    np.testing.assert_array_equal(g.raw("model.layers.0.conv.conv.weight"), s.f32("model.layers.0.conv.conv.weight"))
    assert g.meta["general.name"] == "small" and g.meta["tokenizer.ggml.model"] == "none"


def test_shipped_model_with_its_tokenizer(tmp_path):
    out = tmp_path / "tiny.gguf"
    r = subprocess.run([sys.executable, "-m", "lfm2engine.quantize", "tiny", str(out), "--dtype", "q8_0"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    meta = GGUFCheckpoint(out).meta
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"]) == 2048 and meta["tokenizer.ggml.tokens"][1] == "<|startoftext|>"


def test_no_tokenizer_and_unknown_pre_tokenizer(tmp_path, capsys):
    import json

    tiny = shipped_dir("tiny")
    out = tmp_path / "t.gguf"
    assert main(["tiny", str(out), "--dtype", "f16", "--no-tokenizer", "--quiet"]) == 0
    assert GGUFCheckpoint(out).meta["tokenizer.ggml.model"] == "none"
    src = tmp_path / "src"
    shutil.copytree(tiny, src)
    with open(src / "tokenizer.json", encoding="utf-8") as f:
        d = json.load(f)
    d["pre_tokenizer"] = {"type": "Whitespace"}
    with open(src / "tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(d, f)
    out2 = tmp_path / "u.gguf"
    assert main([str(src), str(out2), "--dtype", "q8_0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no llama.cpp name" in err and "--no-tokenizer" in err and "\n" not in err and not out2.exists()


@pytest.mark.parametrize("args, match", [
    (["--dtype", "q5_k"], "--dtype 'q5_k': choose one of q8_0, q4_0, q4_k, q4_k_m, f16, bf16, f32"),
    (["--dtype", "q4_k"], "not whole blocks of 256 weights"),
    (["--dtype", "q4_k_m"], "18 tensor(s) have rows that are not whole blocks of 256 weights: token_embd.weight (Q6_K"),
])
def test_refusals_are_one_line_exit_2(small, tmp_path, capsys, args, match):
    out = tmp_path / "m.gguf"
    assert main([small, str(out)] + args) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err, err
    assert os.listdir(tmp_path) == []                      # nothing written, no temp file left


def test_unwritable_output_and_bad_source(small, tmp_path, capsys):
    assert main([small, str(tmp_path / "no" / "m.gguf"), "--dtype", "q8_0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and "\n" not in err
    assert main([str(tmp_path / "nothing"), str(tmp_path / "m.gguf"), "--dtype", "q8_0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "SRC" in err and "\n" not in err
    assert os.listdir(tmp_path) == []
