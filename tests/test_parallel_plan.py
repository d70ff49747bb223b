"""Parallel plans without mpirun: ownership tables, the MoE stages, and every plan simulated on
virtual ranks (parallel/simulate.py) against the unsharded engine, bit for bit where the
canonical reduction order makes that possible (STYLE.md §11, §13)."""

import numpy as np
import pytest

import mpi_worker
from lfm2engine.errors import ParallelError
from lfm2engine.parallel import moe_parallel as mp
from lfm2engine.parallel import simulate
from lfm2engine.parallel.plan import (
    TP_SLICES,
    ParallelPlan,
    batch_slice,
    expert_local_index,
    expert_owner,
    expert_range,
    ffn_slice,
    ffn_slice_bounds,
    local_expert_map,
    max_local_experts,
    tp_slices_of,
)

NEW_TOKENS = 6


# ---------------------------------------------------------------------------------------- tables
@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_batch_slice_partitions_requests_in_order(world):
    for n in range(0, 23):
        spans = [batch_slice(n, world, r) for r in range(world)]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(spans[r][1] == spans[r + 1][0] for r in range(world - 1))
        sizes = [b - a for a, b in spans]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("experts", [1, 3, 5, 6, 7, 8, 32])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 6])
def test_expert_tables_are_a_balanced_contiguous_partition(experts, world):
    owner = expert_owner(experts, world)
    lidx = expert_local_index(experts, world)
    held = [expert_range(experts, world, r) for r in range(world)]
    counts = [b - a for a, b in held]
    assert sum(counts) == experts and max(counts) - min(counts) <= 1
    assert max(counts) == max_local_experts(experts, world)
    assert np.all(np.diff(owner) >= 0)  # contiguous ranges in rank order
    for r, (a, b) in enumerate(held):
        m = local_expert_map(experts, world, r)
        assert list(np.nonzero(m >= 0)[0]) == list(range(a, b))
        assert list(m[a:b]) == list(range(b - a)) and list(lidx[a:b]) == list(range(b - a))
        assert np.all(owner[a:b] == r)
    if world > experts:
        assert counts[-1] == 0  # some ranks hold no expert: allowed, they only route


@pytest.mark.parametrize("fe", [1, 3, 4, 10, 24, 28, 1792])
def test_ffn_slices_are_canonical_and_split_by_world(fe):
    bounds = ffn_slice_bounds(fe)
    assert len(bounds) == TP_SLICES and bounds[0][0] == 0 and bounds[-1][1] == fe
    assert all(bounds[s][1] == bounds[s + 1][0] for s in range(TP_SLICES - 1))
    for world in (1, 2, 4):
        ids = [list(tp_slices_of(world, r)) for r in range(world)]
        assert sum(ids, []) == list(range(TP_SLICES))  # each slice on exactly one rank, in rank order
        spans = [ffn_slice(fe, world, r) for r in range(world)]
        assert spans[0][0] == 0 and spans[-1][1] == fe
        plan_bounds = sum((ParallelPlan("tp", world, r).ffn_slices(fe) for r in range(world)), [])
        assert plan_bounds == bounds  # the same 4 slices whatever the world size


@pytest.mark.parametrize("world", [3, 5, 8])
def test_tp_rejects_world_sizes_that_do_not_divide_the_slices(world):
    with pytest.raises(ParallelError, match="tp.*divides 4"):
        ParallelPlan("tp", world, 0)
    ParallelPlan("ep", world, world - 1)  # ep and dp take any world size
    ParallelPlan("dp", world, 0)


def test_plan_validation_and_passes():
    with pytest.raises(ParallelError, match="unknown parallel plan"):
        ParallelPlan("pp", 2, 0)
    with pytest.raises(ParallelError, match="rank 2 is not in a world of 2"):
        ParallelPlan("dp", 2, 2)
    ep = ParallelPlan("ep", 4, 3)
    assert ep.request_range(6) == (5, 6) and ep.request_counts(6) == [2, 2, 1, 1]
    assert ep.num_passes(6, 1) == 2 and ep.num_passes(3, 2) == 1 and ep.num_passes(9, 2) == 2
    tp = ParallelPlan("tp", 2, 1)
    assert tp.request_range(5) == (0, 5) and tp.num_passes(5, 2) == 3


