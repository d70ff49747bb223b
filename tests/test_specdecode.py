"""Speculative decoding: greedy losslessness, exact cache rollback, token trees, the sampling rule
(statistically), bad input, the CLI. Tiny random checkpoints written by transformers or by us."""

import json
import os
import shutil

import numpy as np
import pytest
from sampling_oracle import Z_REJECT, chi2_z, target_law

from lfm2engine import Engine
from lfm2engine.checkpoint import expected_tensors, save_pretrained
from lfm2engine.config import LFM2Config
from lfm2engine.errors import InputError
from lfm2engine.specdecode import (SpeculativeDecoder, build_tree, calibrate_skip_layers, draft_agreement,
                                   expected_tokens_per_round, main, make_self_draft, walk_tree_greedy,
                                   walk_tree_sampling, write_pruned_checkpoint)
from lfm2engine.synthetic import make_tensor


def write_model(path, seed=0, **kw) -> str:
    """A random checkpoint of our own (make_tensor init) for configs transformers does not give us."""
    d = dict(model_type="lfm2", vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=64, layer_types=["conv", "full_attention", "conv"],
             max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    d.update(kw)
    cfg = LFM2Config.from_dict(d)
    specs = expected_tensors(cfg)
    save_pretrained(cfg, lambda n: make_tensor(cfg, n, specs[n], seed), str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(hf_ckpt, tmp_path_factory):
    """name -> Engine: transformers' tiny MoE/dense models, a dense draft sharing moe_a's vocabulary
    (97 ids, like LFM2-350M beside LFM2-8B-A1B), and an 8-token MoE for the statistical tests."""
    made = {}

    def get(name):
        if name not in made:
            if name == "dense97":
                made[name] = Engine.from_pretrained(write_model(tmp_path_factory.mktemp(name), seed=5))
            elif name == "moe8":
                p = write_model(tmp_path_factory.mktemp(name), seed=3, model_type="lfm2_moe", vocab_size=8,
                                hidden_size=16, num_attention_heads=2, num_key_value_heads=1, intermediate_size=24,
                                moe_intermediate_size=8, num_experts=4, num_experts_per_tok=2, num_dense_layers=1)
                made[name] = Engine.from_pretrained(p)
            elif name.endswith("-bf16"):
                made[name] = Engine.from_pretrained(hf_ckpt(name[:-5]), dtype="bfloat16")
            else:
                made[name] = Engine.from_pretrained(hf_ckpt(name))
        return made[name]

    return get


def draft_for(models, target_name, kind):
    t = models(target_name)
    if kind == "topk1":
        return t.derive(top_k=1)
    if kind == "skip":
        return t.derive(skip_layers=[t.config.num_hidden_layers - 2])
    if kind == "bf16":
        return models(target_name + "-bf16")
    if kind == "dense97":
        return models("dense97")
    raise ValueError(kind)


# ------------------------------------------------------------------------------------------ token trees


def test_build_tree_merges_prefixes_hand_example():
    t = build_tree([[5, 6, 7], [5, 6, 8], [5, 9], [4]])
    assert t.tokens.tolist() == [5, 6, 7, 8, 9, 4]
    assert t.parents.tolist() == [-1, 0, 1, 1, 0, -1]
    assert t.depth.tolist() == [0, 1, 2, 2, 1, 0]
    assert t.paths == [[0, 1, 2], [0, 1, 3], [0, 4], [5]]
    want = np.array([[1, 0, 0, 0, 0, 0],   # 5
                     [1, 1, 0, 0, 0, 0],   # 5 6
                     [1, 1, 1, 0, 0, 0],   # 5 6 7
                     [1, 1, 0, 1, 0, 0],   # 5 6 8 (not its sibling 7)
                     [1, 0, 0, 0, 1, 0],   # 5 9
                     [0, 0, 0, 0, 0, 1]])  # 4: a second root sees only itself
    np.testing.assert_array_equal(t.mask, want)
    full = t.attention_mask(prefix_len=3, capacity=11)  # the prefix occupies slots 0..2, nodes 3..8
    assert full.shape == (6, 11)
    np.testing.assert_array_equal(full[:, :3], 1)
    np.testing.assert_array_equal(full[:, 3:9], want)
    np.testing.assert_array_equal(full[:, 9:], 0)
    assert t.child(-1, 5) == 0 and t.child(1, 8) == 3 and t.child(0, 7) is None and t.child(-1, 6) is None


def test_build_tree_duplicates_prefix_candidates_and_empty():
    t = build_tree([[1, 2], [1, 2], [1], [], [3, 1, 2]])
    assert t.tokens.tolist() == [1, 2, 3, 1, 2]  # the same tokens under another parent are new nodes
    assert t.parents.tolist() == [-1, 0, -1, 2, 3]
    assert t.paths == [[0, 1], [0, 1], [0], [], [2, 3, 4]]
    np.testing.assert_array_equal(t.mask[4], [0, 0, 1, 1, 1])
    e = build_tree([])
    assert len(e) == 0 and e.mask.shape == (0, 0)
    with pytest.raises(InputError, match="candidate 1"):
        build_tree([[1], None])


def test_walk_tree_greedy_hand_example():
    t = build_tree([[5, 6, 7], [5, 6, 8], [5, 9]])  # nodes: 5 6 7 8 9

    def logits_with(argmaxes):  # row 0: the prefix, row i + 1: after node i
        lg = np.zeros((len(t) + 1, 10), np.float32)
        lg[np.arange(len(t) + 1), argmaxes] = 1.0
        return lg

    assert walk_tree_greedy(t, logits_with([5, 6, 3, 3, 3, 3])) == ([0, 1], 3)  # 5 6, then 3 from the target
    assert walk_tree_greedy(t, logits_with([5, 6, 8, 3, 4, 3])) == ([0, 1, 3], 4)  # the second branch, bonus 4
    assert walk_tree_greedy(t, logits_with([5, 9, 0, 0, 0, 2])) == ([0, 4], 2)
    assert walk_tree_greedy(t, logits_with([1, 0, 0, 0, 0, 0])) == ([], 1)


def test_tree_verification_equals_each_candidate_alone(models, rng):
    """forward_tree over build_tree's parents: every candidate's logits equal a plain forward of it."""
    eng = models("moe_a")
    pre = rng.integers(0, 97, 7).tolist()
    cands = [[11, 12, 13, 14], [11, 12, 15], [11, 16], [17, 18]]
    t = build_tree(cands)
    s = eng.session(1, 40, rollback=4)
    s.prefill([pre])
    lg = s.forward_tree(0, t.tokens.tolist(), t.parents.tolist())
    for c, path in zip(cands, t.paths):
        lin = eng.session(1, 40)
        lin.prefill([pre])
        want = lin.forward([0], [c], all_logits=True)
        np.testing.assert_allclose(lg[path], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ------------------------------------------------------------------------------------------ greedy is lossless

CASES = [  # (target, draft, k, prompt length, tree width, threshold)
    ("moe_a", "topk1", 1, 1, 1, 0.0), ("moe_a", "topk1", 3, 9, 1, 0.0), ("moe_a", "skip", 8, 2, 1, 0.0),
    ("moe_a", "dense97", 4, 30, 1, 0.0), ("moe_a", "bf16", 5, 5, 1, 0.0), ("moe_a", "topk1", 4, 3, 3, 0.0),
    ("moe_a", "skip", 2, 17, 2, 0.5), ("moe_b", "skip", 2, 4, 1, 0.0), ("moe_b", "topk1", 6, 1, 2, 0.0),
    ("moe_c", "topk1", 3, 12, 1, 0.3), ("dense", "skip", 1, 6, 1, 0.0), ("dense", "skip", 4, 40, 3, 0.0),
    ("dense", "bf16", 7, 2, 1, 0.6),
]


@pytest.mark.parametrize("target, draft, k, plen, width, thr", CASES)
def test_greedy_speculative_equals_plain_greedy(models, rng, target, draft, k, plen, width, thr):
    tgt = models(target)
    prompt = rng.integers(0, tgt.config.vocab_size, plen).tolist()
    want = tgt.generate([prompt], 24)[0]
    dec = SpeculativeDecoder(tgt, draft_for(models, target, draft), k=k, width=width, threshold=thr)
    (got,), st = dec.generate([prompt], 24)
    assert got == want
    # the counters add up
    assert st.new_tokens == 24 and sum(st.histogram) <= st.rounds == st.target_calls
    assert st.accepted == sum(a * n for a, n in enumerate(st.histogram)) <= st.drafted
    assert 0.0 <= st.acceptance_rate <= 1.0 and len(st.histogram) == k + 1
    assert st.new_tokens <= st.accepted + st.rounds


def test_draft_equal_to_target_accepts_everything(models, rng):
    tgt = models("moe_b")
    prompt = rng.integers(0, tgt.config.vocab_size, 5).tolist()
    (got,), st = SpeculativeDecoder(tgt, tgt, k=4).generate([prompt], 25)
    assert got == tgt.generate([prompt], 25)[0]
    assert st.acceptance_rate == 1.0 and st.rollbacks == 0 and st.rounds == 5  # 5 rounds × (4 drafts + 1)
    assert st.histogram == [0, 0, 0, 0, 5] and st.tokens_per_round == 5.0


def test_several_prompts_and_stop_at_eos(models, rng):
    tgt = models("moe_a")
    prompts = [rng.integers(0, 97, n).tolist() for n in (1, 4, 11)]
    dec = SpeculativeDecoder(tgt, tgt.derive(top_k=1), k=3)
    got, st = dec.generate(prompts, 12)
    assert got == tgt.generate(prompts, 12) and st.new_tokens == 36
    eos = tgt.config.eos_ids[0]
    ref = tgt.generate(prompts, 12, stop_at_eos=True)
    got, _ = dec.generate(prompts, 12, stop_at_eos=True)
    assert got == ref
    for p in prompts:  # a prompt whose greedy continuation contains eos stops right after it
        full = tgt.generate([p], 40)[0]
        if eos in full:
            got, _ = dec.generate([p], 40, stop_at_eos=True)
            assert got[0] == full[: full.index(eos) + 1]


# ------------------------------------------------------------------------------------------ cache rollback


def assert_session_state_equal(s, fresh, n):
    """KV of the first n positions and the conv state of `s` equal a fresh session that ran those n tokens
    (layers a self-draft skips hold no state worth comparing)."""
    assert int(s.lengths[0]) == n == int(fresh.lengths[0])
    skip = s.engine.skip_layers

    def close(a, b):  # float32 paths (chunked, tree-masked) differ in the last bits only
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max(initial=0))))

    for i in s.k:
        if i in skip:
            continue
        close(s.k[i][0, :, :n], fresh.k[i][0, :, :n])
        close(s.v[i][0, :, :n], fresh.v[i][0, :, :n])
    for i in s.conv:
        if i in skip:
            continue
        close(s.conv[i][0], fresh.conv[i][0])


