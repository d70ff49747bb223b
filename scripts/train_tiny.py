#!/usr/bin/env python3
"""Train the shipped `tiny` (LFM2-MoE) / `tiny-draft` (dense LFM2) pair on the King James Bible.

Dev-only: needs torch + transformers + tokenizers (the `test` extra); the engine never imports it.

Corpus: the KJV text of the Debian package `bible-kjv` (data in `bible-kjv-text`; the translation
of 1611 is public domain, the BRS software is free to copy: /usr/share/doc/bible-kjv-text/copyright),
dumped with `bible -f gen1:1-rev22:21`, verse references stripped, one verse per line. The last
5 % of the verses (Colossians 4:4 .. Revelation 22:21) are the held-out test split, written next
to the models as kjv_test.txt. Run as root, the script installs the package when `bible` is missing.

Tokenizer: byte-level BPE (`tokenizers`), 2048 ids, <|pad|>=0, <|startoftext|>=1 (BOS),
<|endoftext|>=2 (EOS), <|im_start|>=3, <|im_end|>=4, saved as tokenizer.json + tokenizer_config.json
(with a ChatML-style chat template; the models are not instruction-tuned).

Models (transformers' own classes, fixed seeds, fp32 on disk: 16 MB together):
  tiny        Lfm2MoeForCausalLM, LFM2-8B-A1B's pattern scaled down: 8 layers, attention at 2, 5, 7
              (conv elsewhere), 2 dense layers first, then 8 experts top-2, sigmoid router with an
              expert bias updated aux-loss-free (bias += rate * sign(mean load - load)), tied embeddings.
  tiny-draft  Lfm2ForCausalLM, 4 layers (attention at 1, 3), hidden 96 (tiny: hidden 128).
Both train on random 128-token windows of the train split, each prefixed with BOS (what
`--prompt` and the perplexity windows feed them), AdamW + cosine schedule; the curve (train loss,
held-out loss) goes to stdout.

    python scripts/train_tiny.py                      # both models -> python/lfm2engine/data/models
    python scripts/train_tiny.py --quick --out /tmp/t  # a few steps, to check the pipeline
    # how the shipped pair was made, one model per core in parallel (both train the same tokenizer):
    # 1300 s (tiny) and 727 s (tiny-draft) on a shared 2-core VM; curves in analysis/out/train_tiny*.log
    python scripts/train_tiny.py --only tiny --threads 1 & python scripts/train_tiny.py --only tiny-draft --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "python", "lfm2engine", "data", "models")
PACKAGE = "bible-kjv"
SPECIALS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD, BOS, EOS = 0, 1, 2
VOCAB = 2048
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                 "{{ message['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

COMMON = dict(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, norm_eps=1e-5,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, max_position_embeddings=4096,
              conv_L_cache=3, conv_bias=False, tie_word_embeddings=True, initializer_range=0.02)
TARGET = dict(COMMON, hidden_size=128, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=384, moe_intermediate_size=128, num_experts=8, num_experts_per_tok=2,
              num_dense_layers=2, use_expert_bias=True, routed_scaling_factor=1.0, norm_topk_prob=True,
              layer_types=["full_attention" if i in (2, 5, 7) else "conv" for i in range(8)])
DRAFT = dict(COMMON, hidden_size=96, num_hidden_layers=4, num_attention_heads=3, num_key_value_heads=1,
             intermediate_size=256, block_auto_adjust_ff_dim=False,
             layer_types=["full_attention" if i in (1, 3) else "conv" for i in range(4)])


# ----------------------------------------------------------------------------- corpus
def load_verses() -> list[str]:
    """All 31102 KJV verses in canonical order, without their references."""
    exe = shutil.which("bible")
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing the Debian package {PACKAGE} (the KJV text)", flush=True)
        for cmd in (["apt-get", "install", "-y", "-q", PACKAGE], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", PACKAGE]):  # a fresh machine may need the update
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
            exe = shutil.which("bible")
            if exe is not None:
                break
    if exe is None:
        sys.exit(f"train_tiny: the corpus comes from the Debian package '{PACKAGE}' (program `bible`); "
                 f"install it: apt-get install {PACKAGE}")
    out = subprocess.run([exe, "-f", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    verses = [re.sub(r"^[1-3]?[A-Za-z]+\d+:\d+ ", "", line).strip() for line in out.splitlines()]
    verses = [v for v in verses if v]
    if len(verses) != 31102:
        sys.exit(f"train_tiny: expected 31102 verses from `bible`, found {len(verses)}")
    return verses


def split(verses: list[str], test_fraction: float = 0.05) -> tuple[str, str]:
    cut = int(len(verses) * (1 - test_fraction))
    return "\n".join(verses[:cut]) + "\n", "\n".join(verses[cut:]) + "\n"


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(train_text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_text.splitlines(keepends=True), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A",
                                                       special_tokens=[("<|startoftext|>", BOS)])
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    return tok


def save_tokenizer(tok, d: str) -> None:
    tok.save(os.path.join(d, "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[BOS], "eos_token": SPECIALS[EOS],
           "pad_token": SPECIALS[PAD], "add_bos_token": True, "model_max_length": 4096,
           "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------- training
def build(kind: str, seed: int):
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM, Lfm2MoeConfig, Lfm2MoeForCausalLM

    torch.manual_seed(seed)
    if kind == "tiny":
        return Lfm2MoeForCausalLM(Lfm2MoeConfig(**TARGET))
    return Lfm2ForCausalLM(Lfm2Config(**DRAFT))


class ExpertBalancer:
    """Aux-loss-free load balancing (as DeepSeek-V3 / LFM2-MoE): count each MoE layer's routed tokens
    during the training forward, then move its expert_bias by `rate` towards the mean load."""

    def __init__(self, model, rate: float):
        import torch

        self.rate, self.counts, self.blocks = rate, {}, []
        for name, mod in model.named_modules():
            if hasattr(mod, "expert_bias") and hasattr(mod, "gate"):
                self.blocks.append((name, mod))
                mod.gate.register_forward_hook(self._hook(name))
        self.torch = torch

    def _hook(self, name):
        def hook(_mod, _inp, out):
            sel = out[2]
            self.counts[name] = self.torch.bincount(sel.reshape(-1), minlength=TARGET["num_experts"]).float()
        return hook

    def step(self) -> float:
        """Update the biases; returns the worst layer's max load / mean load."""
        worst = 1.0
        with self.torch.no_grad():
            for name, mod in self.blocks:
                c = self.counts.get(name)
                if c is None:
                    continue
                mod.expert_bias += self.rate * self.torch.sign(c.mean() - c)
                worst = max(worst, float(c.max() / c.mean()))
        self.counts.clear()
        return worst