# ---------------------------------------------------------------------------------------- stages
def test_tree_sum_of_aligned_blocks_equals_tree_of_all_leaves(rng):
    parts = [(rng.standard_normal((9, 17)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32) for _ in range(4)]
    whole = mp.tree_sum(parts)
    assert np.array_equal(whole, mp.tree_sum([mp.tree_sum(parts[:2]), mp.tree_sum(parts[2:])]))
    assert np.array_equal(whole, (parts[0] + parts[1]) + (parts[2] + parts[3]))


@pytest.fixture(scope="module")
def core():
    """(kind, ops): the compiled CPU ops when built, else the NumPy op contract (row-invariant)."""
    from lfm2engine.backends import get_backend

    return mpi_worker.use_core(), get_backend(mpi_worker.device()).ops


def test_weighted_sum_matches_fused_moe_experts_bitwise(core, rng):
    """The combine EP runs on the home rank == the fused single-rank kernel, bit for bit."""
    ops = core[1]
    t_, d, e, k, fe = 37, 24, 5, 3, 10
    x = rng.standard_normal((t_, d)).astype(np.float32)
    w13 = (rng.standard_normal((e, 2 * fe, d)) / 4).astype(np.float32)
    w2 = (rng.standard_normal((e, d, fe)) / 3).astype(np.float32)
    ids = np.stack([rng.permutation(e)[:k] for _ in range(t_)]).astype(np.int32)
    wts = rng.random((t_, k)).astype(np.float32)
    fused = np.empty_like(x)
    ops.moe_experts(fused, x, ids, wts, w13, w2)
    rows = mp.expert_rows(ops, np.repeat(x, k, axis=0), ids.reshape(-1), w13, w2)
    assert np.array_equal(mp.weighted_sum(rows.reshape(t_, k, d), ids, wts), fused)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_tagged_payloads_route_exactly_in_the_simulator(world):
    rows = simulate.run(world, mpi_worker.tagged_cases)  # raises on any misrouted row
    assert all(len(r) == 4 for r in rows) and sum(map(sum, rows)) > 0


# ---------------------------------------------------------------------------------------- simulator
@pytest.fixture(scope="module")
def engines(core, hf_ckpt, tmp_path_factory):
    from lfm2engine import Engine

    made = {}

    def get(name):
        if name not in made:
            path = (mpi_worker.make_awkward_checkpoint(str(tmp_path_factory.mktemp("awkward")))
                    if name == "awkward" else hf_ckpt(name))
            made[name] = Engine.from_pretrained(path, device=mpi_worker.device())
        return made[name]

    return get


CASES = [("moe_a", 4), ("moe_c", 4), ("awkward", 4), ("moe_b", 2), ("moe_c", 3)]  # E = 6, 7, 3, 5, 7


@pytest.mark.parametrize("name,world", CASES)
def test_every_plan_reproduces_the_single_rank_engine(engines, name, world):
    eng = engines(name)
    prompts = mpi_worker.test_prompts(eng.config.vocab_size)
    ref = eng.generate(prompts, NEW_TOKENS)
    ref_logits = eng.logits(prompts)
    for kind in ("dp", "ep", "tp"):
        if kind == "tp" and TP_SLICES % world:
            continue
        got = simulate.simulate_generate(eng, kind, world, prompts, NEW_TOKENS)
        assert got == ref, f"{kind} on {world} ranks"
        few = simulate.simulate_generate(eng, kind, world, prompts[: world - 1] or prompts[:1], NEW_TOKENS)
        assert few == ref[: len(few)], f"{kind} with fewer requests than ranks"
        logits = simulate.simulate_logits(eng, kind, world, prompts, batch_size=2)
        if kind == "tp":  # canonical 4-slice tree: not the fused kernel's order, so close, not equal
            np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-4 * np.abs(ref_logits).max())
        else:
            assert np.array_equal(logits, ref_logits), f"{kind} on {world} ranks: logits differ"


