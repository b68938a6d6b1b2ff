"""The mutants judged equivalent by hand for benchmarks/mutation.py, each with its reason (issue 22): a survivor
listed here counts as equivalent, not as surviving."""

# Mutants that no test can kill because the mutated program behaves the same, each with the reason (read by hand
# with `mutmut show NAME` in the module's copy). They are counted apart and left out of `kill_rate_judged`.
EQUIVALENT: dict[str, str] = {
    "sae.darkmatter.regression.x_fit_linear_map__mutmut_67": "ones column in float32: torch.cat promotes it to float64 "
    "and 1.0 is exact in both",
    "sae.darkmatter.regression.x_fit_linear_map__mutmut_70": "same as _67 (dtype argument dropped)",
    "sae.darkmatter.regression.x_fit_linear_map__mutmut_81": "driver None is gelsy on CPU: like gelsd it returns the "
    "minimum-norm solution of the (square, possibly singular) normal equations",
    "sae.darkmatter.regression.x_fit_linear_map__mutmut_84": "same as _81 (driver argument dropped)",
    "sae.darkmatter.regression.x_fit_linear_map__mutmut_86": "torch.linalg.lstsq reads the driver name case-insensitively",
    "sae.darkmatter.regression.x_group_mean_r2__mutmut_39": "one more group slot than ids: the extra slot is never indexed",
    "sae.darkmatter.regression.x_r2_per_dimension__mutmut_64": 'float("NAN") is NaN',
    # `... if ctx.needs_input_grad[i] or True`: the gradient is computed for an input that does not need one and
    # autograd discards it: slower, same results (tests/sae/test_sparse_ops.py checks every subset of inputs)
    # scan-and-snap verdicts (tests/circuits/test_scan_snap_verdicts.py)
    "circuits.scan_snap.predictions.x__trend_fraction__mutmut_13": "no cell with a trend: np.mean([]) is NaN too (with a RuntimeWarning)",
    "circuits.scan_snap.predictions.x__trend_fraction__mutmut_18": 'float("NAN") is NaN',
    "circuits.scan_snap.predictions.x_composition_frame__mutmut_21": "unsqueeze(+1) of a 1-D arange is unsqueeze(-1)",
    "circuits.scan_snap.predictions.x_composition_frame__mutmut_72": "to_frame(index=None) keeps the MultiIndex; reset_index(drop=True) drops it at the end",
    "circuits.scan_snap.predictions.x_composition_frame__mutmut_73": "same as _72",
    "circuits.scan_snap.predictions.x_figure6_comparison__mutmut_115": 'float("NAN") is NaN',
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_6": "np.asarray without dtype: the difference with a float64 array is float64",
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_8": "same as _6",
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_10": "same as _6 (the other operand)",
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_12": "same as _6 (the other operand)",
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_20": "rng.integers(n) draws from [0, n) exactly as rng.integers(0, n), same stream",
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_24": "mean over axis +1 of a 2-D array is the mean over axis -1",
    "circuits.scan_snap.predictions.x_figure6_seed_spread__mutmut_18": "group labels as floats (0.0, 1.0, ...) instead of ints: the same groups",
    "circuits.scan_snap.predictions.x_verdicts__mutmut_163": "tau >= 0.8 vs > 0.8: scipy computes tau as (C - D) / sqrt(n0 - ties) / sqrt(n0 - ties), "
    "which never lands on the float 0.8 (8 of 10 pairs gives 0.7999999999999999), so the two agree on every reachable value",
    "circuits.scan_snap.predictions.x_verdicts__mutmut_201": "same as _163 (the transformer's tau)",
    "sae.sparse_ops.xǁSparseDecodeǁbackward__mutmut_4": "gradient computed when not needed, discarded by autograd",
    "sae.sparse_ops.xǁSparseDecodeǁbackward__mutmut_14": "gradient computed when not needed, discarded by autograd",
    "sae.sparse_ops.xǁTopKEncodeǁbackward__mutmut_8": "gradient computed when not needed, discarded by autograd",
    "sae.sparse_ops.xǁTopKEncodeǁbackward__mutmut_18": "gradient computed when not needed, discarded by autograd",
}
# the session-7 selection code (session 8's judgement): the shared score buffer and the order of a row's k latents are
# how, not what: the same values and indices as a set (every consumer sums over a row's latents; the tests compare
# rows as sorted sets). The buffer's memory effect is measured by tests/test_plan.py's SAE peak test.
_SAME_SET = "the k latents of a row in another order: the same set and values (consumers sum over them)"
_FRESH_BUFFER = "a fresh [rows, d_sae] tensor instead of the shared buffer: the same values (memory only)"
EQUIVALENT.update(
    {
        f"sae.sparse_ops.x{name}": reason
        for name, reason in {
            "__by_row_chunks__mutmut_5": "exactly 512 rows as one chunk of 512: the same single select call",
            "__select_then_exact__mutmut_29": "topk(dim=-1), the default, is dim 1 of the 2-D scores",
            "__select_then_exact__mutmut_30": "the shortlist sorted: the exact re-rank reads every candidate",
            "__select_then_exact__mutmut_41": "same as _30",
            "__select_then_exact__mutmut_34": _FRESH_BUFFER,
            "__select_then_exact__mutmut_38": _FRESH_BUFFER,
            "__select_then_exact__mutmut_55": "topk(dim=-1), the default, is dim 1 of the 2-D exact scores",
            "__select_then_exact__mutmut_56": _SAME_SET,
            "__select_then_exact__mutmut_58": _SAME_SET,
            "ǁTopKEncodeǁforward__mutmut_1": "no select_dtype (or x's own) goes to the shortlist path in x's dtype: a "
            "full-precision shortlist of k + margin re-ranked exactly is the exact top k (slower)",
            "ǁTopKEncodeǁforward__mutmut_54": _FRESH_BUFFER,
            "ǁTopKEncodeǁforward__mutmut_58": _FRESH_BUFFER,
        }.items()
    }
)
# the activation store (tests/test_store_mutants.py)
EQUIVALENT.update(
    {
        "interp.store.writer.x__read_manifest__mutmut_5": 'decode("UTF-8"): Python codec names are case-insensitive',
        "interp.store.writer.x_build_store__mutmut_5": 'default encoding "UTF-8": codec names are case-insensitive',
        "interp.store.reader.xǁActivationStoreǁiter_batches__mutmut_51": 'rest_index starts as "" instead of None: '
        "it is read only after rest_acts is set, and the two are always assigned together",
        "interp.store.writer.x__site_shapes__mutmut_8": "a probe of 2 sequences instead of 1: only the shape after "
        "[batch, pos] is read",
        "interp.store.writer.x__site_shapes__mutmut_13": "no stop_at_layer: the whole model runs, the captured "
        "activations are the same (layers after the deepest site computed for nothing)",
        "interp.store.writer.x__forward__mutmut_4": "same as _site_shapes_13 (stop_at_layer=None)",
        "interp.store.writer.x__forward__mutmut_7": "same as _site_shapes_13 (stop_at_layer dropped)",
        "interp.store.writer.x__forward__mutmut_11": "capture_hook(clone=None) is clone=False (falsy)",
        "interp.store.writer.x__forward__mutmut_15": "capture_hook's default clone=True: a copy of the same values "
        "(more memory; nothing writes to the activation)",
        "interp.store.writer.x__forward__mutmut_17": "same as _15 (clone=True)",
        "interp.store.writer.x__resume_or_start__mutmut_1": "mkdir(parents=None): build_store made the directory "
        "with its parents before, and exist_ok=True",
        "interp.store.writer.x__resume_or_start__mutmut_3": "same as _1 (parents dropped)",
        "interp.store.writer.x__resume_or_start__mutmut_5": "same as _1 (parents=False)",
        "interp.store.writer.x_build_store__mutmut_169": "stop_at_layer None: the whole model runs, the captured "
        "activations are the same",
        "interp.store.writer.x_build_store__mutmut_214": "same as _169",
        "interp.store.writer.x_build_store__mutmut_201": "return instead of break on an empty batch: unreachable "
        "(Tensor.split and token_batches yield no empty batch, and the loop stops at the target first)",
        "interp.store.writer.x_build_store__mutmut_246": "without the at-target write inside the loop the next "
        "(empty) slice ends the loop and the write after it writes the same shard, manifest entry and order",
        "interp.store.writer.x_build_store__mutmut_296": "no model check on the store just written from this model "
        "(its settings, model fingerprint included, were already compared)",
        "interp.store.writer.x_build_store__mutmut_298": "same as _296",
    }
)
# the recall/reasoning dissociation (tests/circuits/test_dissociation_mutants.py)
# (the rules moved from dissociation.py to verdicts.py in session 8; a function's mutants keep their numbers)
_RR_MODULE = {
    name: "verdicts"
    for name in (
        "mean_ci95",
        "_random_drops",
        "_q975",
        "verdicts",
        "_empirical_p",
        "verdict_text",
        "empirical_p",
        "bootstrap_interaction",
        "held_out_verdict",
    )
}
EQUIVALENT.update(
    {
        f"circuits.recall_reasoning.{_RR_MODULE.get(name.split('__mutmut')[0], 'dissociation')}.x_{name}": reason
        for name, reason in {
            "ablated_scores__mutmut_17": "zero ablation given a reference it never reads (the mutant builds one)",
            "ablated_scores__mutmut_20": "same as _17",
            "ablated_scores__mutmut_21": "same as _17",
            "dissociation__mutmut_42": "the unablated base: ablated_scores returns before reading sites (None or [])",
            "dissociation__mutmut_43": "the unablated base: no sites, so the method is never read",
            "dissociation__mutmut_48": "same as _43",
            "dissociation__mutmut_49": "same as _43",
            "dissociation__mutmut_80": "an empty set ablated is the unablated model: ablated_scores(sites=[]) gives "
            "the base scores the original reuses",
            "dissociation__mutmut_86": "no shared reference cache: each ablation computes its reference itself, "
            "the same numbers (slower)",
            "_q975__mutmut_11": 'float("NAN") is NaN',
            "_empirical_p__mutmut_14": 'float("NAN") is NaN',
            "empirical_p__mutmut_16": 'float("NAN") is NaN',
            "held_out_verdict__mutmut_141": 'float("NAN") is NaN',
            "verdicts__mutmut_3": "groupby(sort=None) keeps the table's order, as sort=False",
            "verdicts__mutmut_55": "mean_ci95 of no drops is (NaN, NaN, NaN) too (numpy warns on the empty mean)",
            "matched_random_sets__mutmut_45": "Site is a dataclass(order=True) on (layer, component, head, neuron): "
            "on units of one kind per component its own order is the key's",
            "matched_random_sets__mutmut_47": "same as _45",
            "empirical_p__mutmut_3": "np.asarray of a numeric null without dtype: comparisons and isfinite agree",
            "empirical_p__mutmut_5": "same as _3",
            "held_out_verdict__mutmut_71": "an empty set's baseline of 2 NaNs instead of 1: every statistic of it is "
            "NaN either way",
            "held_out_verdict__mutmut_115": "the bootstrap reads conditions 0..3 instead of 0..2: only drops of "
            "conditions 1 and 2 enter the interaction",
            "mean_ci95__mutmut_3": "np.asarray of numeric values without dtype: the mean, std and t-interval agree",
            "mean_ci95__mutmut_5": "same as _3",
            "mean_ci95__mutmut_12": "std(ddof=2) == 0 exactly when std(ddof=1) == 0 (n > 2); at n = 2 equal values "
            "give a half-width of 0 either way",
            "_score_chunk__mutmut_35": "log_softmax(+1) of a 2-D [rows, vocab] tensor is log_softmax(-1)",
            "_score_chunk__mutmut_37": "gather(+1, ...) on a 2-D tensor is gather(-1, ...)",
            "_score_chunk__mutmut_40": "stacking 1-D scores on dim +1 of a 2-D result is dim -1",
            "evaluate_conditions__mutmut_67": 'the reference cache "" instead of None under zero ablation, which '
            "never reads it",
            "bootstrap_interaction__mutmut_12": "rng.integers(n) draws from [0, n) exactly as rng.integers(0, n), same "
            "stream",
            "dissociation__mutmut_92": "same as _86 (reference_cache dropped)",
            "bootstrap_interaction__mutmut_24": "drops from condition 1 instead of 0: the interaction (the two "
            "selectivities summed) does not depend on the unablated accuracy, which cancels, so the draws are equal",
            "evaluate_conditions__mutmut_76": "no precomputed reference cache: ablated_last_logits computes the same "
            "reference activations itself (slower)",
            "evaluate_conditions__mutmut_107": "same as _76 (reference_cache=None)",
            "evaluate_conditions__mutmut_114": "same as _76 (reference_cache dropped)",
            "evaluate_conditions__mutmut_97": "zero ablation given a reference it never reads",
            "evaluate_conditions__mutmut_100": "same as _97",
            "evaluate_conditions__mutmut_101": "same as _97",
            "evaluate_conditions__mutmut_109": "progress=None is falsy like False",
            "evaluate_conditions__mutmut_116": "progress dropped: ablated_last_logits defaults to no progress bar",
            "evaluate_conditions__mutmut_115": "memory_budget dropped: ablated_last_logits defaults to the same "
            "DEFAULT_MEMORY_BUDGET (the one call passes `memory_budget or DEFAULT_MEMORY_BUDGET`); only batching "
            "would change, not the numbers",
            "evaluate_conditions__mutmut_66": "break instead of continue when no condition is ablated: `ablated` "
            "depends on the conditions only, so it is empty for every length group alike",
        }.items()
    }
)

