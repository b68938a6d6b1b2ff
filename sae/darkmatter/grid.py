"""The norm R^2 grid: held-out norm R^2 (||e||^2 ~ x A, no intercept) with a bootstrap CI, over widths x first positions dropped x
SAE training (short, converged) x k; and what each factor does to it."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor

from sae.darkmatter.data import DarkMatterSettings, Split
from sae.darkmatter.regression import fit_linear_map, total_variance
from sae.darkmatter.saes import (
    UNLIMITED,
    Budget,
    OutOfBudget,
    SaeSpec,
    sq_error_norms,
    trained_sae,
    training_record,
)
from sae.darkmatter.uncertainty import r2_with_ci
from sae.train import TrainConfig

GRID_FACTORS = ("width", "positions_dropped", "training", "k")
GRID_COLUMNS = [
    "width",
    "positions_dropped",
    "steps",
    "k",
    "norm_r2",
    "ci_low",
    "ci_high",
    "training",
    "converged",
    "fvu_change_last_20pct",
    "plateau_step",
    "fvu_change_at_plateau",
    "anneal_fvu_change",
    "fvu",
    "eval_seqs",
    "eval_tokens",
    "ci_doc_low",
    "ci_doc_high",
    "eval_docs",
    "norm_r2_store_heldout",
    "store_heldout_ci",
    "norm_r2_extra_heldout",
    "extra_heldout_ci",
    "status",
]


class GridCell(NamedTuple):
    training: str  # "short" or "converged"
    width: int
    k: int


def grid_cells(config: DarkMatterSettings) -> list[GridCell]:
    """Every cell in the order they are trained: every short cell first (minutes), then the converged ones, the family's k first."""
    ks = sorted(config.grid_ks, key=lambda k: (k != config.k, k))
    return [
        GridCell(training, w, k) for training in ("short", "converged") for k in ks for w in sorted(config.grid_widths)
    ]


def cell_training(config: DarkMatterSettings, training: str) -> TrainConfig:
    return (config.grid_training or config.training) if training == "converged" else config.short_training


