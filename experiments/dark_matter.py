"""Dark matter of SAEs (Engels, Riggs, Tegmark 2024, arXiv 2410.14670): config in, results dir out.

    from experiments.dark_matter import DarkMatterConfig, run
    run(DarkMatterConfig.quick(), Path("results/dark-matter-quick"))

The activation store and every SAE live under `cache_dir` (default: the toolkit cache), keyed by what
determines them, so a second run with the same settings reuses them and a killed run resumes (the store
and each SAE's training restart from their last shard / checkpoint). SAEs train on the fit tokens only;
every number is measured on the held-out tokens. Activations stay in the store's dtype in memory (float16
for the full run: 512k tokens x 4 sites is 2.4 GB) and are cast to float32/float64 a chunk at a time.

Stages, in order: the store (and `extra_heldout_seqs` more held-out sequences from past it, for the grid); the norm R^2 grid
(widths x first positions dropped x training x k, each with bootstrap CIs over held-out sequences and documents); the CE shares (with CIs) at the grid widths; the family of SAEs
trained to convergence and every per-width analysis (CE shares not cached yet last). `budget_minutes` bounds one
invocation: past it the run writes what it has (the grid's missing cells and the missing stages are listed) and a
rerun resumes. The stages are library code in sae.darkmatter (data, saes, grid, family, report); this script holds
the config and wires it to a results dir.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dashboards import build_dashboard
from interp.errors import InterpError
from interp.models import load_model
from interp.results import ResultsDir
from interp.threads import torch_threads
from sae.darkmatter import SyntheticSpec
from sae.darkmatter.data import cache_folder, load_split, split_sequences  # noqa: F401 - split_sequences: public name kept here for one release
from sae.darkmatter.family import Context
from sae.darkmatter.grid import grid_effects  # noqa: F401 - public name kept here for one release
from sae.darkmatter.report import dark_matter_report
from sae.darkmatter.saes import Budget
from sae.train import TrainConfig


@dataclass(frozen=True)
class DarkMatterConfig:
    analysis: str = "dark_matter"
    model: str | dict | None = None  # anything interp.load_model takes; None: the bundled SmolLM2-135M-Instruct
    layer: int = 6  # SAEs at blocks.{layer}.hook_resid_post; the store stops the model after this layer
    n_tokens: int = 524_288  # 4,096 sequences: 3,072 fit, 1,024 held out (half the previous run's 1M: the store is rebuilt in ~10 min at 1 thread)
    seq_len: int = 128
    store_dtype: str = "float16"
    fit_fraction: float = (
        0.75  # of the sequences (a seeded random split): fit (SAE training, linear maps); the rest held out
    )
    widths: tuple[int, ...] = (
        576,
        1152,
        2304,
        4608,
        9216,
    )  # 16x at matched L0; measured 0.17-0.9 s per 4096-row step at 1 thread
    k: int = 32  # TopK: every width at the same L0
    skip_positions: int = 1  # the first position of each packed sequence is an attention sink (~7x the norm): left out, like the paper's BOS
    # the family's SAEs (and the grid's "converged" cells): constant lr after warm-up until the training FVU changes by < 1% over the last
    # 20% of the steps (checked every checkpoint, from 1,000 steps = 5 epochs on; at most `steps`), then annealed to 0 over 20% more steps.
    # 2,048-row batches: half the cost per step of the short schedule's 4,096.
    training: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=8000,
            batch_size=2048,
            lr=2e-3,
            warmup_steps=30,
            dead_after_tokens=400_000,
            checkpoint_every=100,
            until_converged=True,
            min_steps=1000,
        )
    )
    # the previous runs' schedule, the grid's "300 steps" cells: ~1.6 epochs of 780k fit tokens, lr above the width-scaled default because the run is short
    short_training: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=300, batch_size=4096, lr=2e-3, warmup_steps=30, dead_after_tokens=400_000, checkpoint_every=50
        )
    )
    # the grid's "converged" cells; None: `training` (the family's, so the grid's converged cells at k are the family's SAEs)
    grid_training: TrainConfig | None = None
    # the norm R^2 grid: widths x first positions dropped x training (short, converged) x k; each cell with a bootstrap CI over held-out sequences
    grid_widths: tuple[int, ...] = (576, 2304)
    grid_positions_dropped: tuple[int, ...] = (1, 16, 64)
    grid_ks: tuple[int, ...] = (32, 64)
    grid_fit_tokens: int = (
        131_072  # fit tokens of each grid cell's norm probe, the same for every positions_dropped (the paper: 150k)
    )
    bootstrap: int = 1000  # replicates of every bootstrap CI
    # a grid cell whose CI half-width exceeds this is judged also on the fit rows its probe did not see (the SAE did: reported apart and pooled)
    grid_ci_target: float | None = 0.01
    # more held-out sequences for the grid: the corpus's next sequences after the store's (from the first document the store has no token of),
    # layer-6 activations stored beside the store; neither the SAEs nor the probes see them. Every grid cell is judged on the store's held-out
    # sequences and these together (1,024 + 1,024 halves the CI's variance). 0: the store's held-out sequences only
    extra_heldout_seqs: int = 1024
    budget_minutes: float | None = (
        110.0  # stop starting/continuing work after this long, write what is done (rerun to resume); None: no limit
    )
    ce_minutes_per_width: float = 20.0  # a CE width (not interruptible) starts only with this much budget left; ~20 min for 512 sequences at 1 busy thread
    linear_fit_tokens: int = (
        262_144  # fit tokens (a fixed subset) the linear maps are fit on: bounds the float64 working set
    )
    focus_width: int | None = None  # width for the error-SAE analysis and the per-token tables; None: the smallest
    pursuit_tokens: int = 16_384  # per width, half fit, half held out
    downstream_seqs: int = 512  # held-out sequences spliced per width (bootstrap CIs over them)
    feature_threshold: float = 0.7  # cosine at which two decoder directions count as the same feature
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    cache_dir: str | None = None  # None: <toolkit cache>/dark_matter
    seed: int = 0
    threads: int = 1
    png: bool = True

    def __post_init__(self):
        problems = [
            (self.layer < 1, f"layer={self.layer}: must be >= 1 (the earlier-layer analysis needs layer - 1)"),
            (
                len(self.widths) < 3 or len(set(self.widths)) != len(self.widths),
                f"widths={self.widths}: give at least 3 distinct widths (the power law has 3 parameters)",
            ),
            (
                self.k >= min(self.widths, default=0),
                f"k={self.k}: must be below the smallest width {min(self.widths, default=0)}",
            ),
            (
                not 0 <= self.skip_positions < self.seq_len - 1,
                f"skip_positions={self.skip_positions}: must be in 0..seq_len - 2 = {self.seq_len - 2}",
            ),
            (
                not 0 < self.fit_fraction < 1,
                f"fit_fraction={self.fit_fraction}: must be strictly between 0 and 1 (fit and held-out tokens are disjoint)",
            ),
            (
                self.focus_width is not None and self.focus_width not in self.widths,
                f"focus_width={self.focus_width}: must be one of widths {self.widths}",
            ),
            (self.linear_fit_tokens < 2, f"linear_fit_tokens={self.linear_fit_tokens}: must be at least 2"),
            (
                not 0 < self.feature_threshold < 1,
                f"feature_threshold={self.feature_threshold}: must be a cosine strictly between 0 and 1",
            ),
            (
                any(not self.skip_positions <= p < self.seq_len - 1 for p in self.grid_positions_dropped),
                f"grid_positions_dropped={self.grid_positions_dropped}: each must be in skip_positions..seq_len - 2 = {self.skip_positions}..{self.seq_len - 2}",
            ),
            (
                any(k >= min(self.grid_widths, default=0) for k in self.grid_ks),
                f"grid_ks={self.grid_ks}: each must be below the smallest grid width {min(self.grid_widths, default=0)}",
            ),
            (self.grid_fit_tokens < 2, f"grid_fit_tokens={self.grid_fit_tokens}: must be at least 2"),
            (
                self.extra_heldout_seqs < 0,
                f"extra_heldout_seqs={self.extra_heldout_seqs}: must be >= 0 (0: the store's held-out sequences only)",
            ),
            (self.bootstrap < 100, f"bootstrap={self.bootstrap}: use at least 100 replicates for a 95% interval"),
        ]
        for bad, message in problems:
            if bad:
                raise InterpError(f"DarkMatterConfig({message}).")

    @classmethod
    def quick(cls) -> DarkMatterConfig:
        return cls(
            n_tokens=32_768,
            store_dtype="float32",
            fit_fraction=2 / 3,
            widths=(1152, 2304, 4608),
            # the family on the short schedule (minutes), which the grid's short cells share; the grid's converged cells on 512-row batches
            training=TrainConfig(
                steps=200, batch_size=1024, lr=2e-3, warmup_steps=20, dead_after_tokens=100_000, checkpoint_every=100
            ),
            short_training=TrainConfig(
                steps=200, batch_size=1024, lr=2e-3, warmup_steps=20, dead_after_tokens=100_000, checkpoint_every=100
            ),
            grid_training=TrainConfig(
                steps=300,
                batch_size=512,
                lr=2e-3,
                warmup_steps=20,
                dead_after_tokens=100_000,
                checkpoint_every=50,
                until_converged=True,
                min_steps=150,
            ),
            grid_widths=(1152,),
            grid_fit_tokens=8192,
            extra_heldout_seqs=64,
            bootstrap=500,
            budget_minutes=None,  # one grid width: the quick run stays ~5 min
            pursuit_tokens=4096,
            downstream_seqs=8,
            synthetic=SyntheticSpec(n_tokens=8000),
        )


def run(config: DarkMatterConfig, out: Path) -> Path:
    """Every analysis of the paper on one residual-stream layer, plus the synthetic check; writes the results dir at `out`.

    The stages live in sae.darkmatter (report.dark_matter_report): the store; the norm R^2 grid; the CE shares at the grid widths; the family
    of SAEs and every per-width analysis. With budget_minutes, an invocation that runs out writes a partial results dir listing what is missing.
    """
    with torch_threads(config.threads):
        results = ResultsDir.create(
            out,
            config,
            analysis=config.analysis,
            title="Dark matter of SAEs: linear and nonlinear error",
            exist_ok=True,
        )
        budget = Budget(config.budget_minutes)
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        model = load_model(config.model)
        cache = cache_folder(config)
        ctx = Context(model, config, cache, load_split(model, config, cache), budget)
        store_seconds = time.perf_counter() - start
        report = dark_matter_report(ctx)
        report.metrics["seconds"] = dict(store=store_seconds, **report.metrics.get("seconds", {}))
        for name, frame in report.tables.items():
            results.save_table(name, frame)
        results.write_metrics(report.metrics)
        results.save_figures(report.figures, png=config.png)
        build_dashboard(results)
        if report.stopped:
            print(
                f"dark_matter: stopped at the budget ({report.stopped}); {len(report.metrics['missing'])} parts missing. "
                "Rerun the same command to resume from the cache."
            )
        return results.path


if __name__ == "__main__":  # pragma: no cover  (the same command and options as `interp run dark-matter`)
    from experiments.cli import script_main

    script_main("dark-matter")
