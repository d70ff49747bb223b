"""MPI test worker: started by tests/test_mpi.py under `mpirun -np R`, one job per group of checks.

Modes (rank 0 prints one JSON line on stdout where there is a result):
  invariance CKPT...  (CKPT or CKPT@DTYPE: loaded with that --dtype, e.g. q4_0) every plan at this
                      world size vs the single-rank engine (tokens, logits),
                      with uneven request splits, n < R, sequences that stop at different steps;
                      then the tagged check below
  tagged              all-to-all dispatch/combine routing checked exactly with tagged payloads
  fault-token CKPT    the last rank feeds an out-of-range token while its peers wait in an EP
                      collective: the whole job must abort with `[rank r/R] InputError: ...`
  cli ARGS [--- ARGS] runs `python -m lfm2engine.generate ARGS` once per group, in one job
Uses the compiled _core when it imports, else the `numpy` backend (the op contract in NumPy,
row-batch invariant like the real kernels).
"""

from __future__ import annotations

import copy
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import lfm2engine  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

PROMPT_LENGTHS = (1, 7, 33, 4, 12, 2)


def use_core() -> str:
    """'cpp' when lfm2engine._core imports, else 'numpy' (the engine then runs on device='numpy')."""
    try:
        import lfm2engine._core  # noqa: F401

        return "cpp"
    except ImportError:
        return "numpy"


def device() -> str:
    """The backend the checks run on: 'cpu' (compiled core) or 'numpy'."""
    return "cpu" if use_core() == "cpp" else "numpy"


AWKWARD = dict(  # E=3 < R=4 (one rank holds no expert under EP), Fe=10 -> TP slices of 3, 3, 2, 2
    model_type="lfm2_moe", vocab_size=61, hidden_size=24, num_hidden_layers=4, num_attention_heads=3,
    num_key_value_heads=1, intermediate_size=20, moe_intermediate_size=10, num_experts=3, num_experts_per_tok=2,
    num_dense_layers=1, layer_types=["conv", "full_attention", "conv", "conv"], max_position_embeddings=128,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, use_expert_bias=True)


# Widths that split into 32-weight blocks (q8_0, q4_0), also the TP slices of Fe (128 / 4 = 32); E = 5.
QUANT = dict(
    model_type="lfm2_moe", vocab_size=61, hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
    num_key_value_heads=1, intermediate_size=64, moe_intermediate_size=128, num_experts=5, num_experts_per_tok=2,
    num_dense_layers=1, layer_types=["conv", "full_attention", "conv", "full_attention"], max_position_embeddings=128,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, use_expert_bias=True)


def make_awkward_checkpoint(out_dir: str, seed: int = 3, sizes=None) -> str:
    """A random checkpoint with sizes that do not divide by the rank counts (no torch needed);
    sizes: another config dict (QUANT)."""
    from lfm2engine.checkpoint import expected_tensors, save_pretrained
    from lfm2engine.config import LFM2Config
    from lfm2engine.synthetic import make_tensor

    cfg = LFM2Config.from_dict(sizes or AWKWARD, source="awkward")
    specs = expected_tensors(cfg)
    save_pretrained(cfg, lambda n: make_tensor(cfg, n, specs[n], seed), out_dir)
    return out_dir


def test_prompts(vocab: int, lengths=PROMPT_LENGTHS, seed: int = 7) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


# ---------------------------------------------------------------------------------------- checks
def invariance(comm, ckpts, new_tokens: int = 8) -> list[dict]:
    """Per checkpoint: reference tokens/logits of the unsharded engine, then every plan's."""
    from lfm2engine.errors import ParallelError
    from lfm2engine import Engine
    from lfm2engine.parallel import executors
    from lfm2engine.parallel.data_parallel import plan_generate, plan_logits
    from lfm2engine.parallel.plan import KINDS, ParallelPlan

    rank, size = comm.Get_rank(), comm.Get_size()
    report = []
    for spec in ckpts:
        path, _, dtype = spec.partition("@")
        base = Engine.from_pretrained(path, dtype=dtype or None, num_threads=1, device=device())
        cfg = base.config
        prompts = test_prompts(cfg.vocab_size)
        few = prompts[:3]  # fewer requests than ranks at R = 4
        ref = base.generate(prompts, new_tokens)
        ref_few = base.generate(few, new_tokens)
        ref_logits = base.logits(prompts)
        # an eos that request 0 emits at step 3: sequences then stop at different steps
        base_eos = copy.copy(base)
        base_eos.config = cfg.replace(eos_token_id=ref[0][2])
        ref_eos = base_eos.generate(prompts, new_tokens, stop_at_eos=True)
        out = {"ckpt": os.path.basename(path), "dtype": base.dtype, "E": cfg.num_experts,
               "Fe": cfg.moe_intermediate_size,
               "R": size, "ref": ref, "ref_few": ref_few, "ref_eos": ref_eos, "plans": {}}
        full_bytes = executors.expert_bytes(base)
        for kind in KINDS:
            try:
                plan = ParallelPlan(kind, size, rank)
            except ParallelError as e:
                out["plans"][kind] = {"error": f"{type(e).__name__}: {e}"}
                continue
            eng = executors.sharded_copy(base, plan, comm)
            eng_eos = executors.sharded_copy(base_eos, plan, comm)
            res = {
                "tokens": plan_generate(eng, plan, comm, prompts, new_tokens),
                "tokens_few": plan_generate(eng, plan, comm, few, new_tokens),
                "tokens_eos": plan_generate(eng_eos, plan, comm, prompts, new_tokens, stop_at_eos=True),
                "expert_bytes": comm.allgather(executors.expert_bytes(eng)),
                "full_expert_bytes": full_bytes,
            }
            logits = plan_logits(eng, plan, comm, prompts, batch_size=2)  # several passes, idle ones on EP
            if rank == 0:
                res["logits_equal_ref"] = bool(np.array_equal(logits, ref_logits))
                res["logits_max_diff"] = float(np.abs(logits - ref_logits).max())
                res["logits_hash"] = __import__("hashlib").sha256(logits.tobytes()).hexdigest()[:16]
            out["plans"][kind] = res
        report.append(out)
    return report