def batches(stream, seq: int, batch: int, gen):
    """Random windows [BOS] + stream[i : i + seq] -> (inputs, labels) of length seq + 1."""
    import torch

    starts = torch.randint(0, len(stream) - seq, (batch,), generator=gen)
    x = torch.stack([stream[s:s + seq] for s in starts.tolist()])
    x = torch.cat([torch.full((batch, 1), BOS, dtype=x.dtype), x], dim=1)
    return x


def held_out_loss(model, test, seq: int, n: int) -> float:
    """Mean next-token loss over n evenly spaced held-out windows (fixed, so curves compare)."""
    import torch

    step = max(1, (len(test) - seq) // n)
    xs = torch.stack([torch.cat([torch.tensor([BOS]), test[i:i + seq]]) for i in range(0, step * n, step)])
    model.eval()
    with torch.no_grad():
        loss = float(model(input_ids=xs, labels=xs).loss)
    model.train()
    return loss


def train(kind: str, train_ids, test_ids, steps: int, seq: int, batch: int, lr: float, seed: int, log_every: int):
    import torch

    model = build(kind, seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"== {kind}: {model.__class__.__name__}, {n_params / 1e6:.2f}M parameters, {steps} steps of "
          f"{batch} x {seq} tokens", flush=True)
    balancer = ExpertBalancer(model, rate=2e-3) if kind == "tiny" else None
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    warm = max(1, steps // 20)

    def lr_at(s):
        if s < warm:
            return lr * (s + 1) / warm
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))

    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    t0, run, imb = time.time(), 0.0, 1.0
    print(f"{'step':>6} {'train':>7} {'held-out':>8} {'lr':>8} {'imbalance':>9} {'s':>6}", flush=True)
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        x = batches(train_ids, seq, batch, gen)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if balancer is not None:
            imb = balancer.step()
        run = loss.item() if s == 0 else 0.95 * run + 0.05 * loss.item()
        if (s + 1) % log_every == 0 or s + 1 == steps:
            ho = held_out_loss(model, test_ids, seq, 16)
            print(f"{s + 1:>6} {run:>7.3f} {ho:>8.3f} {lr_at(s):>8.2e} {imb:>9.2f} {time.time() - t0:>6.0f}",
                  flush=True)
    return model


def save(model, tok, d: str) -> None:
    import torch

    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    model.to(torch.float32).save_pretrained(d, safe_serialization=True)  # fp32: bf16 modes have something to round
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    save_tokenizer(tok, d)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="writes OUT/tiny, OUT/tiny-draft, OUT/kjv_test.txt")
    ap.add_argument("--only", choices=("tiny", "tiny-draft"), help="train one model (tokenizer is retrained)")
    ap.add_argument("--steps", type=int, default=800, help="target steps (default 800)")
    ap.add_argument("--draft-steps", type=int, default=800, help="draft steps (default 800)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--quick", action="store_true", help="20 steps each, to check the pipeline")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.quick:
        args.steps = args.draft_steps = 20
    t0 = time.time()
    train_text, test_text = split(load_verses())
    tok = train_tokenizer(train_text)
    train_ids = torch.tensor(tok.encode(train_text, add_special_tokens=False).ids, dtype=torch.long)
    test_ids = torch.tensor(tok.encode(test_text, add_special_tokens=False).ids, dtype=torch.long)
    print(f"corpus: KJV ({PACKAGE}), train {len(train_text)} chars / {len(train_ids)} tokens, held-out "
          f"{len(test_text)} chars / {len(test_ids)} tokens; tokenizer: byte-level BPE, {tok.get_vocab_size()} ids "
          f"({time.time() - t0:.1f} s)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kjv_test.txt"), "w") as f:
        f.write(test_text)
    plan = [("tiny", args.steps), ("tiny-draft", args.draft_steps)]
    for kind, steps in plan:
        if args.only and kind != args.only:
            continue
        model = train(kind, train_ids, test_ids, steps, args.seq, args.batch, args.lr, args.seed,
                      log_every=max(1, min(100, steps // 10)))
        save(model, tok, os.path.join(args.out, kind))
        print(f"saved {os.path.join(args.out, kind)} ({time.time() - t0:.0f} s since start)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
