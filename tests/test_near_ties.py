"""-v near MoE routing ties (issue 16 item 7, docs/validation.md): on a constructed tie, an output
that took the other expert is listed as a near-tie and not judged, while the 1e-3 rule stays
strict for everything else: a perturbed logit, or a flip at a decision far from any tie, is
INVALID."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest
from lfm2engine import reference as ref
from lfm2engine.checkpoint import Checkpoint, save_file
from lfm2engine.generate import judge
from lfm2engine.workload import explain_near_ties, mismatching_samples, validate, with_near_ties

PROMPTS = np.array([[5, 17, 42, 8, 3, 60], [9, 9, 31, 2, 77, 14], [1, 50, 23, 23, 4, 88]], np.int32)


@pytest.fixture(scope="module")
def tie(hf_ckpt, tmp_path_factory):
    """moe_a with one expert_bias entry moved so that, for sample 1, a routing decision is a tie
    to 1e-9 (below any float32 error bound) -> (model dir, weights, config, layer, token)."""
    src = hf_ckpt("moe_a")
    ck = Checkpoint(src)
    cfg = ck.config
    assert cfg.use_expert_bias
    w = {n: np.array(ck.f32(n)) for n in ck.refs}
    log = ref.RoutingLog()
    ref.forward(w, cfg, PROMPTS[1], routing=log)
    i = min(log.margin, key=lambda li: log.margin[li].min())
    t = int(np.argmin(log.margin[i]))
    sel_gap = float(log.margin[i][t])
    bias_name = f"model.layers.{i}.feed_forward.expert_bias"
    # move the k-th choice's bias down by (gap - 1e-9): the gap becomes 1e-9, the order is kept
    out_dir = tmp_path_factory.mktemp("tie") / "m"
    shutil.copytree(src, out_dir)
    k = cfg.num_experts_per_tok
    kth = _kth_expert(w, cfg, PROMPTS[1], i, t, k)
    w[bias_name] = w[bias_name].copy()
    w[bias_name][kth] -= np.float32(sel_gap - 1e-9)
    save_file(w, str(out_dir / "model.safetensors"))
    check = ref.RoutingLog()
    ref.forward(w, cfg, PROMPTS[1], routing=check)
    assert 0 <= check.margin[i][t] < check.bound[i][t], "the constructed decision must be a near-tie"
    return str(out_dir), w, cfg, i, t


def _kth_expert(w, cfg, prompt, layer, token, k):
    seen = {}

    def spy(router_logits, expert_bias, k_, norm_topk, scale, flip=()):
        ids, wt = real(router_logits, expert_bias, k_, norm_topk, scale, flip)
        seen.setdefault(len(seen), ids)
        return ids, wt

    real = ref.moe_route
    ref.moe_route = spy
    try:
        ref.forward(w, cfg, prompt)
    finally:
        ref.moe_route = real
    moe_layers = [i for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)]
    return int(seen[moe_layers.index(layer)][token, k - 1])


def outputs_and_answers(tie, flip_at=None):
    _, w, cfg, i, t = tie
    answers = np.stack([ref.forward(w, cfg, p) for p in PROMPTS]).astype(np.float32)
    outputs = answers.copy()
    if flip_at is not None:  # what an implementation that rounds the other way at (layer, token) gives
        s, li, tok = flip_at
        outputs[s] = ref.forward(w, cfg, PROMPTS[s], routing=ref.RoutingLog({(li, tok)}))
    return outputs, answers


def test_output_that_took_the_other_expert_at_a_tie_is_listed_not_judged(tie, capsys):
    model, _, _, i, t = tie
    outputs, answers = outputs_and_answers(tie, (1, i, t))
    assert not validate(outputs, answers)["valid"], "the flip must change the logits beyond 1e-3"
    assert mismatching_samples(outputs, answers) == [1]
    ties = explain_near_ties(model, PROMPTS, outputs, [1])
    assert list(ties) == [1] and (ties[1]["layer"], ties[1]["token"]) == (i, t)
    assert ties[1]["margin"] < ties[1]["bound"]
    res = with_near_ties(validate(outputs, answers), outputs, answers, ties)
    assert res["valid"] and res["judged"] == 2 and res["near_ties"] == [ties[1]]
    assert res["max_abs_error"] < 1e-3  # over the judged samples
    # the CLI's verdict lists it
    args = argparse.Namespace(json=False)
    res = judge(args, model, PROMPTS, outputs, answers)
    out = capsys.readouterr().out
    assert out.startswith("VALID: ") and "over 2 samples; 1 of 3 samples not judged (MoE routing near-ties" in out
    assert f"near-tie: sample 1, layer {i}, token {t}: expert scores" in out


def test_a_perturbed_logit_is_still_invalid(tie, capsys):
    model = tie[0]
    outputs, answers = outputs_and_answers(tie)
    outputs[1, 7] += 2e-3
    res = judge(argparse.Namespace(json=False), model, PROMPTS, outputs, answers)
    assert not res["valid"] and res["near_ties"] == [] and res["first_mismatch"]["sample"] == 1
    assert capsys.readouterr().out.startswith("INVALID: ")


def test_a_flip_far_from_any_tie_is_invalid(tie, capsys):
    model, w, cfg, i, t = tie
    log = ref.RoutingLog()
    ref.forward(w, cfg, PROMPTS[0], routing=log)
    li, tok = max(((li, int(np.argmax(log.margin[li]))) for li in log.margin), key=lambda x: log.margin[x[0]][x[1]])
    assert log.margin[li][tok] > 10 * log.bound[li][tok]
    outputs, answers = outputs_and_answers(tie, (0, li, tok))
    if validate(outputs, answers)["valid"]:
        pytest.fail("the far flip must change the logits beyond 1e-3 for this test to mean anything")
    res = judge(argparse.Namespace(json=False), model, PROMPTS, outputs, answers)
    assert not res["valid"] and res["near_ties"] == []
    assert capsys.readouterr().out.startswith("INVALID: ")
