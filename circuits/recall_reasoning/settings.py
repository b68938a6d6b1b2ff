"""The settings of the recall-vs-reasoning analysis (circuits.recall_reasoning.pipeline.analyse), checked when built,
and the item subsets its verdicts are reported on."""

from __future__ import annotations

from dataclasses import dataclass

from interp.errors import InterpError

SUBSETS = (
    "all",
    "no_copy",
    "copy",
)  # evaluated reasoning items: all; families whose answer is not in the prompt; the others


@dataclass(frozen=True)
class AnalysisSettings:
    set_size: int = 9
    min_restoration: float = 0.02
    unit_kinds: tuple[str, ...] = ("head", "mlp")
    neuron_set_size: int = 20  # MLP neurons (mlp.hook_post) get their own sets by the same rule; 0 skips them
    neuron_candidates: int = 48  # per task, the neurons with the largest |AtP restoration| patched exactly
    neuron_min_restoration: float = 0.005  # one neuron moves the logit difference far less than a head
    neuron_methods: tuple[str, ...] | None = None  # ablation methods for the neuron sets; None: the same as methods
    methods: tuple[str, ...] = ("zero", "mean", "resample")
    n_random: int = 200  # random sets per chosen set (matched composition and layer band)
    band_factor: int = (
        2  # the band widens until it holds band_factor x as many units of each kind outside the set as the set holds
    )
    p_threshold: float = 0.05  # the verdict's level for every empirical p
    n_bootstrap: int = 2000  # item-bootstrap draws of the interaction
    verdict_method: str = "mean"
    position_layers: tuple[int, ...] | None = None  # layers of the layer x position sweep; None: all; () skips it
    screen: bool = True
    control_length: bool = True
    alpha: float = 0.01  # the screen's FDR level
    min_d: float = 0.8
    exact_candidates: int | None = (
        None  # None: patch every unit exactly; else AtP first, then this many per task exactly
    )
    single_length: bool = False  # keep only each task's most common token length: one batch per forward (quick runs)
    max_items: int | None = (
        None  # per task, half and stratum (reasoning: answer in the prompt or not), a seeded sample of the kept items
    )
    min_subset_items: int = 8  # the verdict on a subset of the reasoning items (no-copy families, the others) needs this many evaluated items
    shuffle_labels: bool = False  # the negative control: pool both tasks' items and deal the labels at random
    template_reference: bool = True  # each item's reference: non-evaluated prompts of its own template and length (label-blind, on-distribution)
    min_reference_prompts: int = (
        8  # template references: an evaluated item whose (template, length) cell holds fewer is dropped (counted)
    )
    max_reference_prompts: int | None = (
        32  # template references: a larger cell is a seeded sample of this many (each prompt is a forward per method)
    )
    reference_check: bool = True  # template references: re-evaluate the chosen sets with each half of every cell (the pool's sampling error, reported)
    shared_reference: bool = (
        True  # without template references: both tasks' held-out prompts of a token length where both have that length
    )
    memory_budget: int = 1 << 29  # bytes of transient activations per batch of ablated forwards
    seed: int = 0

    def __post_init__(self):
        for name, methods in (("methods", self.methods), ("neuron_methods", self.neuron_methods or self.methods)):
            if self.verdict_method not in methods:
                raise InterpError(
                    f"AnalysisSettings(verdict_method={self.verdict_method!r}) is not among {name}={methods}; add it there or pick one of them."
                )
        if self.n_random < 1:
            raise InterpError(
                f"AnalysisSettings(n_random={self.n_random}): at least one random set is needed (the held-out test uses 200 or more)."
            )
        if not 0 < self.p_threshold < 1:
            raise InterpError(f"AnalysisSettings(p_threshold={self.p_threshold}) must lie in (0, 1).")
        if self.min_reference_prompts < 1 or (
            self.max_reference_prompts is not None and self.max_reference_prompts < self.min_reference_prompts
        ):
            raise InterpError(
                f"AnalysisSettings(min_reference_prompts={self.min_reference_prompts}, max_reference_prompts={self.max_reference_prompts}): "
                "need 1 <= min_reference_prompts <= max_reference_prompts."
            )
