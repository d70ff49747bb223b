"""Workload files of the course harness: inputs.bin, answers.bin, outputs.bin.

inputs.bin:  int32 n, int32 seq_len, then n × seq_len int32 token ids.
answers.bin / outputs.bin: int32 n, int32 vocab, then n × vocab float32 last-token logits.
Validation: every logit within 1e-3 absolute of the answer -> VALID, plus top-1 accuracy; a NaN
or Inf in outputs or answers is a mismatch (never VALID).
`python -m lfm2engine.workload make` writes a workload and its answers from the NumPy reference.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .checkpoint import atomic_writer, check_writable
from .errors import InputError, LFM2Error

ATOL = 1e-3


def _read(path: str, what: str) -> tuple[int, int, bytes]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror})") from None
    if len(data) < 8:
        raise InputError(f"{path}: {len(data)} bytes is too short for a {what} header (8 bytes: int32 n, int32 size)")
    a, b = np.frombuffer(data[:8], dtype="<i4")
    return int(a), int(b), data[8:]


def read_inputs(path: str) -> np.ndarray:
    """-> token ids [n, seq_len] int32."""
    n, l, body = _read(path, "inputs.bin")
    if n < 1 or l < 1:
        raise InputError(f"{path}: header says n={n}, seq_len={l}; both must be >= 1")
    if len(body) != n * l * 4:
        raise InputError(f"{path}: header says {n} × {l} int32 ids = {n * l * 4} bytes, the file holds {len(body)} "
                         "(truncated or not an inputs.bin)")
    return np.frombuffer(body, dtype="<i4").reshape(n, l).astype(np.int32)


def read_logits(path: str) -> np.ndarray:
    """-> logits [n, vocab] float32."""
    n, v, body = _read(path, "logits file")
    if n < 1 or v < 1:
        raise InputError(f"{path}: header says n={n}, vocab={v}; both must be >= 1")
    if len(body) != n * v * 4:
        raise InputError(f"{path}: header says {n} × {v} float32 = {n * v * 4} bytes, the file holds {len(body)}")
    return np.frombuffer(body, dtype="<f4").reshape(n, v).astype(np.float32)


def write_inputs(path: str, ids: np.ndarray) -> None:
    ids = np.asarray(ids, dtype="<i4")
    if ids.ndim != 2:
        raise InputError(f"inputs must be [n, seq_len], found shape {ids.shape}")
    with atomic_writer(path, "wb") as f:
        f.write(np.array(ids.shape, dtype="<i4").tobytes())
        f.write(ids.tobytes())


def write_logits(path: str, logits: np.ndarray) -> None:
    logits = np.asarray(logits, dtype="<f4")
    if logits.ndim != 2:
        raise InputError(f"logits must be [n, vocab], found shape {logits.shape}")
    with atomic_writer(path, "wb") as f:
        f.write(np.array(logits.shape, dtype="<i4").tobytes())
        f.write(logits.tobytes())


def validate(outputs: np.ndarray, answers: np.ndarray, atol: float = ATOL) -> dict:
    """Compare outputs [n, V] with the first n answers. Returns a summary dict."""
    n = outputs.shape[0]
    if answers.shape[0] < n or answers.shape[1] != outputs.shape[1]:
        raise InputError(f"answers hold {answers.shape[0]} × {answers.shape[1]} logits; outputs are "
                         f"{outputs.shape[0]} × {outputs.shape[1]} (wrong answers file for this workload/model?)")
    ans = answers[:n]
    with np.errstate(invalid="ignore"):  # Inf - Inf
        diff = np.abs(outputs.astype(np.float64) - ans)
    bad = ~(diff <= atol)  # NaN/Inf in outputs or answers fail too (NaN > atol is False)
    top1 = float(np.mean(np.argmax(outputs, axis=1) == np.argmax(ans, axis=1)))
    res = {"valid": not bool(bad.any()), "top1_accuracy": top1, "max_abs_error": float(np.max(diff)),
           "mismatches": int(bad.sum()), "samples": n,
           "non_finite": int(np.count_nonzero(~np.isfinite(outputs)) + np.count_nonzero(~np.isfinite(ans)))}
    if bad.any():
        s, j = map(int, np.argwhere(bad)[0])
        res["first_mismatch"] = {"sample": s, "index": j, "output": float(outputs[s, j]), "answer": float(ans[s, j])}
    return res


def mismatching_samples(outputs: np.ndarray, answers: np.ndarray, atol: float = ATOL) -> list[int]:
    """Samples with any logit off by more than atol (or not finite)."""
    diff = np.abs(outputs.astype(np.float64) - answers[: outputs.shape[0]])
    return [int(s) for s in np.nonzero(~np.all(diff <= atol, axis=1))[0]]


def explain_near_ties(model_dir: str, ids: np.ndarray, outputs: np.ndarray, samples, atol: float = ATOL,
                      max_flips: int = 16) -> dict[int, dict]:
    """Which mismatching `samples` a routing near-tie explains (docs/validation.md): the NumPy
    reference re-runs the sample recording every MoE routing decision's margin; for each decision
    whose margin is below its float32 error bound (RoutingLog), smallest first, it runs again with
    the other expert chosen there. When that alternative matches the output within atol for every
    logit, the sample is explained -> {sample: {layer, token, margin, bound}}; others are not."""
    from . import reference as ref
    from .checkpoint import open_checkpoint

    ck = open_checkpoint(model_dir)  # a GGUF file: its dequantized weights (the exact mode's definition)
    cfg = ck.config
    if not cfg.is_moe or not samples:
        return {}
    w = ck.state_dict_f32()
    out = {}
    for s in samples:
        log = ref.RoutingLog()
        ref.forward(w, cfg, ids[s], routing=log)
        for i, t, m, b in log.near_ties()[:max_flips]:
            alt = ref.forward(w, cfg, ids[s], routing=ref.RoutingLog({(i, t)}))
            if np.all(np.abs(outputs[s].astype(np.float64) - alt) <= atol):
                out[int(s)] = {"sample": int(s), "layer": i, "token": t, "margin": m, "bound": b}
                break
    return out


def with_near_ties(res: dict, outputs: np.ndarray, answers: np.ndarray, ties: dict, atol: float = ATOL) -> dict:
    """validate()'s summary with the samples that `ties` explains set apart: listed under
    "near_ties", not judged and not counted as passes; "valid", "top1_accuracy", "max_abs_error"
    and "mismatches" then speak of the judged samples only ("judged" of "samples")."""
    res = dict(res)
    n = outputs.shape[0]
    judged = np.array([s for s in range(n) if s not in ties], dtype=np.int64)
    res["near_ties"] = [ties[s] for s in sorted(ties)]
    res["judged"] = int(judged.size)
    if judged.size == 0:
        res.update(valid=False, mismatches=0)
        return res
    sub = validate(outputs[judged], answers[judged], atol)  # the same rule, on the judged samples
    res.update({k: sub[k] for k in ("valid", "mismatches", "max_abs_error", "top1_accuracy")})
    res.pop("first_mismatch", None)
    if "first_mismatch" in sub:
        res["first_mismatch"] = dict(sub["first_mismatch"], sample=int(judged[sub["first_mismatch"]["sample"]]))
    return res


def make_workload(model_dir: str, out_dir: str, n: int = 32, seq_len: int = 16, seed: int = 0,
                  verbose: bool = True) -> tuple[str, str]:
    """Random prompts (ids drawn from [2, V), i.e. no pad/bos) and their answers from the NumPy reference."""
    from . import reference as ref
    from .checkpoint import open_checkpoint

    if n < 1 or seq_len < 1:
        raise InputError(f"a workload needs n >= 1 and seq_len >= 1, got {n}, {seq_len}")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise InputError(f"--out {out_dir}: the directory {parent} does not exist")
    os.makedirs(out_dir, exist_ok=True)
    ip, ap = os.path.join(out_dir, "inputs.bin"), os.path.join(out_dir, "answers.bin")
    check_writable(ip, "--out")  # before the reference runs
    check_writable(ap, "--out")
    ck = open_checkpoint(model_dir)  # a GGUF file: its dequantized weights (the exact mode's definition)
    cfg = ck.config
    if seq_len > cfg.max_position_embeddings:
        raise InputError(f"seq_len {seq_len} exceeds the context of {cfg.max_position_embeddings}")
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(2, cfg.vocab_size - 1), cfg.vocab_size, size=(n, seq_len)).astype(np.int32)
    w = ck.state_dict_f32()
    answers = np.empty((n, cfg.vocab_size), np.float32)
    for i in range(n):
        answers[i] = ref.forward(w, cfg, ids[i])
        if verbose and (i + 1) % max(1, n // 4) == 0:
            print(f"[lfm2engine] reference answers: {i + 1}/{n}", file=sys.stderr, flush=True)
    write_inputs(ip, ids)
    write_logits(ap, answers)
    return ip, ap


def quantized_answers(model_dir: str, dtype: str, ids: np.ndarray, verbose: bool = False) -> np.ndarray:
    """Last-token logits [n, V] of the NumPy reference on the weights an engine quantized on load to
    block type `dtype` holds (every projection quantized and dequantized; norms, conv taps and the
    router untouched): what the exact numerics mode computes, so -v with a quantized --dtype judges
    the engine, not the quantization (the float answers measure that)."""
    from . import quant
    from . import reference as ref
    from .checkpoint import open_checkpoint
    from .weights import is_projection

    ck = open_checkpoint(model_dir)
    w = {n: quant.dequantize(quant.quantize(ck.f32(n), dtype)) if is_projection(n) else np.asarray(ck.f32(n))
         for n in ck.names()}
    out = np.empty((len(ids), ck.config.vocab_size), np.float32)
    for i in range(len(ids)):
        out[i] = ref.forward(w, ck.config, ids[i])
        if verbose and (i + 1) % max(1, len(ids) // 4) == 0:
            print(f"[lfm2engine] {dtype} reference answers: {i + 1}/{len(ids)}", file=sys.stderr, flush=True)
    return out


def default_workload(model_dir: str, create: bool = True, verbose: bool = True) -> tuple[str, str]:
    """The built-in workload of a model directory (32 prompts × 16 tokens), made on first use
    (create=False: only its paths)."""
    from .synthetic import cache_dir

    key = os.path.abspath(model_dir).strip("/").replace("/", "_")
    d = os.path.join(cache_dir(), "workloads", key)
    ip, ap = os.path.join(d, "inputs.bin"), os.path.join(d, "answers.bin")
    if create and not (os.path.isfile(ip) and os.path.isfile(ap)):
        if verbose:
            print(f"[lfm2engine] creating the default workload (32 × 16 tokens) in {d}", file=sys.stderr, flush=True)
        os.makedirs(d, exist_ok=True)  # the cache's own folders
        make_workload(model_dir, d, verbose=verbose)
    return ip, ap


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lfm2engine.workload",
                                 description="Write a workload (inputs.bin) and its answers (answers.bin, NumPy "
                                             "reference logits) for a checkpoint.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write inputs.bin and answers.bin")
    mk.add_argument("--model", default=None, help="checkpoint directory or shipped model name "
                                                        "(default: the built-in synthetic model)")
    mk.add_argument("--out", required=True, help="output directory")
    mk.add_argument("-n", type=int, default=32, help="number of prompts (default 32)")
    mk.add_argument("--seq-len", type=int, default=16, help="tokens per prompt (default 16)")
    mk.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        from .models import model_dir
        from .synthetic import default_model_dir

        model = model_dir(a.model) if a.model else default_model_dir()
        ip, anp = make_workload(model, a.out, a.n, a.seq_len, a.seed)
        print(f"wrote {ip} and {anp}")
        return 0
    except (LFM2Error, OSError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
