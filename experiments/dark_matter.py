"""Dark matter of SAEs (Engels, Riggs, Tegmark 2024, arXiv 2410.14670): config in, results dir out.

    from experiments.dark_matter import DarkMatterConfig, run
    run(DarkMatterConfig.quick(), Path("results/dark-matter-quick"))

The activation store and every SAE live under `cache_dir` (default: the toolkit cache), keyed by what
determines them, so a second run with the same settings reuses them and a killed run resumes (the store
and each SAE's training restart from their last shard / checkpoint). SAEs train on the fit tokens only;
every number is measured on the held-out tokens. Activations stay in the store's dtype in memory (float16
for the full run: 512k tokens x 4 sites is 2.4 GB) and are cast to float32/float64 a chunk at a time.

Stages, in order: the store; the norm R^2 grid (widths x first positions dropped x training x k, each with
a bootstrap CI over held-out sequences); the CE shares (with CIs) at the grid widths; the family of SAEs
trained to convergence and every per-width analysis. `budget_minutes` bounds one invocation: past it the
run writes what it has (the grid's missing cells and the missing stages are listed) and a rerun resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from dashboards import build_dashboard
from interp.errors import InterpError
from interp.models import cache_root, load_model
from interp.results import ResultsDir
from interp.store import build_store
from interp.threads import torch_threads
from sae.activations import TensorBatches
from sae.darkmatter import (
    SyntheticSpec, ce_shares, cross_width_norms, decompose_error, fit_power_law, fvu, improvement_shares, learned_feature_fraction, nonlinear_fvu_with_inputs,
    norm_baselines, norm_probe_variants, pursuit_reconstruction, regression_r2, spliced_losses, synthetic_check,
)
from sae.darkmatter.claims import claims_table
from sae.darkmatter.regression import fit_linear_map, total_variance
from sae.darkmatter.uncertainty import ce_shares_with_ci, r2_with_ci
from sae.darkmatter.figures import decomposition_figure, norm_r2_grid_figure, norm_scatter_figure, scaling_figure
from sae.io import load_sae
from sae.models import Sae, TopKConfig
from sae.sparse_ops import sparse_decode
from sae.train import TrainConfig, train_sae, training_summary

ROWS_PER_CHUNK = 8192


@dataclass(frozen=True)
class DarkMatterConfig:
    analysis: str = "dark_matter"
    model: str | dict | None = None  # anything interp.load_model takes; None: the bundled SmolLM2-135M-Instruct
    layer: int = 6  # SAEs at blocks.{layer}.hook_resid_post; the store stops the model after this layer
    n_tokens: int = 524_288  # 4,096 sequences: 3,072 fit, 1,024 held out (half the previous run's 1M: the store is rebuilt in ~10 min at 1 thread)
    seq_len: int = 128
    store_dtype: str = "float16"
    fit_fraction: float = 0.75  # of the sequences (a seeded random split): fit (SAE training, linear maps); the rest held out
    widths: tuple[int, ...] = (576, 1152, 2304, 4608, 9216)  # 16x at matched L0; measured 0.17-0.9 s per 4096-row step at 1 thread
    k: int = 32  # TopK: every width at the same L0
    skip_positions: int = 1  # the first position of each packed sequence is an attention sink (~7x the norm): left out, like the paper's BOS
    # the family's SAEs (and the grid's "converged" cells): constant lr after warm-up until the training FVU changes by < 1% over the last
    # 20% of the steps (checked every checkpoint, from 1,000 steps = 5 epochs on; at most `steps`), then annealed to 0 over 20% more steps.
    # 2,048-row batches: half the cost per step of the short schedule's 4,096.
    training: TrainConfig = field(default_factory=lambda: TrainConfig(steps=8000, batch_size=2048, lr=2e-3, warmup_steps=30, dead_after_tokens=400_000,
                                                                      checkpoint_every=100, until_converged=True, min_steps=1000))
    # the previous runs' schedule, the grid's "300 steps" cells: ~1.6 epochs of 780k fit tokens, lr above the width-scaled default because the run is short
    short_training: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=4096, lr=2e-3, warmup_steps=30, dead_after_tokens=400_000,
                                                                            checkpoint_every=50))
    # the grid's "converged" cells; None: `training` (the family's, so the grid's converged cells at k are the family's SAEs)
    grid_training: TrainConfig | None = None
    # the norm R^2 grid: widths x first positions dropped x training (short, converged) x k; each cell with a bootstrap CI over held-out sequences
    grid_widths: tuple[int, ...] = (576, 2304)
    grid_positions_dropped: tuple[int, ...] = (1, 16, 64)
    grid_ks: tuple[int, ...] = (32, 64)
    grid_fit_tokens: int = 131_072  # fit tokens of each grid cell's norm probe, the same for every positions_dropped (the paper: 150k)
    bootstrap: int = 1000  # replicates of every bootstrap CI
    budget_minutes: float | None = 110.0  # stop starting/continuing work after this long, write what is done (rerun to resume); None: no limit
    ce_minutes_per_width: float = 20.0  # a CE width (not interruptible) starts only with this much budget left; ~20 min for 512 sequences at 1 busy thread
    linear_fit_tokens: int = 262_144  # fit tokens (a fixed subset) the linear maps are fit on: bounds the float64 working set
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
            (len(self.widths) < 3 or len(set(self.widths)) != len(self.widths), f"widths={self.widths}: give at least 3 distinct widths (the power law has 3 parameters)"),
            (self.k >= min(self.widths, default=0), f"k={self.k}: must be below the smallest width {min(self.widths, default=0)}"),
            (not 0 <= self.skip_positions < self.seq_len - 1, f"skip_positions={self.skip_positions}: must be in 0..seq_len - 2 = {self.seq_len - 2}"),
            (not 0 < self.fit_fraction < 1, f"fit_fraction={self.fit_fraction}: must be strictly between 0 and 1 (fit and held-out tokens are disjoint)"),
            (self.focus_width is not None and self.focus_width not in self.widths, f"focus_width={self.focus_width}: must be one of widths {self.widths}"),
            (self.linear_fit_tokens < 2, f"linear_fit_tokens={self.linear_fit_tokens}: must be at least 2"),
            (not 0 < self.feature_threshold < 1, f"feature_threshold={self.feature_threshold}: must be a cosine strictly between 0 and 1"),
            (any(not self.skip_positions <= p < self.seq_len - 1 for p in self.grid_positions_dropped),
             f"grid_positions_dropped={self.grid_positions_dropped}: each must be in skip_positions..seq_len - 2 = {self.skip_positions}..{self.seq_len - 2}"),
            (any(k >= min(self.grid_widths, default=0) for k in self.grid_ks), f"grid_ks={self.grid_ks}: each must be below the smallest grid width {min(self.grid_widths, default=0)}"),
            (self.grid_fit_tokens < 2, f"grid_fit_tokens={self.grid_fit_tokens}: must be at least 2"),
            (self.bootstrap < 100, f"bootstrap={self.bootstrap}: use at least 100 replicates for a 95% interval"),
        ]
        for bad, message in problems:
            if bad:
                raise InterpError(f"DarkMatterConfig({message}).")

    @classmethod
    def quick(cls) -> DarkMatterConfig:
        return cls(
            n_tokens=32_768, store_dtype="float32", fit_fraction=2 / 3, widths=(1152, 2304, 4608),
            # the family on the short schedule (minutes), which the grid's short cells share; the grid's converged cells on 512-row batches
            training=TrainConfig(steps=200, batch_size=1024, lr=2e-3, warmup_steps=20, dead_after_tokens=100_000, checkpoint_every=100),
            short_training=TrainConfig(steps=200, batch_size=1024, lr=2e-3, warmup_steps=20, dead_after_tokens=100_000, checkpoint_every=100),
            grid_training=TrainConfig(steps=300, batch_size=512, lr=2e-3, warmup_steps=20, dead_after_tokens=100_000, checkpoint_every=50, until_converged=True,
                                      min_steps=150),
            grid_widths=(1152,), grid_fit_tokens=8192, bootstrap=500, budget_minutes=None,  # one grid width: the quick run stays ~5 min
            pursuit_tokens=4096, downstream_seqs=8, synthetic=SyntheticSpec(n_tokens=8000),
        )


def _model_tag(spec) -> str:
    if spec is None:
        return "smollm2-135m-instruct"
    text = json.dumps(spec, sort_keys=True, default=str) if isinstance(spec, dict) else str(spec)
    return f"{Path(text).name[:40] if not isinstance(spec, dict) else 'config'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _cache(config: DarkMatterConfig) -> Path:
    root = Path(config.cache_dir).expanduser() if config.cache_dir else cache_root() / "dark_matter"
    return root / f"{_model_tag(config.model)}-L{config.layer}-{config.n_tokens}tok-seq{config.seq_len}-{config.store_dtype}"


class OutOfBudget(Exception):
    """The run's budget_minutes ran out; what is trained so far stays in its checkpoints."""