def norm_r2_grid(
    config: DarkMatterSettings,
    cache: Path,
    data: Split,
    budget: Budget = UNLIMITED,
    cells: list[GridCell] | None = None,
) -> pd.DataFrame:
    """Held-out norm R^2 with a bootstrap 95% CI over held-out sequences, for every cell (default: the whole grid).

    Each positions_dropped p fits its probe on the first grid_fit_tokens fit rows at positions >= p and is judged on every held-out
    row at positions >= p (the SAE itself is trained on all positions >= skip_positions, as the paper's SAEs are on all positions).
    A cell whose SAE is not trained within the budget gets a row per p with norm_r2 None and status saying how far its training got.
    """
    fit, held = data.fit, data.held
    fit_rows = {
        p: (fit.pos >= p).nonzero()[:, 0][: config.grid_fit_tokens] for p in sorted(config.grid_positions_dropped)
    }
    last = max(int(rows[-1]) for rows in fit_rows.values()) + 1
    rows = []
    for cell in cells or grid_cells(config):
        training = cell_training(config, cell.training)
        spec = SaeSpec(f"resid_L{config.layer}", cell.width, cell.k, training, config.seed)
        base = dict(width=cell.width, k=cell.k, training=cell.training)
        try:
            sae = trained_sae(cache / "saes", fit.x, spec, budget)
        except OutOfBudget:
            record = training_record(cache / "saes", fit.x, spec)
            status = f"missing: not trained within this invocation's budget ({record.steps} of at most {training.steps} steps checkpointed; rerun to resume)"
            rows += [
                dict(
                    base,
                    positions_dropped=p,
                    **record._asdict(),
                    norm_r2=None,
                    ci_low=None,
                    ci_high=None,
                    status=status,
                )
                for p in fit_rows
            ]
            continue
        record = training_record(cache / "saes", fit.x, spec)._asdict()
        sq_fit = sq_error_norms(sae, fit.x[:last])
        sides = _eval_sides(data)
        sq_eval = {name: sq_error_norms(sae, side.x) for name, side in sides.items()}
        fvu_eval = float(sq_eval["store"].sum()) / total_variance(held.x)
        for p, sel in fit_rows.items():
            probe = fit_linear_map(fit.x[sel], sq_fit[sel])
            ev = {name: side.pos >= p for name, side in sides.items()}
            pred = {name: probe.predict(side.x[ev[name]])[:, 0] for name, side in sides.items()}
            parts = {
                name: r2_with_ci(
                    sq_eval[name][ev[name]], pred[name], side.seq[ev[name]], n_boot=config.bootstrap, seed=config.seed
                )
                for name, side in sides.items()
            }
            # every held-out sequence, the store's and the extra ones (distinct cluster ids), judged together
            clusters = torch.cat(
                [side.seq[ev[name]] + offset for (name, side), offset in zip(sides.items(), _offsets(sides))]
            )
            value, low, high = r2_with_ci(
                torch.cat([sq_eval[name][ev[name]] for name in sides]),
                torch.cat(list(pred.values())),
                clusters,
                n_boot=config.bootstrap,
                seed=config.seed,
            )
            extra = {}
            if all(
                side.doc is not None for side in sides.values()
            ):  # documents span several sequences: the coarser clusters
                docs = torch.cat([side.doc[ev[name]] for name, side in sides.items()])
                _, doc_low, doc_high = r2_with_ci(
                    torch.cat([sq_eval[name][ev[name]] for name in sides]),
                    torch.cat(list(pred.values())),
                    docs,
                    n_boot=config.bootstrap,
                    seed=config.seed,
                )
                extra = dict(ci_doc_low=doc_low, ci_doc_high=doc_high, eval_docs=int(docs.unique().numel()))
            extra |= (
                dict(
                    norm_r2_store_heldout=parts["store"][0],
                    store_heldout_ci=list(parts["store"][1:]),
                    norm_r2_extra_heldout=parts["extra"][0],
                    extra_heldout_ci=list(parts["extra"][1:]),
                )
                if "extra" in sides
                else {}
            )
            rows.append(
                dict(
                    base,
                    positions_dropped=p,
                    **record,
                    norm_r2=value,
                    ci_low=low,
                    ci_high=high,
                    fvu=fvu_eval,
                    fit_tokens=len(sel),
                    eval_tokens=sum(int(e.sum()) for e in ev.values()),
                    eval_seqs=int(clusters.unique().numel()),
                    **extra,
                    status="done",
                )
            )
    return pd.DataFrame(rows)


class EvalSide(NamedTuple):
    x: Tensor
    pos: Tensor
    seq: Tensor
    doc: Tensor | None


def _eval_sides(data: Split) -> dict[str, EvalSide]:
    """The grid's held-out rows: the store's held-out sequences ("store") and, when loaded, the extra ones from past the store ("extra")."""
    sides = dict(store=EvalSide(data.held.x, data.held.pos, data.held.seq, data.held.doc))
    if data.extra is not None:
        sides["extra"] = EvalSide(data.extra.x, data.extra.pos, data.extra.seq, data.extra.doc)
    return sides


def _offsets(sides: dict[str, EvalSide]) -> list[int]:
    """Cluster-id offsets that keep each side's sequences distinct when the sides are pooled."""
    out, total = [], 0
    for side in sides.values():
        out.append(total)
        total += int(side.seq.max()) + 1
    return out


