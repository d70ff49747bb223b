"""The shipped trained pair `tiny` / `tiny-draft` (scripts/train_tiny.py): layout, tokenizer, names,
a golden greedy continuation checked against transformers, and speculative decoding with the
trained draft. Perplexity tests are in test_perplexity.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lfm2engine import Engine, LFM2Config
from lfm2engine.errors import InputError
from lfm2engine.models import SHIPPED, held_out_text, model_dir, resolve_name, shipped_dir
from lfm2engine.tokenizer import TextTracker
from lfm2engine.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "And God said"
# Greedy continuation of BOS + PROMPT by `tiny` (fp32), 24 tokens: " unto him, When thou hast done, and thou
# hast done, ..." (tiny greedy models loop). Regenerate after retraining:
#   python -m lfm2engine.generate --model tiny --prompt "And God said" --max-new-tokens 24 --json
GOLDEN = [322, 334, 16, 805, 282, 360, 584, 823, 16, 272, 360, 584, 823, 16, 272, 360, 584, 823, 16, 272, 360,
          584, 823, 16]


@pytest.fixture(scope="module")
def tiny():
    return Engine.from_pretrained("tiny")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(shipped_dir("tiny"))


def test_shipped_layout_and_configs():
    total = 0
    for name in SHIPPED:
        d = shipped_dir(name)
        files = sorted(os.listdir(d))
        assert files == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"], files
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    assert total <= 25 * 2**20
    t, d = LFM2Config.from_hf(shipped_dir("tiny")), LFM2Config.from_hf(shipped_dir("tiny-draft"))
    # LFM2-8B-A1B's pattern scaled down: dense first layers, conv/attention interleaved, top-k > 1, expert bias
    assert t.is_moe and t.num_dense_layers == 2 and t.num_experts_per_tok > 1 and t.use_expert_bias
    assert t.layer_types[:2] == ("conv", "conv") and 2 < len(t.attention_layers) < t.num_hidden_layers
    assert not d.is_moe and d.vocab_size == t.vocab_size and d.hidden_size < t.hidden_size
    with open(os.path.join(shipped_dir("tiny"), "tokenizer.json"), "rb") as a, \
            open(os.path.join(shipped_dir("tiny-draft"), "tokenizer.json"), "rb") as b:
        assert a.read() == b.read()
    # the expert bias was trained (aux-loss-free balancing moved it), not left at zero
    from lfm2engine.checkpoint import Checkpoint

    ck = Checkpoint(shipped_dir("tiny"))
    bias = ck.f32(f"model.layers.{t.num_dense_layers}.feed_forward.expert_bias")
    assert np.abs(bias).max() > 0
    assert os.path.getsize(held_out_text()) > 10_000


def test_names_resolve(tmp_path, monkeypatch):
    assert model_dir("tiny") == shipped_dir("tiny") and resolve_name("tiny-draft") == shipped_dir("tiny-draft")
    assert resolve_name(str(tmp_path)) == str(tmp_path)
    with pytest.raises(InputError, match="--draft nope: not a directory .*tiny, tiny-draft"):
        model_dir("nope", "--draft")
    with pytest.raises(InputError, match="unknown shipped model"):
        shipped_dir("huge")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert model_dir("tiny") == "tiny"  # an existing directory wins over the shipped name


@pytest.mark.parametrize("text", [
    "In the beginning God created the heaven and the earth.\n",
    "Jesus wept.",
    "  leading spaces, trailing\t\ttabs  \n\n",
    "unicode: naïve café — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓ 日本語",
    "<|im_start|>user\nhello<|im_end|>",
])
def test_tokenizer_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    stream = TextTracker(tok, [])  # the incremental decoder of generate --prompt and of the server
    pieces = "".join(stream.push(t) for t in ids) + stream.push(None)
    assert pieces == text  # streaming never splits a multi-byte character into garbage


def test_tokenizer_specials_and_hf(tok):
    from transformers import AutoTokenizer

    assert tok.encode("x", add_bos=1)[0] == 1
    for i, s in enumerate(["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]):
        assert tok.tok.token_to_id(s) == i
    hf = AutoTokenizer.from_pretrained(shipped_dir("tiny"))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    text = "And the LORD spake unto Moses, saying,"
    assert hf(text)["input_ids"] == tok.encode(text, add_bos=1)
    msgs = [{"role": "user", "content": "hi"}]
    chat = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert chat == "<|startoftext|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    from lfm2engine.serve.chat import ChatTemplate  # the server renders it the same way

    assert ChatTemplate.from_model_dir(shipped_dir("tiny")).render(msgs) == chat
    assert len(tok.encode(text)) < len(text) / 3  # BPE trained on the corpus: whole words are tokens


def test_golden_greedy_continuation(tiny, tok, hf_model):
    from hf_oracle import hf_greedy

    prompt = tok.encode(PROMPT, add_bos=tiny.config.bos_token_id)
    ours = tiny.generate([prompt], 24)[0]
    assert ours == hf_greedy(hf_model(shipped_dir("tiny")), prompt, 24)
    assert ours == GOLDEN
    text = tok.decode(ours)
    words = text.split()
    assert len(words) >= 6 and all(w.strip(",.;:?!'()").isalpha() for w in words), text  # readable English


def test_speculative_greedy_identical_with_trained_draft(tiny, tok):
    from lfm2engine.specdecode import SpeculativeDecoder

    draft = Engine.from_pretrained("tiny-draft")
    prompt = tok.encode("And the LORD spake unto Moses, saying,", add_bos=1)
    plain = tiny.generate([prompt], 40)[0]
    for k, w in ((4, 1), (3, 2)):
        dec = SpeculativeDecoder(tiny, draft, k=k, width=w)
        out, st = dec.generate([prompt], 40)
        assert out[0] == plain, (k, w)
        assert st.accepted > 0  # a trained draft agrees with the target some of the time


def test_generate_cli_streams_text(tok):
    env = {k: v for k, v in os.environ.items() if k not in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")}
    args = [sys.executable, "-m", "lfm2engine.generate", "--model", "tiny", "--prompt", PROMPT,
            "--max-new-tokens", "12", "-q"]
    j = subprocess.run([*args, "--json"], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    summary = json.loads(j.stdout)
    assert summary["tokens"] == GOLDEN[:12] and summary["text"] == tok.decode(summary["tokens"])
    for plan in ("dp", "ep", "tp"):  # the streamed text is the same under every plan's decode loop
        r = subprocess.run([*args, "--plan", plan], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        assert r.stdout == PROMPT + summary["text"] + "\n", plan


def test_on_token_sees_every_token_as_it_is_made(tiny):
    seen = []
    out = tiny.generate([[1, 300, 399], [1, 5]], 6, on_token=lambda i, t: seen.append((i, t)))
    assert [t for i, t in seen if i == 0] == out[0] and [t for i, t in seen if i == 1] == out[1]
    assert seen[:2] == [(0, out[0][0]), (1, out[1][0])]  # step by step, not at the end
