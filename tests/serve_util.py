"""Shared by the serving tests: a tiny checkpoint with a real tokenizer and chat template, a slow
step executor, and the offline results served answers must equal."""

from __future__ import annotations

import json
import os
import shutil
import time

from lfm2engine.serve.steps import StepExecutor

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}")
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]  # ids 0..5: pad, bos, eos as the config
CORPUS = ["the cat sat on the mat", "a dog ran in the park", "hello world how are you", "system user assistant",
          "one two three four five six seven eight nine ten", "red green blue yellow black white",
          " ".join(f"w{i}" for i in range(200))]  # fills the vocabulary: every id of the tiny models is a word


def add_tokenizer(src_dir: str, out_dir: str, vocab_size: int) -> str:
    """Copy a checkpoint and give it a word-level tokenizer.json (trained here on CORPUS, BOS/EOS
    as the config's ids 1/2) and a tokenizer_config.json with a Jinja2 chat_template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    shutil.copytree(src_dir, out_dir, dirs_exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIAL))
    assert tok.get_vocab_size() <= vocab_size
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": CHAT_TEMPLATE,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    return out_dir


class SlowSteps(StepExecutor):
    """A step executor that also sleeps `delay` seconds per step, so that a test can act while a
    request is still running (a client that disconnects, a full queue)."""

    def __init__(self, *a, delay: float = 0.02, **kw):
        super().__init__(*a, **kw)
        self.delay = delay

    def step(self, seqs, tokens, released=()):
        time.sleep(self.delay)
        return super().step(seqs, tokens, released)


def offline(engine, prompt, max_tokens, temperature=0.0, seed=None, top_k=0, top_p=1.0):
    """What a served request must return: Engine.generate of that prompt alone, stopping at EOS."""
    return engine.generate([prompt], max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                           stop_at_eos=True)[0]