@pytest.mark.parametrize("target, width", [("moe_a", 1), ("dense", 1), ("moe_a", 3)])
def test_caches_after_speculation_equal_recomputation(models, rng, target, width):
    tgt = models(target)
    drf = tgt.derive(skip_layers=[0])  # a poor draft: many rollbacks
    prompt = rng.integers(0, tgt.config.vocab_size, 6).tolist()
    dec = SpeculativeDecoder(tgt, drf, k=5, width=width)
    (out,), st = dec.generate([prompt], 30)
    assert st.rollbacks > 3
    seq = prompt + out
    for s, eng in ((dec.target_session, tgt), (dec.draft_session, drf)):
        n = int(s.lengths[0])
        fresh = eng.session(1, len(seq))
        fresh.forward([0], [seq[:n]])
        assert_session_state_equal(s, fresh, n)
        # and the next step computes the same logits
        nxt = seq[n : n + 1] or [3]
        np.testing.assert_allclose(s.forward([0], [nxt]), fresh.forward([0], [nxt]), rtol=1e-5, atol=1e-4)


def test_random_truncate_and_commit_sequences_equal_recomputation(models, rng):
    """Interleave appends of 1..6 tokens, truncations of up to `rollback` tokens and tree commits;
    after each, the conv state and KV equal a session that ran only the surviving tokens."""
    eng = models("moe_c")
    v = eng.config.vocab_size
    s = eng.session(1, 200, rollback=6)
    seq: list[int] = []
    for step in range(25):
        op = step % 3
        if op == 0 or not seq:
            toks = rng.integers(0, v, int(rng.integers(1, 7))).tolist()
            s.forward([0], [toks])
            seq += toks
        elif op == 1:
            restorable = int(s.uvalid[0]) - (eng.config.conv_L_cache - 1)  # what the u window still holds
            back = int(rng.integers(0, min(6, len(seq), restorable) + 1))
            s.truncate(0, len(seq) - back)
            seq = seq[: len(seq) - back]
        else:
            t = build_tree([rng.integers(0, v, 3).tolist(), rng.integers(0, v, 2).tolist()])
            s.forward_tree(0, t.tokens.tolist(), t.parents.tolist())
            keep = t.paths[int(rng.integers(0, 2))][: int(rng.integers(0, 3))]
            s.commit_tree(keep)
            seq += [int(t.tokens[n]) for n in keep]
        fresh = eng.session(1, 200)
        if seq:
            fresh.forward([0], [seq])
        assert_session_state_equal(s, fresh, len(seq))