EQUIVALENT.update(
    {
        "interp.attribution.graddrop.x_false_negative_bound__mutmut_61": "patch_node_sets given graph None builds the "
        "task model's graph again: the same senders and edges as the graph already checked against the task",
        "interp.attribution.graddrop.x_false_negative_bound__mutmut_103": "same as _61 (the subsets' patch)",
        "interp.attribution.graddrop.x_false_negative_bound__mutmut_92": "rng.random() <= p instead of < p: differs "
        "only when a draw equals p exactly (probability 2**-53 per draw)",
        # session 6, read one by one
        **{
            f"interp.attribution.gradients.x_run_passes__mutmut_{n}": "the gradient of a hook autograd never leaves "
            "unused: run_passes is given hooks of blocks before stop_at_layer = n_layers (hooks_needed), all upstream of "
            "the last position's logits, so no gradient is None and allow_unused / the zeros for None never act"
            for n in (51, 55, 58, 59, 61, 63)
        },
        "interp.attribution.atp.x_estimates_frame__mutmut_3": "np.where(isnan(fixed), linear, fixed) for every method: "
        "estimate_effects leaves fixed all NaN unless method is 'atp*', so it is linear",
        "interp.attribution.atp.x_estimates_frame__mutmut_32": "gap `or 2.0` instead of `or 1.0`: the fallback acts only "
        "when the clean and corrupted metrics are equal to the last bit, where it picks the unit of a disagreement that "
        "is then a difference of two estimates of a zero gap",
        "interp.attribution.atp.x_estimate_effects__mutmut_1": "default method 'XXatpXX': the body tests only "
        "method == 'atp*', so any other string is plain AtP, and every caller passes method",
        "interp.attribution.atp.x_estimate_effects__mutmut_2": "same as _1 ('ATP')",
        "interp.attribution.atp.x_estimate_effects__mutmut_45": "pick None instead of slice(None) for a site without a "
        "head or neuron: x[None].sum() == x.sum()",
        **{
            f"interp.attribution.reliability.x_check_estimates__mutmut_{n}": "pd.array of NA without dtype='boolean' "
            "(object): every element is read again through pd.isna / bool() and the column is rebuilt as 'boolean'"
            for n in (39, 41, 63, 65)
        },
        "interp.attribution.reliability.x_check_estimates__mutmut_73": "the reliable column without dtype='boolean': "
        "its elements are Python bools and pd.NA, which pd.array infers as 'boolean' (at least one row is verified)",
        "interp.attribution.reliability.x_check_estimates__mutmut_75": "same as _73 (dtype argument dropped)",
        "interp.attribution.reliability.x_check_estimates__mutmut_95": "estimates.attrs not merged: out = "
        "estimates.copy() already carries them",
        "interp.attribution.graddrop.x_false_negative_bound__mutmut_141": "scores.attrs not merged: out = scores.copy() "
        "already carries them",
        "interp.attribution.graddrop.x_false_negative_bound__mutmut_48": "sort kind 'STABLE': numpy reads the kind "
        "case-insensitively, the same stable sort",
        "interp.attribution.graddrop.x_nodes_frame__mutmut_4": "np.asarray(effects) without dtype=float: every caller "
        "passes float64 arrays (patched values minus the clean metric, AtP sums in float64)",
        "interp.attribution.graddrop.x_nodes_frame__mutmut_6": "same as _4 (dtype argument dropped)",
        "interp.attribution.graddrop.x__atp_per_node__mutmut_61": "d[:, :, None] * g[:, :, None] for an MLP or embedding "
        "node: a new axis of length 1, the same sum as (d * g).sum()",
        "interp.attribution.atp.x_sharded_effects__mutmut_71": "nan_to_num without nan=0.0: 0.0 is numpy's default",
        "interp.attribution.atp.x_sharded_effects__mutmut_74": "NaN summed as 1.0 instead of 0.0: the only NaNs are the "
        "fixed estimates of sites AtP* does not fix, and np.where(fixed_applies, ...) sets those back to NaN",
        "interp.attribution.graddrop.x_patch_nodes__mutmut_13": "patch_node_sets given graph None builds the task "
        "model's graph again: the same senders as the graph patch_nodes has just checked against the task",
        "interp.attribution.graddrop.x_patch_node_sets__mutmut_27": "-2 instead of -1 for the embeddings' layer: both "
        "are < 0, the same branch (run the whole model), and no resid hook is asked for either",
        "interp.attribution.graddrop.x_patch_node_sets__mutmut_111": "layer <= 0: a set starting at layer 0 runs the "
        "whole model with its hooks instead of block 0 on from the clean resid_pre of block 0, which is the clean "
        "embedding: the same values and the same blocks",
        "interp.attribution.graddrop.x_patch_node_sets__mutmut_112": "same as _111 (layer < 1)",
        "interp.attribution.atp.x_attribution_sweep__mutmut_20": "method None for the effects: the method changes an "
        "effect only at q / k sites (AtP*'s QK fix) and no named sweep holds one; the table still gets the method",
        "interp.patching.engine.x_patch_sites__mutmut_44": "world >= 1 instead of > 1: in one process the batches are "
        "dealt to a single rank (all of them, reordered by cost) and each value is stored by its site index",
    }
)
# Survivors left on purpose: a device move (`.to(model.cfg.device)` -> `.to(None)` or dropped) is a no-op on a
# CPU-only machine and kills only where the model sits on a GPU (store: _site_shapes 4/7, build_store 219/229/231;
# dissociation: _reference_tokens 2, evaluate_conditions 56). They count as survivors, not as equivalent.
# interp/patching (tests/test_patching_mutants2.py kills the rest of its survivors; read with `mutmut show`)
EQUIVALENT.update(
    {
        "interp.patching.pairs.x_builtin_pairs__mutmut_1": "default n=17: CAPITALS has 16 countries, so "
        "list(CAPITALS)[:17] is the same 16",
        "interp.patching.cost.xǁBlockFlopsǁof__mutmut_17": "getattr(cfg, 'attn_only', None): a HookedTransformerConfig "
        "always has attn_only, and the default None is falsy like False anyway",
        "interp.patching.engine.x__clean_cache__mutmut_11": "no stop_at_layer for the clean run: every block runs, the "
        "captured activations (of patched layers only) are the same",
        "interp.patching.engine.x__last_position_block_ok__mutmut_24": "getattr(cfg, 'clip_qkv') without a default: "
        "a HookedTransformerConfig always has clip_qkv (default None)",
        "interp.patching.engine.x__last_position_block_ok__mutmut_34": "q_norm looked up under a name that is never "
        "set: TransformerLens's attention sets q_norm and k_norm together (use_qk_norm or an OLMo architecture, "
        "components/abstract_attention.py), so the k_norm check refuses the same models",
        "interp.patching.engine.x__last_position_block_ok__mutmut_41": "same as _34 for k_norm: the q_norm check "
        "refuses the same models",
        "interp.patching.engine.x__last_position_block_ok__mutmut_47": "OlmoeForCausalLM dropped from the refused "
        "architectures: TransformerLens gives that architecture's attention q_norm and k_norm, so those checks "
        "refuse it",
        "interp.patching.engine.x__last_position_block_ok__mutmut_51": "same as _47 for Olmo3ForCausalLM",
        "interp.patching.engine.x__score_variants__mutmut_131": "frozen=None on the prefix key/value entry: the entry "
        "is made for one block call and then dropped; unfrozen, TransformerLens's append also stores on it the "
        "concatenation it returns either way (its offset is read before)",
        "interp.patching.engine.x__score_variants__mutmut_134": "same as _131 (frozen dropped: default False)",
        "interp.patching.engine.x__score_variants__mutmut_157": "same as _131 (frozen=False)",
        "interp.patching.engine.x__score_variants__mutmut_57": "resid.shape[2] (d_model) > 1 for shape[1] > 1: "
        "differs only when one position is left; the last-position path then computes keys and values of no "
        "positions and passes the cached prefix kv[:, :start], as the plain path does (an empty entry when start "
        "is 0)",
        "interp.patching.sweeps.x_head_sites__mutmut_7": "COMPONENTS.get(None) is None, so check_component(component, "
        "with_heads) always runs: it raises exactly when the component is unknown or has no head axis, the "
        "condition it replaces",
    }
)
# Left as survivors: gather_values 14 (the nccl device move, reached only on a GPU) and patch_sites' torchrun
# branch (world > 1: 47, 51, 97, 101; tests/test_patching_distributed.py).

