"""Parallel plans with block-quantized weights (issue 14 item 5), on virtual ranks
(parallel/simulate.py): EP shards the block arrays by expert and reproduces the single-rank engine
bit for bit; TP slices every expert's w2 along Fe on block edges and is bitwise identical at 1, 2
and 4 ranks; a TP slice that would cut a block is refused at start-up naming the type and widths.
The same plans under a real `mpirun -np 2` are in test_mpi.py."""

from __future__ import annotations

import mpi_worker
import numpy as np
import pytest
from lfm2engine import Engine, quant
from lfm2engine.errors import ParallelError
from lfm2engine.parallel import executors, simulate
from lfm2engine.parallel.plan import ParallelPlan

NEW_TOKENS = 4


@pytest.fixture(scope="module")
def qsrc(tmp_path_factory):
    return mpi_worker.make_awkward_checkpoint(str(tmp_path_factory.mktemp("qpar")), sizes=mpi_worker.QUANT)


@pytest.fixture(scope="module")
def engines(qsrc):
    made = {}

    def get(dtype):
        if dtype not in made:
            made[dtype] = Engine.from_pretrained(qsrc, dtype=dtype, device=mpi_worker.device())
        return made[dtype]

    return get


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_ep_and_dp_reproduce_the_single_rank_quantized_engine(engines, dtype):
    eng = engines(dtype)
    prompts = mpi_worker.test_prompts(eng.config.vocab_size)
    ref, ref_logits = eng.generate(prompts, NEW_TOKENS), eng.logits(prompts)
    for kind in ("dp", "ep"):
        assert simulate.simulate_generate(eng, kind, 2, prompts, NEW_TOKENS) == ref, kind
        assert np.array_equal(simulate.simulate_logits(eng, kind, 2, prompts, batch_size=2), ref_logits), kind


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_tp_slices_blocks_and_is_bitwise_identical_at_1_2_and_4_ranks(engines, dtype):
    eng = engines(dtype)
    prompts = mpi_worker.test_prompts(eng.config.vocab_size)
    one = simulate.simulate_logits(eng, "tp", 1, prompts)
    for world in (2, 4):
        assert np.array_equal(simulate.simulate_logits(eng, "tp", world, prompts), one), world
    ref_logits = eng.logits(prompts)  # another summation order (the 4-slice tree): close, not equal
    np.testing.assert_allclose(one, ref_logits, rtol=0, atol=1e-4 * np.abs(ref_logits).max())

    def shards(comm):
        e = executors.sharded_copy(eng, ParallelPlan("tp", 2, comm.Get_rank()), comm)
        return [(quant.qtype_of(w2).name, quant.logical_shape(w2)) for w2 in (s[1] for s in e.moe_impl.slices[1])]

    got = simulate.run(2, shards)
    assert got[0] == got[1] == [(dtype, (5, 64, 32))] * 2  # 2 canonical slices of Fe = 128 per rank, whole blocks


def test_tp_refuses_slices_that_cut_a_block(tmp_path):
    sizes = dict(mpi_worker.QUANT, hidden_size=256, num_attention_heads=2, intermediate_size=256,
                 moe_intermediate_size=256)  # q4_k blocks of 256; Fe / 4 = 64
    eng = Engine.from_pretrained(mpi_worker.make_awkward_checkpoint(str(tmp_path), sizes=sizes), dtype="q4_k",
                                 device=mpi_worker.device())
    with pytest.raises(ParallelError, match=r"plan tp: layer 1's experts are q4_k: their down projection \(w2, K = "
                                            r"Fe = 256\) is cut into 4 slices of 64, 64, 64, 64 weights, which do not "
                                            r"fall on q4_k's 256-weight blocks \(Fe / 4 must be a multiple of 256\); "
                                            r"hint: use --plan ep or dp"):
        simulate.simulate_logits(eng, "tp", 1, [[1, 2, 3]])
    assert simulate.simulate_logits(eng, "ep", 2, [[1, 2, 3]]).shape == (1, 61)