class Budget:
    """The invocation's wall-clock allowance (None: unlimited), checked between and, at checkpoints, inside SAE trainings."""

    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.perf_counter() + 60 * minutes

    def left(self) -> bool:
        return self.deadline is None or time.perf_counter() < self.deadline

    def check(self, what: str, need_minutes: float = 0.0) -> None:
        """Raise OutOfBudget unless `need_minutes` are left (a step that cannot stop part-way)."""
        if self.deadline is not None and time.perf_counter() + 60 * need_minutes > self.deadline:
            raise OutOfBudget(f"{what}: fewer than {need_minutes:g} minutes left" if need_minutes else what)


UNLIMITED = Budget(None)


def _sae_dir(folder: Path, acts: torch.Tensor, width: int, config: DarkMatterConfig, what: str, k: int, training: TrainConfig) -> tuple[Path, TopKConfig]:
    sae_cfg = TopKConfig(acts.shape[1], width, k=k, seed=config.seed)
    digest = hashlib.sha256(json.dumps([what, sae_cfg.to_dict(), asdict(training)], sort_keys=True, default=str).encode())
    digest.update(acts.contiguous().numpy().tobytes())  # the training rows themselves: a changed split or store never reuses a stale SAE
    return folder / f"{what}-W{width}-k{k}-{digest.hexdigest()[:10]}", sae_cfg


def _trained_sae(folder: Path, acts: torch.Tensor, width: int, config: DarkMatterConfig, what: str, *, k: int | None = None,
                 training: TrainConfig | None = None, budget: Budget = UNLIMITED) -> Sae:
    """A TopK SAE on `acts`, from `folder` when an identical one was trained before (or resumed from its checkpoints).

    k and training default to the family's (config.k, config.training). Past the budget, raises OutOfBudget at the next checkpoint.
    """
    k, training = k or config.k, training or config.training
    out, sae_cfg = _sae_dir(folder, acts, width, config, what, k, training)
    if (out / "sae").is_dir():
        return load_sae(out / "sae").eval()
    budget.check(f"training {out.name}")

    def stop_at_checkpoint(step: int, row: dict) -> None:
        if (step + 1) % training.checkpoint_every == 0 and not budget.left():
            raise OutOfBudget(f"training {out.name}: stopped at step {step + 1} (checkpointed)")

    return train_sae(sae_cfg, TensorBatches(acts, training.batch_size, seed=config.seed), training, out, on_step=stop_at_checkpoint).sae