# session 7-8 engine code (session 8's judgement)
EQUIVALENT.update(
    {
        f"interp.patching.engine.x{name}": reason
        for name, reason in {
            "_ragged_groups__mutmut_4": "one distinct start through the dynamic programme: one run, chunked to per_batch "
            "the same way",
            "_ragged_groups__mutmut_32": "every cost shifted by 1: the same least-cost split",
            "_ragged_groups__mutmut_36": "cut[0] is never read (the walk back stops at 0); every other entry is written",
            "_ragged_groups__mutmut_38": "one more cut entry, never read",
            "_ragged_groups__mutmut_41": "i = 0 has no j to try: the loop body does nothing",
            "_ragged_groups__mutmut_74": "ties to the later j: another split of the same least cost (the tests check the "
            "cost against brute force; the values do not depend on the split)",
            "_shard_batches__mutmut_12": "every rank's load shifted by 1: the same least-loaded rank each time",
            "ǁ_RearrangeOnceǁrearrange__mutmut_2": "a plain tensor without axes cached by id and version, and kept alive "
            "with its copy: the same values",
        }.items()
    }
)
EQUIVALENT.update(
    {
        "interp.patching.cost.x_shape_floor_seconds__mutmut_27": "call_flops reads only the described arguments, "
        "never the op",
        "interp.patching.cost.x_shape_floor_seconds__mutmut_34": "the products matmul_calls records carry tensors "
        "only (scalars such as baddbmm's beta arrive as keyword arguments, which it does not record)",
        "interp.patching.engine.x_patch_sites__mutmut_25": "the clean run cached through every layer instead of up to "
        "the last patched one: the same activations at the patched sites (slower)",
        "interp.patching.engine.x_patch_sites__mutmut_28": "same as _25 (one layer further)",
        "interp.patching.engine.x_patch_sites__mutmut_32": "same as _25",
        "interp.patching.engine.x_patch_sites__mutmut_47": "world >= 1: one process shards its batches over one rank, "
        "which holds them all, in cost order (a batch's values do not depend on the order; the gather still needs world > 1)",
    }
)
