"""Speculative decoding on the engine: a cheap draft proposes, the target verifies in one pass.

Lossless by construction: greedy mode returns exactly the target's greedy tokens, and sampling
mode uses the rejection rule of Leviathan et al. / Chen et al. (2023), extended to several
candidates per position (recursive rejection over i.i.d. draft samples, as in SpecInfer), so
that every committed token is distributed as the target's. Not a batched server: one sequence
at a time. Caches are rolled back with `Session.truncate` (chain mode) or advanced with
`Session.commit_tree` (tree mode). `python -m lfm2engine.specdecode` runs it, times plain
decoding of the target in the same run, and reports acceptance, histogram, rollbacks, latency,
throughput and speed-up (docs/specdecode.md).

Modules: tree (token trees), acceptance (greedy and rejection-sampling walks), stats (counters),
decoder (SpeculativeDecoder), selfdraft (drafts made from the target, layer-skip calibration),
measure (timing against plain decoding), command (the CLI). A layer-pruned draft checkpoint is
written by lfm2engine.checkpoint.write_pruned_checkpoint (re-exported here).
"""

from ..checkpoint import write_pruned_checkpoint
from .acceptance import residual, walk_tree_greedy, walk_tree_sampling
from .command import DEFAULT_K, DEFAULT_SELF_DRAFT, build_parser, main
from .decoder import SpeculativeDecoder, check_compatible
from .measure import expected_tokens_per_round, forward_ms, forward_timer, measure
from .selfdraft import (calibrate_skip_layers, calibration_sequence, draft_agreement, layer_list, make_self_draft,
                        skip_order)
from .stats import SpecStats
from .tree import TokenTree, build_tree

__all__ = [
    "DEFAULT_K", "DEFAULT_SELF_DRAFT", "SpecStats", "SpeculativeDecoder", "TokenTree", "build_parser", "build_tree",
    "calibrate_skip_layers", "calibration_sequence", "check_compatible", "draft_agreement",
    "expected_tokens_per_round", "forward_ms", "forward_timer", "layer_list", "main", "make_self_draft", "measure",
    "residual", "skip_order", "walk_tree_greedy", "walk_tree_sampling", "write_pruned_checkpoint",
]