# ------------------------------------------------------------------------------------------ sampling rule


def test_rejection_walk_reproduces_target_distribution():
    """Pure rule check: chain of depth 2 with 3 i.i.d. trials per position (repeats included)."""
    rng = np.random.default_rng(0)
    v = 5
    p0, q0 = rng.dirichlet(np.ones(v)), rng.dirichlet(np.ones(v) * 0.5)
    p1 = {a: rng.dirichlet(np.ones(v)) for a in range(v)}  # target after first token a
    q1 = {a: rng.dirichlet(np.ones(v)) for a in range(v)}
    joint = p0[:, None] * np.stack([p1[a] for a in range(v)])
    counts = np.zeros((v, v))
    qcounts = np.zeros((v, v))
    for _ in range(20000):
        d0 = rng.choice(v, 3, p=q0).tolist()
        d1 = rng.choice(v, 3, p=q1[d0[0]]).tolist()
        qcounts[d0[0], d1[0]] += 1
        t = build_tree([[d0[0], d1[0]]] + [[a] for a in d0[1:]] + [[d0[0], b] for b in d1[1:]])
        trials = {-1: d0, t.paths[0][0]: d1}
        qd = {-1: q0, t.paths[0][0]: q1[d0[0]]}

        def tp(node, t=t):  # target law at the prefix, after a first token; the third token is not examined
            if node == -1:
                return p0
            return p1[int(t.tokens[node])] if t.parents[node] == -1 else np.full(v, 1.0 / v)

        path, nxt = walk_tree_sampling(t, tp, trials, qd, rng)
        toks = [int(t.tokens[n]) for n in path] + [nxt]
        if len(toks) == 1:  # the first position was resampled: draw the second from the target
            toks.append(int(rng.choice(v, p=p1[toks[0]])))
        counts[toks[0], toks[1]] += 1
    assert chi2_z(counts, joint) < Z_REJECT
    assert chi2_z(qcounts, joint) > 2 * Z_REJECT  # the draft alone is easy to tell apart: the test has power