def tagged_alltoall(comm, num_experts: int = 7, top_k: int = 3, dim: int = 5, seed: int = 0) -> int:
    """Dispatch rows tagged (source rank, token index) through the EP all-to-all, check that each
    rank receives exactly its experts' rows in the canonical order (source rank, local expert,
    token, slot), tag them with the expert id, combine, and check every (token, slot) row comes
    home with the right tags. Returns the number of rows checked on this rank."""
    from lfm2engine.parallel import moe_parallel as mp
    from lfm2engine.parallel.plan import expert_local_index, expert_owner, expert_range, max_local_experts

    rank, size = comm.Get_rank(), comm.Get_size()

    def tokens_of(r):  # every rank can rebuild every rank's routing; some ranks have no tokens
        rng = np.random.default_rng([seed, r])
        t_ = (3 * r + 2) % 6
        ids = np.stack([rng.permutation(num_experts)[:top_k] for _ in range(t_)]).astype(np.int32) \
            if t_ else np.empty((0, top_k), np.int32)
        return t_, ids

    t_, ids = tokens_of(rank)
    x = np.zeros((t_, dim), np.float32)
    x[:, 0], x[:, 1] = rank, np.arange(t_)
    owner, lidx = expert_owner(num_experts, size), expert_local_index(num_experts, size)
    recv_x, recv_eids, hd = mp.dispatch(comm, x, ids, owner, lidx, max_local_experts(num_experts, size))
    a, b = expert_range(num_experts, size, rank)
    want = []
    for src in range(size):
        ts, ids_s = tokens_of(src)
        for e in range(a, b):
            want += [(src, t, e) for t in range(ts) for j in range(top_k) if ids_s[t, j] == e]
    got = [(int(r[0]), int(r[1]), a + int(e)) for r, e in zip(recv_x, recv_eids)]
    if got != want:
        raise AssertionError(f"rank {rank}: dispatch delivered {got}, expected {want}")
    y = recv_x.copy()
    y[:, 2] = a + recv_eids  # the "expert" stamps its global id
    rows = mp.combine_rows(comm, y, hd)  # [T, K, D]
    for t in range(t_):
        for j in range(top_k):
            if tuple(rows[t, j, :3]) != (rank, t, ids[t, j]):
                raise AssertionError(f"rank {rank}: token {t} slot {j} came back as {rows[t, j, :3]}, expected "
                                     f"{(rank, t, int(ids[t, j]))}")
    return len(got)


def tagged_cases(comm) -> list[int]:
    """The tagged all-to-all check for several (E, K): E below, equal to and above R, K = 1 and K = E."""
    return [tagged_alltoall(comm, e, k) for e, k in ((7, 3), (3, 2), (8, 1), (5, 5))]


def fault_token(comm, ckpt: str) -> None:
    """All ranks run one good EP pass; then the last rank submits token id V while the others
    submit good prompts and block in the first MoE dispatch. The guard must abort the job."""
    from lfm2engine import Engine
    from lfm2engine.parallel import executors
    from lfm2engine.parallel.plan import ParallelPlan

    rank, size = comm.Get_rank(), comm.Get_size()
    plan = ParallelPlan("ep", size, rank)
    eng = executors.sharded_copy(Engine.from_pretrained(ckpt, num_threads=1, device=device()), plan, comm)
    v = eng.config.vocab_size
    eng.logits([[1, 2, 3]])
    bad = rank == size - 1
    eng.logits([[1, v if bad else 2, 3]])
    raise AssertionError("the job should have been aborted")


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    core = use_core()
    if mode == "cli":
        from lfm2engine import generate

        groups, cur = [], []
        for a in rest:
            if a == "---":
                groups.append(cur)
                cur = []
            elif a != "--" or cur:
                cur.append(a)
        groups.append(cur)
        for g in groups:
            rc = generate.main(g)
            if rc:
                return rc
        return 0

    from lfm2engine.parallel import get_comm, run_guarded

    def body(comm):
        if mode == "invariance":
            res = {"tagged": tagged_cases(comm), "checkpoints": invariance(comm, rest)}
        elif mode == "tagged":
            res = {"tagged": tagged_cases(comm)}
        elif mode == "fault-token":
            res = fault_token(comm, rest[0])
        else:
            raise SystemExit(f"unknown mode {mode}")
        if comm.Get_rank() == 0:
            print(json.dumps({"core": core, "ranks": comm.Get_size(), "result": res}), flush=True)
        return 0

    return run_guarded(body, get_comm())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