@pytest.mark.parametrize("name", ["moe_c", "awkward"])
def test_tp_is_bitwise_identical_at_1_2_and_4_ranks(engines, name):
    eng = engines(name)
    prompts = mpi_worker.test_prompts(eng.config.vocab_size)
    one = simulate.simulate_logits(eng, "tp", 1, prompts)
    for world in (2, 4):
        assert np.array_equal(simulate.simulate_logits(eng, "tp", world, prompts), one)


def test_sequences_finishing_at_different_steps_keep_ep_ranks_in_step(engines):
    eng = engines("moe_a")
    prompts = mpi_worker.test_prompts(eng.config.vocab_size)
    first = eng.generate(prompts, NEW_TOKENS)
    import copy

    e2 = copy.copy(eng)
    e2.config = eng.config.replace(eos_token_id=first[0][1])  # request 0 stops after 2 tokens
    ref = e2.generate(prompts, NEW_TOKENS, stop_at_eos=True)
    assert min(len(t) for t in ref) < NEW_TOKENS == max(len(t) for t in ref)
    for world in (2, 4):
        assert simulate.simulate_generate(e2, "ep", world, prompts, NEW_TOKENS, stop_at_eos=True) == ref


def test_sharding_keeps_only_the_ranks_share_of_expert_weights(engines):
    from lfm2engine.parallel import executors

    eng = engines("moe_c")  # E = 7, Fe = 28
    full = executors.expert_bytes(eng)
    per_expert = full // eng.config.num_experts

    def held(kind, world):
        return simulate.run(world, lambda comm: executors.expert_bytes(
            executors.sharded_copy(eng, ParallelPlan(kind, world, comm.Get_rank()), comm)))

    assert held("ep", 4) == [2 * per_expert, 2 * per_expert, 2 * per_expert, per_expert]
    assert held("tp", 4) == [full // 4] * 4 and held("tp", 2) == [full // 2] * 2
    assert held("dp", 2) == [full, full]
    assert executors.expert_bytes(eng) == full  # the loaded engine is untouched


def test_executor_counts_bytes_like_the_formula(engines):
    """TP: each rank sends its [T, D] f32 block to R-1 peers per MoE layer call."""
    from lfm2engine.parallel import executors

    eng = engines("moe_a")
    cfg = eng.config
    t_, d, moe_layers = 5, cfg.hidden_size, sum(map(cfg.is_moe_layer, range(cfg.num_hidden_layers)))

    def run(comm):
        e = executors.sharded_copy(eng, ParallelPlan("tp", 4, comm.Get_rank()), comm)
        e.logits([list(range(1, t_ + 1))])
        return executors.executor_of(e).stats

    for st in simulate.run(4, run):
        assert st["calls"] == moe_layers and st["tokens"] == moe_layers * t_
        assert st["bytes_sent"] == moe_layers * 3 * t_ * d * 4


def test_plans_on_a_dense_model_are_refused(engines, hf_ckpt):
    from lfm2engine import Engine

    eng = Engine.from_pretrained(hf_ckpt("dense"))
    with pytest.raises(ParallelError, match="has none; hint: use --plan dp"):
        simulate.simulate_generate(eng, "ep", 2, [[1, 2]], 2)
    assert simulate.simulate_generate(eng, "dp", 2, [[1, 2], [3]], 2) == eng.generate([[1, 2], [3]], 2)


def test_simulator_reports_mismatched_collectives_instead_of_hanging():
    from lfm2engine.parallel.comm import allgather_rows

    def bad(comm):
        if comm.Get_rank() == 0:
            allgather_rows(comm, np.zeros(2, np.float32))
        return comm.Get_rank()

    with pytest.raises(ParallelError, match="timed out|failed"):
        simulate.run(2, bad, timeout=0.5)


def test_simulator_reraises_a_ranks_exception():
    def bad(comm):
        if comm.Get_rank() == 1:
            raise ValueError("rank 1 broke")
        comm.Barrier()

    with pytest.raises(ValueError, match="rank 1 broke"):
        simulate.run(3, bad, timeout=5)