@pytest.mark.parametrize("width, k, temperature, top_k, top_p", [(1, 2, 1.0, 0, 1.0), (3, 2, 1.3, 0, 1.0),
                                                                  (1, 3, 0.8, 5, 1.0), (2, 2, 1.1, 0, 0.85)])
def test_sampling_output_is_distributed_as_target(models, width, k, temperature, top_k, top_p):
    """Joint law of the first two tokens over an 8-token vocabulary, exact from the target's logits
    through the independently written law of sampling_oracle (not the decoder's own filter);
    false-alarm rate of the chi-square test: 3.2e-5 (sampling_oracle.Z_REJECT)."""
    tgt = models("moe8")
    drf = tgt.derive(skip_layers=[1])
    prompt = [3]

    def probs(lg):
        return target_law(lg, temperature, top_k, top_p)

    p1 = probs(tgt.logits([prompt])[0])
    p2 = np.stack([probs(r) for r in tgt.logits([prompt + [a] for a in range(8)])])
    q1 = probs(drf.logits([prompt])[0])
    q2 = np.stack([probs(r) for r in drf.logits([prompt + [a] for a in range(8)])])
    assert np.abs(p1 - q1).sum() > 0.2  # the draft really differs: rejections happen
    dec = SpeculativeDecoder(tgt, drf, k=k, width=width, temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    counts = np.zeros((8, 8))
    for _ in range(1500):  # 3 new tokens so that the first round drafts up to 2: the first two are examined
        (o,), _ = dec.generate([prompt], 3)
        counts[o[0], o[1]] += 1
    z_target, z_draft = chi2_z(counts, p1[:, None] * p2), chi2_z(counts, q1[:, None] * q2)
    print(f"chi-square z: against the target's law {z_target:.2f}, against the draft's {z_draft:.2f}")
    assert z_target < Z_REJECT
    assert z_draft > Z_REJECT  # ... and the draft's own law is rejected: the test has power


def test_sampling_is_seeded(models, rng):
    tgt = models("moe_a")
    prompt = rng.integers(0, 97, 4).tolist()
    a = SpeculativeDecoder(tgt, tgt.derive(top_k=1), k=3, temperature=0.9, seed=4).generate([prompt], 16)[0]
    b = SpeculativeDecoder(tgt, tgt.derive(top_k=1), k=3, temperature=0.9, seed=4).generate([prompt], 16)[0]
    c = SpeculativeDecoder(tgt, tgt.derive(top_k=1), k=3, temperature=0.9, seed=5).generate([prompt], 16)[0]
    assert a == b and a != c


def test_expected_tokens_per_round_formula():
    assert expected_tokens_per_round(0.0, 5) == 1.0
    assert expected_tokens_per_round(1.0, 5) == 6.0
    assert abs(expected_tokens_per_round(0.5, 2) - 1.75) < 1e-12


# ------------------------------------------------------------------------------------------ self-drafts


def test_self_draft_specs(models, hf_ckpt):
    tgt = models("moe_a")
    d, desc = make_self_draft(tgt, "topk=1+skip=3,4")
    assert desc == "self:topk=1+skip=3,4" and d.config.num_experts_per_tok == 1 and d.skip_layers == {3, 4}
    assert d.w is tgt.w  # shares the weights
    d, desc = make_self_draft(tgt, "bf16", hf_ckpt("moe_a"))
    assert d.dtype == "bfloat16" and desc == "self:dtype=bfloat16"
    for bad, words in [("topk=x", "integer"), ("skip=9", "outside"), ("skip=0-4", "every layer"),
                       ("fast", "expected"), ("topk=1+topk=2", "twice"), ("dtype=int4", "choose"),
                       ("skip=auto:x", "auto:N"), ("", "empty")]:
        with pytest.raises(InputError, match=words):
            make_self_draft(tgt, bad, hf_ckpt("moe_a"))
    with pytest.raises(InputError, match="no experts"):
        make_self_draft(models("dense"), "topk=1")


def test_calibrated_skip_picks_the_most_agreeing_layer(models):
    tgt = models("moe_b")
    from lfm2engine.specdecode import calibration_sequence

    seq = calibration_sequence(tgt, n_new=24)
    (chosen,) = calibrate_skip_layers(tgt, 1, seq)
    scores = {i: draft_agreement(tgt, tgt.derive(skip_layers=[i]), seq) for i in range(4)}
    assert scores[chosen] == max(scores.values())
    two = calibrate_skip_layers(tgt, 2, seq)
    assert len(two) == 2 and chosen in two


def test_pruned_checkpoint_draft_equals_skip_draft(models, hf_ckpt, tmp_path, rng):
    """A separate layer-pruned checkpoint is the same function as the target with those layers skipped."""
    tgt = models("moe_a")
    d = Engine.from_pretrained(write_pruned_checkpoint(hf_ckpt("moe_a"), [0, 3], str(tmp_path / "pruned")))
    assert d.config.num_hidden_layers == 3 and d.config.num_dense_layers == 0
    ids = [rng.integers(0, 97, 9).tolist()]
    np.testing.assert_allclose(d.logits(ids), tgt.derive(skip_layers=[0, 3]).logits(ids), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ bad input


def test_bad_arguments_raise_input_error(models):
    tgt = models("moe_a")
    with pytest.raises(InputError, match="vocabulary size 89 != target vocabulary size 97"):
        SpeculativeDecoder(tgt, models("dense"))
    for kw, words in [(dict(k=0), "k .* >= 1"), (dict(k=-2), ">= 1"), (dict(k=2.5), "integer"),
                      (dict(threshold=1.0), "threshold"), (dict(width=0), "width"),
                      (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p")]:
        with pytest.raises(InputError, match=words):
            SpeculativeDecoder(tgt, tgt.derive(top_k=1), **kw)
    dec = SpeculativeDecoder(tgt, tgt.derive(top_k=1))
    with pytest.raises(InputError, match="outside the vocabulary"):
        dec.generate([[1, 200]], 4)
    with pytest.raises(InputError, match="exceed the context"):
        dec.generate([[1, 2]], 1000)


# ------------------------------------------------------------------------------------------ CLI


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_sweep_and_lossless(capsys, hf_ckpt, models):
    code, out, err = run_cli(capsys, "--target", hf_ckpt("moe_a"), "--self-draft", "topk=1", "--self-draft",
                             "skip=auto:1", "-k", "1-3", "--max-new-tokens", "12", "--prompt-ids", "1,5,9",
                             "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["tokens"] == models("moe_a").generate([[1, 5, 9]], 12)[0] == rep["plain_tokens"]
    for key in ("acceptance_rate", "speedup", "mean_accepted", "histogram", "rollbacks", "spec_ms_per_token",
                "plain_ms_per_token", "spec_tokens_per_s", "plain_tokens_per_s", "draft"):
        assert key in rep
    assert len(rep["sweep"]) == 6 and all(r["matches_plain"] for r in rep["sweep"])
    assert {r["k"] for r in rep["sweep"]} == {1, 2, 3}
    assert "speed-up" in err and "identical to plain" in err  # progress on stderr


def test_cli_separate_draft_table_and_sampling(capsys, hf_ckpt, models, tmp_path):
    draft = write_model(tmp_path / "d", seed=9)
    code, out, err = run_cli(capsys, "--target", hf_ckpt("moe_a"), "--draft", draft, "-k", "2", "--threshold",
                             "0,0.5", "--max-new-tokens", "8", "--prompt-ids", "3,4")
    assert code == 0, err
    assert "speedup" in out and "identical to plain decoding: yes" in out
    code, out, err = run_cli(capsys, "--target", hf_ckpt("moe_a"), "--self-draft", "topk=2", "--temperature", "0.8",
                             "--tree-width", "2", "--max-new-tokens", "8", "--prompt-ids", "3,4", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert len(rep["tokens"]) == 8 and rep["temperature"] == 0.8 and "matches_plain" not in rep


@pytest.mark.parametrize("args, words", [
    (["-k", "0"], "InputError: -k must be >= 1"),
    (["-k", "x"], "InputError: -k 'x'"),
    (["--threshold", "1.5"], "InputError: --threshold must be in"),
    (["--tree-width", "0"], "InputError: --tree-width must be >= 1"),
    (["--max-new-tokens", "0"], "InputError: --max-new-tokens"),
    (["--prompt-ids", "1,x"], "InputError: --prompt-ids"),
    (["--prompt", "hello"], "InputError: --prompt needs"),
    (["--self-draft", "topk=9"], "InputError: derive: top_k=9"),
    (["--draft", "/nonexistent"], "InputError: --draft /nonexistent: not a directory"),
])
def test_cli_bad_input_exits_2_with_message(capsys, hf_ckpt, args, words):
    code, out, err = run_cli(capsys, "--target", hf_ckpt("moe_a"), "--max-new-tokens", "4", *args)
    assert code == 2 and words in err and out == ""


def write_tokenizer(model_dir, words):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(model_dir, "tokenizer.json"))


def test_cli_text_prompt_and_tokenizer_mismatch(capsys, hf_ckpt, models, tmp_path):
    tdir, ddir = str(tmp_path / "t"), str(tmp_path / "d")
    shutil.copytree(hf_ckpt("moe_a"), tdir)
    write_tokenizer(tdir, [f"w{i}" for i in range(97)])
    code, out, err = run_cli(capsys, "--target", tdir, "--self-draft", "topk=1", "--prompt", "w5 w9 w12",
                             "--max-new-tokens", "6", "--repeats", "1", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["prompt_ids"] == [1, 5, 9, 12]  # BOS + the words
    assert rep["tokens"] == models("moe_a").generate([[1, 5, 9, 12]], 6)[0]
    assert rep["text"] == " ".join(f"w{t}" for t in rep["tokens"])
    shutil.copytree(hf_ckpt("moe_a"), ddir)
    write_tokenizer(ddir, [f"v{i}" for i in range(97)])  # same size, other tokens
    code, out, err = run_cli(capsys, "--target", tdir, "--draft", ddir, "--prompt", "w5")
    assert code == 2 and "InputError" in err and "tokenizer.json differs" in err


def test_cli_vocabulary_mismatch(capsys, hf_ckpt):
    code, _, err = run_cli(capsys, "--target", hf_ckpt("moe_a"), "--draft", hf_ckpt("dense"))
    assert code == 2 and "InputError: draft vocabulary size 89 != target vocabulary size 97" in err