def _training_record(folder: Path, acts: torch.Tensor, width: int, config: DarkMatterConfig, what: str, k: int, training: TrainConfig) -> dict:
    """Steps trained, the FVU change over the last 20% of them and whether that is < 1%, from the saved SAE (or its last checkpoint)."""
    out, _ = _sae_dir(folder, acts, width, config, what, k, training)
    from sae.io import read_sae_config  # noqa: PLC0415

    if (out / "sae").is_dir():
        saved = read_sae_config(out / "sae").get("interp_toolkit", {})
        if "steps_trained" in saved:
            return dict(steps=saved["steps_trained"], fvu_change_last_20pct=saved["fvu_change_last_window"], converged=saved["converged"],
                        plateau_step=saved.get("plateau_step"), fvu_change_at_plateau=saved.get("fvu_change_at_plateau"), anneal_fvu_change=saved.get("anneal_fvu_change"))
    checkpoints = sorted((out / "checkpoints").glob("step_*.pt"))
    if checkpoints:
        state = torch.load(checkpoints[-1], weights_only=False)
        summary = training_summary(state.get("fvu_by_step", []), training, state.get("plateau"))
        return dict(steps=summary["steps_trained"], fvu_change_last_20pct=summary["fvu_change_last_window"], converged=False)
    return dict(steps=0, fvu_change_last_20pct=None, converged=False)