def grid_effects(grid: pd.DataFrame) -> pd.DataFrame:
    """What each factor of the grid does to norm R^2: for each factor and each pair of its levels (from the first level to each other one),
    the change in norm R^2 over the cells that agree on every other factor and have both levels measured (mean, min, max, how many pairs)."""
    done = grid[grid.status == "done"] if "status" in grid else grid
    rows = []
    for factor in GRID_FACTORS:
        others = [f for f in GRID_FACTORS if f != factor]
        levels = sorted(done[factor].unique(), key=lambda v: (v != "short", v) if factor == "training" else v)
        for level in levels[1:]:
            pairs = done[done[factor] == levels[0]].merge(
                done[done[factor] == level], on=others, suffixes=("_from", "_to")
            )
            if pairs.empty:
                continue
            change = pairs.norm_r2_to - pairs.norm_r2_from
            rows.append(
                dict(
                    factor=factor,
                    level_from=str(levels[0]),
                    level_to=str(level),
                    mean_change=float(change.mean()),
                    min_change=float(change.min()),
                    max_change=float(change.max()),
                    pairs=len(pairs),
                )
            )
    return pd.DataFrame(
        rows, columns=["factor", "level_from", "level_to", "mean_change", "min_change", "max_change", "pairs"]
    )


def grid_metrics(grid: pd.DataFrame) -> dict:
    """metrics.json's norm_r2_grid rows (JSON values, None for missing) and how many rows are missing."""
    columns = [c for c in GRID_COLUMNS if c in grid]
    return dict(
        norm_r2_grid=[
            {c: (None if pd.isna(v) else v) if not isinstance(v, (list, dict)) else v for c, v in row.items()}
            for row in grid[columns].to_dict("records")
        ],
        norm_r2_grid_missing=int((grid.status != "done").sum()),
    )


def norm_r2_on_more_tokens(
    config: DarkMatterSettings, cache: Path, data: Split, cell: GridCell, positions_dropped: int
) -> dict:
    """One grid cell's norm R^2 judged also on the fit rows its probe was not fit on (a sensitivity check for a CI wider than wanted).

    Those rows are held out for the probe but were seen by the SAE in training, so they are reported apart ("fit_unused") and pooled with the
    held-out rows ("pooled"); each with a bootstrap 95% CI over sequences. The probe and SAE are the grid's (cached: not retrained).
    """
    fit, held = data.fit, data.held
    spec = SaeSpec(f"resid_L{config.layer}", cell.width, cell.k, cell_training(config, cell.training), config.seed)
    sae = trained_sae(cache / "saes", fit.x, spec)
    at_p = (fit.pos >= positions_dropped).nonzero()[:, 0]
    probe_rows, unused = at_p[: config.grid_fit_tokens], at_p[config.grid_fit_tokens :]
    probe = fit_linear_map(fit.x[probe_rows], sq_error_norms(sae, fit.x[probe_rows]))
    per_seq = config.seq_len - config.skip_positions
    ev = held.pos >= positions_dropped
    sides = dict(held_out=(held.x[ev], held.seq[ev]), fit_unused=(fit.x[unused], unused // per_seq))
    sq = {name: sq_error_norms(sae, x) for name, (x, _) in sides.items()}
    pred = {name: probe.predict(x)[:, 0] for name, (x, _) in sides.items()}
    out = dict(width=cell.width, k=cell.k, training=cell.training, positions_dropped=positions_dropped)
    for name in sides:
        value, low, high = r2_with_ci(sq[name], pred[name], sides[name][1], n_boot=config.bootstrap, seed=config.seed)
        out |= {name: value, f"{name}_ci": [low, high], f"{name}_tokens": len(sq[name])}
    clusters = torch.cat(
        [sides["held_out"][1], sides["fit_unused"][1] + int(held.seq.max()) + 1]
    )  # distinct ids: held-out and fit sequences
    value, low, high = r2_with_ci(
        torch.cat(list(sq.values())),
        torch.cat(list(pred.values())),
        clusters,
        n_boot=config.bootstrap,
        seed=config.seed,
    )
    return out | dict(
        pooled=value, pooled_ci=[low, high], pooled_tokens=out["held_out_tokens"] + out["fit_unused_tokens"]
    )