@torch.no_grad()
def _reconstruct(sae: Sae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sae(x) in float32, each token's L0, and which latents fired at all."""
    outs, l0 = [], []
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for chunk in x.split(ROWS_PER_CHUNK):
        chunk = chunk.float()
        if hasattr(sae, "encode_topk"):  # k of d_sae latents: decode the k rows instead of a dense product
            values, indices = sae.encode_topk(chunk)
            values = values.relu()
            outs.append(sparse_decode(values, indices, sae.W_dec) + sae.b_dec)
            fired[indices[values > 0]] = True
            l0.append((values > 0).sum(-1))
        else:
            acts = sae.encode(chunk)
            outs.append(sae.decode(acts))
            fired |= (acts > 0).any(0)
            l0.append((acts > 0).sum(-1))
    return torch.cat(outs), torch.cat(l0), fired


def _tokens_for(model, config: DarkMatterConfig):
    """The corpus for the store: the default text, or seeded random ids for a config model without a tokenizer."""
    if model.tokenizer is not None:
        return None
    n_seqs = -(-config.n_tokens // config.seq_len)
    return torch.randint(0, model.cfg.d_vocab, (n_seqs, config.seq_len), generator=torch.Generator().manual_seed(0))  # fixed: the corpus, not the run's seed


def split_sequences(n_seqs: int, fit_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint fit and held-out sequence ids, a seeded random split: in stream order the held-out part would be other documents."""
    order = torch.randperm(n_seqs, generator=torch.Generator().manual_seed(seed))
    cut = int(n_seqs * fit_fraction)
    return order[:cut].sort().values, order[cut:].sort().values


def _load_split(model, config: DarkMatterConfig, cache: Path) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """Fit and held-out rows of each stored site, one site in memory at a time; attn/mlp only on the rows the linear maps use."""
    names = dict(x=f"blocks.{config.layer}.hook_resid_post", x_prev=f"blocks.{config.layer - 1}.hook_resid_post",
                 attn=f"blocks.{config.layer}.hook_attn_out", mlp=f"blocks.{config.layer}.hook_mlp_out")
    store = build_store(model, list(names.values()), _tokens_for(model, config), cache / "store", config.n_tokens, seq_len=config.seq_len,
                        dtype=getattr(torch, config.store_dtype))
    tokens = store.tokens().long()
    fit_seqs, held_seqs = split_sequences(len(tokens) // config.seq_len, config.fit_fraction, config.seed)
    positions = torch.arange(config.skip_positions, config.seq_len)
    fit_rows, held_rows = ((seqs[:, None] * config.seq_len + positions).reshape(-1) for seqs in (fit_seqs, held_seqs))
    linear_rows = fit_rows[: config.linear_fit_tokens]
    fit, held = dict(tokens=tokens[fit_rows]), dict(tokens=tokens[held_rows])
    # each row's position in its sequence, and for held-out rows which held-out sequence (0..) it is in: the grid drops early
    # positions and the bootstrap resamples whole sequences
    fit["pos"], held["pos"] = positions.repeat(len(fit_seqs)), positions.repeat(len(held_seqs))
    held["seq"] = torch.arange(len(held_seqs)).repeat_interleave(len(positions))
    for key, name in names.items():
        acts = store.activations(name)
        fit[key] = acts[linear_rows if key in ("attn", "mlp") else fit_rows]
        held[key] = acts[held_rows]
        del acts
    return fit, held, tokens, held_seqs


def _nonlinear_norms(decomposition, x: torch.Tensor, sae_out: torch.Tensor) -> torch.Tensor:
    """||e - xA|| per token, a chunk at a time (no float64 copy of the whole error)."""
    return torch.cat([decomposition.fit.split(xc, xc.double() - oc.double()).nonlinear.norm(dim=1)
                      for xc, oc in zip(x.split(ROWS_PER_CHUNK), sae_out.split(ROWS_PER_CHUNK))])


def _downstream_path(config, cache, held_seqs, sae, error_map) -> Path:
    seqs = held_seqs[: config.downstream_seqs]
    digest = hashlib.sha256(sae.W_dec.detach().numpy().tobytes() + error_map.weight.numpy().tobytes() + seqs.numpy().tobytes()).hexdigest()[:10]
    return cache / "downstream" / f"W{sae.cfg.d_sae}-{len(seqs)}seqs-from{config.skip_positions}-{digest}.parquet"


def _downstream_losses(model, config, cache, tokens, held_seqs, sae, error_map) -> pd.DataFrame:
    """Per-token CE of each spliced variant on the first `downstream_seqs` held-out sequences, cached by SAE, map and sequences (minutes per width)."""
    seqs = held_seqs[: config.downstream_seqs]
    path = _downstream_path(config, cache, held_seqs, sae, error_map)
    if path.exists():
        return pd.read_parquet(path)
    p = config.seq_len
    losses = spliced_losses(model, tokens.reshape(-1, p)[seqs], sae, f"blocks.{config.layer}.hook_resid_post", error_map, from_position=config.skip_positions)
    path.parent.mkdir(parents=True, exist_ok=True)
    losses.to_parquet(path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return losses


def _downstream(model, config, cache, tokens, held_seqs, held_x, sae, decomposition) -> tuple[dict, pd.DataFrame, float]:
    """CE shares (with bootstrap CIs over sequences) on the first held-out sequences, and the model-loss baseline for ||e||^2 on the same tokens."""
    p, skip = config.seq_len, config.skip_positions
    losses = _downstream_losses(model, config, cache, tokens, held_seqs, sae, decomposition.fit.error_map)
    # held_x holds held-out sequences in order, positions skip..p-1 each; the losses' rows are positions skip..p-2
    rows = torch.tensor(losses.seq.to_numpy(copy=True)) * (p - skip) + torch.tensor(losses.pos.to_numpy(copy=True)) - skip
    x = held_x[rows].float()
    sq_norm = (x - _reconstruct(sae, x)[0]).double().pow(2).sum(-1)
    loss = torch.tensor(losses.ce_clean.to_numpy(copy=True))
    half = losses.seq.to_numpy() < losses.seq.nunique() // 2
    model_loss_r2 = regression_r2(loss[half][:, None], sq_norm[half], loss[~half][:, None], sq_norm[~half])
    return ce_shares(losses) | ce_shares_with_ci(losses, n_boot=config.bootstrap, seed=config.seed), losses, model_loss_r2


@torch.no_grad()
def _sq_error_norms(sae: Sae, x: torch.Tensor) -> torch.Tensor:
    """||x - Sae(x)||^2 per row in float64, a chunk at a time."""
    return torch.cat([(xc.float() - _reconstruct(sae, xc)[0]).double().pow(2).sum(-1) for xc in x.split(ROWS_PER_CHUNK)])


def _grid_cells(config: DarkMatterConfig) -> list[tuple[str, int, int]]:
    """(training, width, k) in the order they are trained: every short cell first (minutes), then the converged ones, the family's k first."""
    ks = sorted(config.grid_ks, key=lambda k: (k != config.k, k))
    return [(training, w, k) for training in ("short", "converged") for k in ks for w in sorted(config.grid_widths)]


def norm_r2_grid(config: DarkMatterConfig, cache: Path, fit: dict, held: dict, budget: Budget = UNLIMITED,
                 cells: list[tuple[str, int, int]] | None = None) -> pd.DataFrame:
    """Held-out norm R^2 (||e||^2 ~ x A, no intercept) with a bootstrap 95% CI over held-out sequences, for every grid cell.

    Each positions_dropped p fits its probe on the first grid_fit_tokens fit rows at positions >= p and is judged on every held-out
    row at positions >= p (the SAE itself is trained on all positions >= skip_positions, as the paper's SAEs are on all positions).
    A cell whose SAE is not trained within the budget gets a row per p with norm_r2 None and status saying how far its training got.
    cells: (training, width, k) to measure, default every cell of the grid.
    """
    what = f"resid_L{config.layer}"
    fit_rows = {p: (fit["pos"] >= p).nonzero()[:, 0][: config.grid_fit_tokens] for p in sorted(config.grid_positions_dropped)}
    last = max(int(rows[-1]) for rows in fit_rows.values()) + 1
    rows = []
    for training_name, width, k in cells or _grid_cells(config):
        training = (config.grid_training or config.training) if training_name == "converged" else config.short_training
        base = dict(width=width, k=k, training=training_name)
        try:
            sae = _trained_sae(cache / "saes", fit["x"], width, config, what, k=k, training=training, budget=budget)
        except OutOfBudget:
            record = _training_record(cache / "saes", fit["x"], width, config, what, k, training)
            status = f"missing: not trained within this invocation's budget ({record['steps']} of at most {training.steps} steps checkpointed; rerun to resume)"
            rows += [dict(base, positions_dropped=p, **record, norm_r2=None, ci_low=None, ci_high=None, status=status) for p in fit_rows]
            continue
        record = _training_record(cache / "saes", fit["x"], width, config, what, k, training)
        sq_fit, sq_eval = _sq_error_norms(sae, fit["x"][:last]), _sq_error_norms(sae, held["x"])
        fvu_eval = float(sq_eval.sum()) / total_variance(held["x"])
        for p, sel in fit_rows.items():
            probe = fit_linear_map(fit["x"][sel], sq_fit[sel])
            ev = held["pos"] >= p
            value, low, high = r2_with_ci(sq_eval[ev], probe.predict(held["x"][ev])[:, 0], held["seq"][ev], n_boot=config.bootstrap, seed=config.seed)
            rows.append(dict(base, positions_dropped=p, **record, norm_r2=value, ci_low=low, ci_high=high, fvu=fvu_eval, fit_tokens=len(sel),
                             eval_tokens=int(ev.sum()), status="done"))
    return pd.DataFrame(rows)


GRID_FACTORS = ("width", "positions_dropped", "training", "k")


def grid_effects(grid: pd.DataFrame) -> pd.DataFrame:
    """What each factor of the grid does to norm R^2: for each factor and each pair of its levels (from the first level to each other one),
    the change in norm R^2 over the cells that agree on every other factor and have both levels measured (mean, min, max, how many pairs)."""
    done = grid[grid.status == "done"] if "status" in grid else grid
    rows = []
    for factor in GRID_FACTORS:
        others = [f for f in GRID_FACTORS if f != factor]
        levels = sorted(done[factor].unique(), key=lambda v: (v != "short", v) if factor == "training" else v)
        for level in levels[1:]:
            pairs = done[done[factor] == levels[0]].merge(done[done[factor] == level], on=others, suffixes=("_from", "_to"))
            if pairs.empty:
                continue
            change = pairs.norm_r2_to - pairs.norm_r2_from
            rows.append(dict(factor=factor, level_from=str(levels[0]), level_to=str(level), mean_change=float(change.mean()), min_change=float(change.min()),
                             max_change=float(change.max()), pairs=len(pairs)))
    return pd.DataFrame(rows, columns=["factor", "level_from", "level_to", "mean_change", "min_change", "max_change", "pairs"])


def _ce_widths(config: DarkMatterConfig) -> list[int]:
    """Widths whose CE shares are measured before the rest of the family is trained: the grid widths that are family widths."""
    return sorted(w for w in config.grid_widths if w in config.widths)


def _ce_stage(model, config, cache, fit, held, tokens, held_seqs, budget: Budget) -> dict[int, dict]:
    """CE shares with CIs at the _ce_widths, from the family SAE there (trained by the grid stage, which it shares with the grid's converged cells)."""
    out, n = {}, config.linear_fit_tokens
    for width in _ce_widths(config):
        budget.check(f"CE shares at width {width}")
        sae = _trained_sae(cache / "saes", fit["x"], width, config, f"resid_L{config.layer}", budget=budget)
        out_fit, out_eval = _reconstruct(sae, fit["x"][:n])[0], _reconstruct(sae, held["x"])[0]
        decomposition = decompose_error(fit["x"][:n], out_fit, held["x"], out_eval)._replace(parts=None)
        del out_fit, out_eval
        if not _downstream_path(config, cache, held_seqs, sae, decomposition.fit.error_map).exists():  # cached losses need no reserve
            budget.check(f"CE shares at width {width}", config.ce_minutes_per_width)
        shares, _, _ = _downstream(model, config, cache, tokens, held_seqs, held["x"], sae, decomposition)
        out[width] = dict(shares, fvu_sae=decomposition.metrics["fvu_sae"], fvu_sae_plus_linear=decomposition.metrics["fvu_sae_plus_linear"])
    return out


def _pursuit(config, x_fit, x_eval, sae) -> dict:
    """Nonlinear FVU after gradient pursuit (k = each token's SAE L0) against the SAE's own, on the same token subset."""
    half = config.pursuit_tokens // 2
    x_fit, x_eval = x_fit[:half].float(), x_eval[:half].float()
    (out_fit, k_fit, _), (out_eval, k_eval, _) = _reconstruct(sae, x_fit), _reconstruct(sae, x_eval)
    own = decompose_error(x_fit, out_fit, x_eval, out_eval).metrics
    pursued = decompose_error(x_fit, pursuit_reconstruction(sae, x_fit, k_fit), x_eval, pursuit_reconstruction(sae, x_eval, k_eval)).metrics
    return dict(pursuit_fvu_sae=pursued["fvu_sae"], sae_fvu_on_pursuit_tokens=own["fvu_sae"], pursuit_nonlinear_fvu=pursued["fvu_sae_plus_linear"],
                sae_nonlinear_fvu_on_pursuit_tokens=own["fvu_sae_plus_linear"], pursuit_nonlinear_fvu_change=pursued["fvu_sae_plus_linear"] - own["fvu_sae_plus_linear"])


def _earlier(config, fit, held, out_fit, out_eval, cache, width) -> dict:
    """The nonlinear error left when the error is regressed on x plus the previous layer's SAE output, or plus this layer's attn and MLP outputs."""
    prev_sae = _trained_sae(cache / "saes", fit["x_prev"], width, config, f"resid_L{config.layer - 1}")
    n = len(out_fit)
    prev_fit, prev_eval = _reconstruct(prev_sae, fit["x_prev"][:n])[0], _reconstruct(prev_sae, held["x_prev"])[0]
    x_fit, x_eval = fit["x"][:n], held["x"]
    e_fit, e_eval = x_fit.float() - out_fit, x_eval.float() - out_eval
    prev = nonlinear_fvu_with_inputs(x_fit, e_fit, prev_fit, x_eval, e_eval, prev_eval)
    same = nonlinear_fvu_with_inputs(x_fit, e_fit, torch.cat([fit["attn"], fit["mlp"]], 1), x_eval, e_eval, torch.cat([held["attn"], held["mlp"]], 1))
    return dict(earlier_layer_nonlinear_fvu_change=prev["nonlinear_fvu_change"], earlier_layer_nonlinear_fvu=prev["nonlinear_fvu_with_inputs"],
                attn_mlp_nonlinear_fvu_change=same["nonlinear_fvu_change"], attn_mlp_nonlinear_fvu=same["nonlinear_fvu_with_inputs"])


def _error_saes(config, cache, x_fit, out_fit, decomposition, width, saes) -> dict:
    """TopK SAEs of the same width and L0 trained on LinearError and on NonlinearError of the fit tokens: FVU on the held-out parts,
    and the fraction of their live latents that are features of the largest SAE on x but not of the SAE whose error they model."""
    metrics = {}
    largest, small = saes[max(saes)].W_dec.detach(), saes[width].W_dec.detach()
    for part in ("linear", "nonlinear"):
        fit_part = torch.cat([decomposition.fit.split(xc, xc.float() - oc)._asdict()[part].float()
                              for xc, oc in zip(x_fit.split(ROWS_PER_CHUNK), out_fit.split(ROWS_PER_CHUNK))])
        eval_part = decomposition.parts._asdict()[part].float()
        sae = _trained_sae(cache / "saes", fit_part, width, config, f"{part}_error_L{config.layer}")
        del fit_part
        recon, _, fired = _reconstruct(sae, eval_part)
        metrics[f"sae_on_{part}_fvu"] = fvu(eval_part, recon)
        found = learned_feature_fraction(sae.W_dec.detach(), largest, small, live=fired, threshold=config.feature_threshold)
        metrics |= {f"{part}_error_sae_{k}": v for k, v in found.items()}
    return metrics


def _width_analyses(model, config, cache, fit, held, tokens, held_seqs, saes, width, largest_eval) -> tuple[dict, dict, dict]:
    """Everything measured per width: the decomposition, norms, norm-probe variants, CE shares, pursuit, earlier layers, what the largest SAE adds."""
    n = config.linear_fit_tokens
    x_fit, x_eval = fit["x"][:n], held["x"]
    clock = [time.perf_counter()]

    def lap() -> float:  # seconds since the previous lap: each analysis's cost per width, for sizing runs
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2]

    (out_fit, l0_fit, _), (out_eval, l0_eval, _) = _reconstruct(saes[width], x_fit), _reconstruct(saes[width], x_eval)
    decomposition = decompose_error(x_fit, out_fit, x_eval, out_eval)
    error_norm = ((x_fit.float() - out_fit).norm(dim=1).double(), (x_eval.float() - out_eval).norm(dim=1).double())
    norms = dict(error=error_norm, nonlinear=(_nonlinear_norms(decomposition, x_fit, out_fit), decomposition.parts.nonlinear.norm(dim=1)), l0=(l0_fit, l0_eval))
    probes = norm_probe_variants(x_fit, error_norm[0], x_eval, error_norm[1], fit_sizes=(n // 16, n // 4)).assign(width=width)
    row = dict(width=width, l0=float(l0_eval.float().mean()), **decomposition.metrics, seconds_decomposition=lap())
    if width != max(saes):
        added = improvement_shares(decomposition.parts, largest_eval - out_eval)
        row |= {f"larger_sae_{k}": v for k, v in added.items()}
    focus = {}
    if width == (config.focus_width or min(config.widths)):
        focus = dict(norm_map=decomposition.fit.norm_map, error_saes=_error_saes(config, cache, x_fit, out_fit, decomposition, width, saes))
        row["seconds_error_saes"] = lap()
    decomposition = decomposition._replace(parts=None)  # 2 x [tokens, d] float64 not needed past here
    shares, losses, model_loss_r2 = _downstream(model, config, cache, tokens, held_seqs, x_eval, saes[width], decomposition)
    row |= {k: v for k, v in shares.items() if not isinstance(v, list)} | {f"{k}_{side}": v[i] for k, v in shares.items() if isinstance(v, list) for i, side in enumerate(("low", "high"))}
    row |= dict(model_loss_r2=model_loss_r2, seconds_downstream=lap())
    row |= dict(**_pursuit(config, fit["x"], held["x"], saes[width]), seconds_pursuit=lap())
    row |= dict(**_earlier(config, fit, held, out_fit, out_eval, cache, width), seconds_earlier_layer=lap())
    if focus:
        focus["losses"] = losses
    return dict(row, norm_probes=probes), norms, focus


def _by_width_lists(by_width: pd.DataFrame, columns: list[str]) -> dict[str, list]:
    """Columns of the per-width table as lists aligned with `widths` (None where a width has no value, e.g. the largest against itself)."""
    return {c: [None if pd.isna(v) else float(v) for v in by_width[c]] for c in columns if c in by_width}


PER_WIDTH = ["vector_r2", "norm_r2", "fvu_sae", "fvu_sae_plus_linear", "fvu_sae_plus_nonlinear", "linear_error_share", "ce_clean", "ce_sae", "ce_sae_plus_linear",
             "ce_sae_plus_nonlinear", "ce_increase_sae", "ce_share_linear", "ce_share_nonlinear", "model_loss_r2", "pursuit_nonlinear_fvu_change",
             "sae_nonlinear_fvu_on_pursuit_tokens", "pursuit_nonlinear_fvu", "earlier_layer_nonlinear_fvu_change", "earlier_layer_nonlinear_fvu",
             "attn_mlp_nonlinear_fvu_change", "larger_sae_share_nonlinear", "larger_sae_energy_share_nonlinear", "larger_sae_not_yet_learned_ratio_nonlinear",
             "larger_sae_not_yet_learned_ratio_linear", "larger_sae_improvement_of_error"]


def _ci_lists(widths: list[int], ce: dict[int, dict]) -> dict[str, list]:
    """Per width (aligned with `widths`, None where not measured): each CE share's [low, high] and the CE increase's."""
    keys = ("ce_share_nonlinear_ci", "ce_share_linear_ci", "ce_increase_sae_ci")
    return {key: [ce[w][key] if w in ce else None for w in widths] for key in keys}


def _grid_metrics(grid: pd.DataFrame) -> dict:
    columns = ["width", "positions_dropped", "steps", "k", "norm_r2", "ci_low", "ci_high", "training", "converged", "fvu_change_last_20pct", "plateau_step",
               "fvu_change_at_plateau", "anneal_fvu_change", "fvu", "status"]
    columns = [c for c in columns if c in grid]
    return dict(norm_r2_grid=[{c: (None if pd.isna(v) else v) if not isinstance(v, (list, dict)) else v for c, v in row.items()}
                              for row in grid[columns].to_dict("records")],
                norm_r2_grid_missing=int((grid.status != "done").sum()))


def _write_partial(results: ResultsDir, config: DarkMatterConfig, grid: pd.DataFrame, ce: dict[int, dict], stopped: str, seconds: dict) -> Path:
    """What an invocation that ran out of its budget has: the grid (cells not trained labelled) and the CE shares measured; rerun to resume."""
    widths = sorted(config.widths)
    ce_table = pd.DataFrame([dict(width=w, **{k: v for k, v in row.items() if not isinstance(v, list)},
                                  **{f"{k}_{side}": v[i] for k, v in row.items() if isinstance(v, list) for i, side in enumerate(("low", "high"))})
                             for w, row in sorted(ce.items())])
    missing = [f"grid cell W{r.width} k{r.k} {r.training}" for r in grid.drop_duplicates(["width", "k", "training"]).itertuples() if r.status != "done"]
    missing += [f"CE shares at width {w}" for w in _ce_widths(config) if w not in ce]
    missing.append("the family analyses (all widths trained to convergence, decomposition, baselines, pursuit, earlier layer, error SAEs, claims)")
    metrics = dict(partial=True, stopped_at=stopped, missing=missing, widths=widths, **_grid_metrics(grid),
                   ce_widths=sorted(ce), **{f"{k}": [ce[w][k] if w in ce else None for w in widths] for k in ("ce_share_nonlinear", "ce_share_linear", "ce_increase_sae")},
                   **_ci_lists(widths, ce), seconds=seconds)
    results.save_table("norm_r2_grid", grid)
    results.save_table("norm_r2_grid_effects", grid_effects(grid))
    if len(ce_table):
        results.save_table("ce_shares", ce_table)
    results.write_metrics(metrics)
    results.save_figures(dict(norm_r2_grid=norm_r2_grid_figure(grid)), png=config.png)
    build_dashboard(results)
    print(f"dark_matter: stopped at the budget ({stopped}); {len(missing)} parts missing. Rerun the same command to resume from the cache.")
    return results.path


def run(config: DarkMatterConfig, out: Path) -> Path:
    """Every analysis of the paper on one residual-stream layer, plus the synthetic check; writes the results dir at `out`.

    Stages, each cached: the store; the norm R^2 grid; the CE shares at the grid widths; the family of SAEs and every per-width analysis.
    With budget_minutes, an invocation that runs out writes a partial results dir (grid and CE shares so far, the rest listed as missing).
    """
    with torch_threads(config.threads):
        budget = Budget(config.budget_minutes)
        results = ResultsDir.create(out, config, analysis=config.analysis, title="Dark matter of SAEs: linear and nonlinear error", exist_ok=True)
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        model = load_model(config.model)
        cache = _cache(config)
        fit, held, tokens, held_seqs = _load_split(model, config, cache)
        seconds = dict(store=time.perf_counter() - start)
        # the grid's short cells and its converged cells at the family's k (the family's SAEs at those widths), then the CE shares there,
        # then the other converged cells: the order in which a budget-limited invocation gets furthest on both questions
        cells = _grid_cells(config)
        first = [c for c in cells if c[0] == "short" or c[2] == config.k]
        grid = norm_r2_grid(config, cache, fit, held, budget, first)
        seconds["grid"] = time.perf_counter() - start - sum(seconds.values())
        ce: dict[int, dict] = {}
        stopped = None
        try:
            if (grid.status != "done").any():
                raise OutOfBudget("the norm R^2 grid")
            ce = _ce_stage(model, config, cache, fit, held, tokens, held_seqs, budget)
            seconds["ce_shares"] = time.perf_counter() - start - sum(seconds.values())
        except OutOfBudget as stop:
            stopped = str(stop)
        grid = pd.concat([grid, norm_r2_grid(config, cache, fit, held, budget, [c for c in cells if c not in first])], ignore_index=True)
        seconds["grid_rest"] = time.perf_counter() - start - sum(seconds.values())
        try:
            if stopped or (grid.status != "done").any():
                raise OutOfBudget(stopped or "the norm R^2 grid")
            saes = {w: _trained_sae(cache / "saes", fit["x"], w, config, f"resid_L{config.layer}", budget=budget) for w in sorted(config.widths)}
        except OutOfBudget as stop:
            return _write_partial(results, config, grid, ce, str(stop), seconds)
        seconds["saes"] = time.perf_counter() - start - sum(seconds.values())
        width = config.focus_width or min(config.widths)
        largest_eval = _reconstruct(saes[max(saes)], held["x"])[0]
        rows, norms, probes, focus = [], {}, [], {}
        for w in tqdm(sorted(config.widths), desc="analyses by width", unit="width"):  # minutes per width on a CPU: show where the run is
            row, norms[w], found = _width_analyses(model, config, cache, fit, held, tokens, held_seqs, saes, w, largest_eval)
            probes.append(row.pop("norm_probes"))
            rows.append(row)
            focus = found or focus
        seconds["by_width"] = time.perf_counter() - start - sum(seconds.values())
        by_width = pd.DataFrame(rows)
        laws = pd.DataFrame([dict(series=s, **fit_power_law(by_width.width, by_width[s])._asdict()) for s in ("fvu_sae", "fvu_sae_plus_linear")])
        cross = cross_width_norms({w: n["error"] for w, n in norms.items()}, {w: n["nonlinear"] for w, n in norms.items()})
        n = config.linear_fit_tokens
        # L0 as a predictor only for SAEs whose L0 varies: a TopK SAE's is k on (nearly) every token, an R^2 of 0 by construction
        topk = hasattr(saes[width], "encode_topk")
        scalars = {"x_norm": (fit["x"][:n].float().norm(dim=1), held["x"].float().norm(dim=1))} | ({} if topk else {"l0": norms[width]["l0"]})
        baselines = norm_baselines(norms[width]["error"][0].pow(2), norms[width]["error"][1].pow(2), fit["x"][:n], held["x"], fit["tokens"][:n], held["tokens"], scalars)
        focus_row = by_width.set_index("width").loc[width]
        extra = [dict(predictor="model_loss", r2=focus_row.model_loss_r2)] + ([dict(predictor="l0", r2=None, note="not applicable: TopK, L0 = k on every token")] if topk else [])
        baselines = pd.concat([baselines, pd.DataFrame(extra)], ignore_index=True).assign(width=width)
        synthetic, synthetic_metrics = synthetic_check(config.synthetic)
        norm_probes = pd.concat(probes, ignore_index=True)

        metrics = dict(
            widths=sorted(config.widths), l0=by_width.l0.tolist(), **_by_width_lists(by_width, PER_WIDTH),
            power_law={row.series: dict(c=row.c, a=row.a, m=row.m) for row in laws.itertuples()},
            cross_width_norm_r2=float(cross.r2.mean()), nonlinear_norm_gain=float(cross.nonlinear_gain.mean()),
            norm_baseline_r2={k: None if pd.isna(v) else float(v) for k, v in baselines.set_index("predictor").r2.items()},
            norm_baseline_l0="not applicable (TopK: L0 = k on every token)" if topk else "measured",
            **_grid_metrics(grid), **_ci_lists(sorted(config.widths), {int(r.width): {f"{k}_ci": [getattr(r, f"{k}_ci_low"), getattr(r, f"{k}_ci_high")]
                                                                                    for k in ("ce_share_nonlinear", "ce_share_linear", "ce_increase_sae")}
                                                                          for r in by_width.itertuples()}),
            ce_share_nonlinear_ci_includes_zero=by_width.ce_share_nonlinear_ci_includes_zero.tolist(),
            ce_share_linear_ci_includes_zero=by_width.ce_share_linear_ci_includes_zero.tolist(),
            downstream_seqs=int(by_width.downstream_seqs.iloc[0]), downstream_tokens=int(by_width.downstream_tokens.iloc[0]),
            norm_r2_variants={f"{target}{'_with_intercept' if intercept else ''}_fit{tokens}": group.sort_values("width").r2.tolist()
                              for (target, intercept, tokens), group in norm_probes.groupby(["target", "intercept", "fit_tokens"])},
            focus_width=width, focus_nonlinear_fvu=float(focus_row.fvu_sae_plus_linear), focus_nonlinear_fvu_share=float(focus_row.fvu_sae_plus_linear / focus_row.fvu_sae),
            **{f"focus_{k}": float(focus_row[k]) for k in ("ce_share_linear", "ce_share_nonlinear", "pursuit_nonlinear_fvu_change", "sae_nonlinear_fvu_on_pursuit_tokens",
                                                            "earlier_layer_nonlinear_fvu_change", "attn_mlp_nonlinear_fvu_change", "larger_sae_not_yet_learned_ratio_nonlinear")},
            **focus["error_saes"], synthetic_corr=synthetic.to_dict(), synthetic_metrics=synthetic_metrics,
            fit_tokens=len(fit["x"]), linear_fit_tokens=min(n, len(fit["x"])), eval_tokens=len(held["x"]),
            seconds=dict(seconds, before_figures=time.perf_counter() - start),
        )
        claims = claims_table(metrics)
        metrics["claims_holding"] = int(claims.holds.sum())
        per_token = pd.DataFrame({f"error_norm_W{w}": nm["error"][1].numpy() for w, nm in norms.items()})
        per_token = per_token.assign(nonlinear_norm=norms[width]["nonlinear"][1].numpy(), token=held["tokens"].numpy(),
                                     error_sq_norm=per_token[f"error_norm_W{width}"] ** 2,
                                     predicted_error_sq_norm=focus["norm_map"].predict(held["x"])[:, 0].numpy())
        tables = dict(norm_r2_grid=grid, norm_r2_grid_effects=grid_effects(grid), by_width=by_width, power_law=laws, cross_width=cross, norm_baselines=baselines, norm_probes=norm_probes, downstream=focus["losses"],
                      synthetic_corr=synthetic.reset_index(names="estimate"), claims=claims, per_token=per_token)
        for name, frame in tables.items():
            results.save_table(name, frame)
        results.write_metrics(metrics)
        sample = per_token.sample(min(len(per_token), 3000), random_state=config.seed)
        small, large = min(config.widths), max(config.widths)
        results.save_figures(dict(
            norm_r2_grid=norm_r2_grid_figure(grid), scaling=scaling_figure(by_width, laws), decomposition=decomposition_figure(by_width),
            cross_width_scatter=norm_scatter_figure(sample, f"error_norm_W{small}", f"error_norm_W{large}", f"Per-token ||e||: width {small} against {large}"),
            norm_probe_scatter=norm_scatter_figure(sample, "predicted_error_sq_norm", "error_sq_norm", f"||e||^2 predicted linearly from x (width {width})"),
        ), png=config.png)
        build_dashboard(results)
        return results.path


def main() -> None:  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/dark-matter"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default=None)
    parser.add_argument("--layer", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--budget-minutes", dest="budget_minutes", type=float, default=None,
                        help="stop after this long, writing what is done (rerun to resume); default: the config's (full run: 110)")
    args = parser.parse_args()
    config = DarkMatterConfig.quick() if args.quick else DarkMatterConfig()
    for name in ("model", "layer", "threads", "budget_minutes"):
        if getattr(args, name) is not None:
            config = replace(config, **{name: getattr(args, name)})
    print(run(config, args.out))


if __name__ == "__main__":  # pragma: no cover
    main()
