"""The dark-matter pipeline's stages end to end: the grid, the CE shares, the family and its per-width analyses, into metrics, tables and
figures (a Report); a stage that runs out of the invocation's budget yields a partial Report that lists what is missing."""

from __future__ import annotations

import time
from typing import NamedTuple

import pandas as pd
from tqdm.auto import tqdm

from sae.darkmatter.claims import claims_table
from sae.darkmatter.decomposition import (
    cross_width_norms,
    fit_power_law,
    norm_baselines,
)
from sae.darkmatter.family import (
    Context,
    _split_ci,
    ce_at,
    ce_stage,
    ce_widths,
    earlier_layer_at,
    width_analyses,
)
from sae.darkmatter.figures import (
    decomposition_figure,
    norm_r2_grid_figure,
    norm_scatter_figure,
    scaling_figure,
)
from sae.darkmatter.grid import (
    GridCell,
    grid_cells,
    grid_effects,
    grid_metrics,
    norm_r2_grid,
    norm_r2_on_more_tokens,
)
from sae.darkmatter.saes import OutOfBudget, reconstruct, training_record
from sae.darkmatter.synthetic import synthetic_check

PER_WIDTH = [
    "vector_r2",
    "norm_r2",
    "norm_r2_ci",
    "fvu_sae",
    "fvu_sae_plus_linear",
    "fvu_sae_plus_nonlinear",
    "linear_error_share",
    "ce_clean",
    "ce_sae",
    "ce_sae_plus_linear",
    "ce_sae_plus_nonlinear",
    "ce_increase_sae",
    "ce_share_linear",
    "ce_share_nonlinear",
    "model_loss_r2",
    "pursuit_nonlinear_fvu_change",
    "sae_nonlinear_fvu_on_pursuit_tokens",
    "pursuit_nonlinear_fvu",
    "earlier_layer_nonlinear_fvu_change",
    "earlier_layer_nonlinear_fvu",
    "attn_mlp_nonlinear_fvu_change",
    "larger_sae_share_nonlinear",
    "larger_sae_energy_share_nonlinear",
    "larger_sae_not_yet_learned_ratio_nonlinear",
    "larger_sae_not_yet_learned_ratio_linear",
    "larger_sae_improvement_of_error",
]
CE_CI_KEYS = ("ce_share_nonlinear_ci", "ce_share_linear_ci", "ce_increase_sae_ci")


class Report(NamedTuple):
    metrics: dict
    tables: dict[str, pd.DataFrame]
    figures: dict  # name -> plotly figure
    stopped: str | None  # why a partial report stopped (None: complete)


def _by_width_lists(by_width: pd.DataFrame, columns: list[str]) -> dict[str, list]:
    """Columns of the per-width table as lists aligned with `widths` (None where a width has no value, e.g. the largest against itself);
    a column name_ci stands for the pair name_ci_low, name_ci_high."""
    out = {}
    for c in columns:
        if c.endswith("_ci") and f"{c}_low" in by_width:
            out[c] = [
                None if pd.isna(a) else [float(a), float(b)]
                for a, b in zip(by_width[f"{c}_low"], by_width[f"{c}_high"])
            ]
        elif c in by_width:
            out[c] = [None if pd.isna(v) else float(v) for v in by_width[c]]
    return out


def _ci_lists(widths: list[int], ce: dict[int, dict]) -> dict[str, list]:
    """Per width (aligned with `widths`, None where not measured): each CE share's [low, high] and the CE increase's."""
    return {key: [ce[w][key] if w in ce and ce[w].get(key) is not None else None for w in widths] for key in CE_CI_KEYS}


def _family_progress(ctx: Context) -> list[dict]:
    """Per family width and layer: steps trained so far (saved or checkpointed), the last FVU change, converged or not."""
    rows = []
    for layer, rows_x in ((ctx.config.layer, ctx.data.fit.x), (ctx.config.layer - 1, ctx.data.fit.x_prev)):
        for width in sorted(ctx.config.widths):
            record = training_record(ctx.cache / "saes", rows_x, ctx.family_spec(width, layer))
            rows.append(dict(layer=layer, width=width, **record._asdict()))
    return rows


def partial_report(ctx: Context, grid: pd.DataFrame, ce: dict[int, dict], stopped: str, seconds: dict) -> Report:
    """What an invocation that ran out of its budget before the family analyses has: the grid (cells not trained labelled), the CE shares
    measured and how far each family SAE's training got; rerun to resume."""
    widths = sorted(ctx.config.widths)
    ce_table = pd.DataFrame([dict(width=w, **_split_ci(row)) for w, row in sorted(ce.items())])
    missing = [
        f"grid cell W{r.width} k{r.k} {r.training}"
        for r in grid.drop_duplicates(["width", "k", "training"]).itertuples()
        if r.status != "done"
    ]
    missing += [f"CE shares at width {w}" for w in ce_widths(ctx.config) if w not in ce]
    missing.append(
        "the family analyses (all widths trained to convergence, decomposition, baselines, pursuit, earlier layer, error SAEs, claims)"
    )
    metrics = dict(
        partial=True,
        stopped_at=stopped,
        missing=missing,
        widths=widths,
        **grid_metrics(grid),
        family_training=_family_progress(ctx),
        ce_widths=sorted(ce),
        **{
            k: [ce[w][k] if w in ce else None for w in widths]
            for k in ("ce_share_nonlinear", "ce_share_linear", "ce_increase_sae")
        },
        **_ci_lists(widths, ce),
        seconds=seconds,
    )
    tables = dict(norm_r2_grid=grid, norm_r2_grid_effects=grid_effects(grid)) | (
        dict(ce_shares=ce_table) if len(ce_table) else {}
    )
    return Report(metrics, tables, dict(norm_r2_grid=norm_r2_grid_figure(grid)), stopped)


def grid_and_ce(ctx: Context, seconds: dict) -> tuple[pd.DataFrame, dict[int, dict], str | None]:
    """The grid's short cells and its converged cells at the family's k (the family's SAEs at those widths), then the CE shares there, then the
    other converged cells: the order in which a budget-limited invocation gets furthest on both questions."""
    start = time.perf_counter()
    cells = grid_cells(ctx.config)
    first = [c for c in cells if c.training == "short" or c.k == ctx.config.k]
    grid = norm_r2_grid(ctx.config, ctx.cache, ctx.data, ctx.budget, first)
    seconds["grid"] = time.perf_counter() - start
    ce, stopped = {}, None
    try:
        if (grid.status != "done").any():
            raise OutOfBudget("the norm R^2 grid")
        ce = ce_stage(ctx)
        seconds["ce_shares"] = time.perf_counter() - start - seconds["grid"]
    except OutOfBudget as stop:
        stopped = str(stop)
    rest = time.perf_counter()
    grid = pd.concat(
        [grid, norm_r2_grid(ctx.config, ctx.cache, ctx.data, ctx.budget, [c for c in cells if c not in first])],
        ignore_index=True,
    )
    seconds["grid_rest"] = time.perf_counter() - rest
    if not stopped and (grid.status != "done").any():
        stopped = "the norm R^2 grid"
    return grid, ce, stopped


def dark_matter_report(ctx: Context) -> Report:
    """Every stage, each cached: the store (already in ctx), the norm R^2 grid, the CE shares at the grid widths, the family of SAEs and every
    per-width analysis (CE shares whose spliced losses are not cached, each only with ce_minutes_per_width of budget left, and then the
    previous-layer SAEs not trained yet, last)."""
    config, data = ctx.config, ctx.data
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    grid, ce, stopped = grid_and_ce(ctx, seconds)
    try:
        if stopped:
            raise OutOfBudget(stopped)
        saes = {w: ctx.family_sae(w) for w in sorted(config.widths)}
    except OutOfBudget as stop:
        return partial_report(ctx, grid, ce, str(stop), seconds)
    seconds["saes"] = time.perf_counter() - start - sum(seconds.values())
    wide = (
        grid[(grid.status == "done") & ((grid.ci_high - grid.ci_low) / 2 > config.grid_ci_target)]
        if config.grid_ci_target
        else grid.iloc[:0]
    )
    more_tokens = pd.DataFrame(
        [
            norm_r2_on_more_tokens(config, ctx.cache, data, GridCell(r.training, r.width, r.k), r.positions_dropped)
            for r in wide.itertuples()
        ]
    )
    seconds["grid_more_tokens"] = time.perf_counter() - start - sum(seconds.values())
    width = config.focus_width or min(config.widths)
    largest_eval = reconstruct(saes[max(saes)], data.held.x).out
    rows, norms, probes, focus, missing = [], {}, [], None, []
    for w in tqdm(
        sorted(config.widths), desc="analyses by width", unit="width"
    ):  # minutes per width on a CPU: show where the run is
        # the focus width's spliced losses are a table of the run; other widths' CE and previous-layer SAEs not cached yet come after every width
        found = width_analyses(ctx, saes, w, largest_eval, ce=w == width, earlier=False)
        rows.append(found.row)
        norms[w], focus = found.norms, found.focus or focus
        probes.append(found.probes)
        missing += found.missing
    del largest_eval
    for row in rows:  # CE shares not cached yet: the slowest step (~20 min per width at 1 thread), last
        if "ce_share_nonlinear" not in row:
            try:
                found = ce_at(ctx, row["width"], saes[row["width"]])
                row |= _split_ci(found.shares) | dict(model_loss_r2=found.model_loss_r2)
            except OutOfBudget as stop:
                missing.append(f"CE shares at width {row['width']} ({stop})")
    for row in rows:  # the previous layer's SAEs not trained yet (trained within the budget, resumed from their checkpoints by a rerun)
        if "earlier_layer_nonlinear_fvu_change" not in row:
            try:
                row |= earlier_layer_at(ctx, saes[row["width"]], row["width"])
            except OutOfBudget as stop:
                missing.append(f"the earlier-layer analysis at width {row['width']} ({stop})")
    seconds["by_width"] = time.perf_counter() - start - sum(seconds.values())
    by_width = pd.DataFrame(rows)
    laws = pd.DataFrame(
        [
            dict(series=s, **fit_power_law(by_width.width, by_width[s])._asdict())
            for s in ("fvu_sae", "fvu_sae_plus_linear")
        ]
    )
    cross = cross_width_norms(
        {w: tuple(n.error) for w, n in norms.items()}, {w: tuple(n.nonlinear) for w, n in norms.items()}
    )
    n = config.linear_fit_tokens
    # L0 as a predictor only for SAEs whose L0 varies: a TopK SAE's is k on (nearly) every token, an R^2 of 0 by construction
    topk = hasattr(saes[width], "encode_topk")
    x_fit, x_eval = data.fit.x[:n], data.held.x
    scalars = {"x_norm": (x_fit.float().norm(dim=1), x_eval.float().norm(dim=1))} | (
        {} if topk else {"l0": tuple(norms[width].l0)}
    )
    baselines = norm_baselines(
        norms[width].error.fit.pow(2),
        norms[width].error.eval.pow(2),
        x_fit,
        x_eval,
        data.fit.tokens[:n],
        data.held.tokens,
        scalars,
    )
    focus_row = by_width.set_index("width").loc[width]
    extra = [dict(predictor="model_loss", r2=focus_row.get("model_loss_r2"))] + (
        [dict(predictor="l0", r2=None, note="not applicable: TopK, L0 = k on every token")] if topk else []
    )
    baselines = pd.concat([baselines, pd.DataFrame(extra)], ignore_index=True).assign(width=width)
    synthetic, synthetic_metrics = synthetic_check(config.synthetic)
    norm_probes = pd.concat(probes, ignore_index=True)
    measured_ce = (
        by_width.dropna(subset=["ce_share_nonlinear"]) if "ce_share_nonlinear" in by_width else by_width.iloc[:0]
    )
    metrics = dict(
        widths=sorted(config.widths),
        l0=by_width.l0.tolist(),
        **_by_width_lists(by_width, PER_WIDTH),
        family_training=_family_progress(ctx),
        power_law={row.series: dict(c=row.c, a=row.a, m=row.m) for row in laws.itertuples()},
        cross_width_norm_r2=float(cross.r2.mean()),
        nonlinear_norm_gain=float(cross.nonlinear_gain.mean()),
        norm_baseline_r2={k: None if pd.isna(v) else float(v) for k, v in baselines.set_index("predictor").r2.items()},
        norm_baseline_l0="not applicable (TopK: L0 = k on every token)" if topk else "measured",
        **grid_metrics(grid),
        **_by_width_lists(by_width, list(CE_CI_KEYS)),
        norm_r2_grid_more_tokens=more_tokens.to_dict("records"),
        **{
            f"{k}_includes_zero": [None if pd.isna(v) else bool(v) for v in by_width[f"{k}_includes_zero"]]
            for k in ("ce_share_nonlinear_ci", "ce_share_linear_ci")
            if f"{k}_includes_zero" in by_width
        },
        downstream_seqs=int(measured_ce.downstream_seqs.iloc[0]) if len(measured_ce) else 0,
        downstream_tokens=int(measured_ce.downstream_tokens.iloc[0]) if len(measured_ce) else 0,
        norm_r2_variants={
            f"{target}{'_with_intercept' if intercept else ''}_fit{tokens}": group.sort_values("width").r2.tolist()
            for (target, intercept, tokens), group in norm_probes.groupby(["target", "intercept", "fit_tokens"])
        },
        focus_width=width,
        focus_nonlinear_fvu=float(focus_row.fvu_sae_plus_linear),
        focus_nonlinear_fvu_share=float(focus_row.fvu_sae_plus_linear / focus_row.fvu_sae),
        **{
            f"focus_{k}": None if pd.isna(focus_row.get(k)) else float(focus_row[k])
            for k in (
                "ce_share_linear",
                "ce_share_nonlinear",
                "pursuit_nonlinear_fvu_change",
                "sae_nonlinear_fvu_on_pursuit_tokens",
                "earlier_layer_nonlinear_fvu_change",
                "attn_mlp_nonlinear_fvu_change",
                "larger_sae_not_yet_learned_ratio_nonlinear",
            )
        },
        **focus.error_saes,
        synthetic_corr=synthetic.to_dict(),
        synthetic_metrics=synthetic_metrics,
        fit_tokens=len(data.fit.x),
        linear_fit_tokens=min(n, len(data.fit.x)),
        eval_tokens=len(data.held.x),
        seconds=dict(seconds, before_figures=time.perf_counter() - start),
    )
    if missing:
        metrics |= dict(partial=True, stopped_at=missing[0], missing=missing)
    claims = claims_table(metrics)
    metrics["claims_holding"] = int(claims.holds.sum())
    per_token = pd.DataFrame({f"error_norm_W{w}": nm.error.eval.numpy() for w, nm in norms.items()})
    per_token = per_token.assign(
        nonlinear_norm=norms[width].nonlinear.eval.numpy(),
        token=data.held.tokens.numpy(),
        error_sq_norm=per_token[f"error_norm_W{width}"] ** 2,
        predicted_error_sq_norm=focus.norm_map.predict(x_eval)[:, 0].numpy(),
    )
    tables = dict(
        norm_r2_grid=grid,
        norm_r2_grid_effects=grid_effects(grid),
        by_width=by_width,
        power_law=laws,
        cross_width=cross,
        norm_baselines=baselines,
        norm_probes=norm_probes,
        synthetic_corr=synthetic.reset_index(names="estimate"),
        claims=claims,
        per_token=per_token,
    )
    if len(more_tokens):
        tables["norm_r2_grid_more_tokens"] = more_tokens.assign(
            **{c: more_tokens[c].map(str) for c in more_tokens if c.endswith("_ci")}
        )
    if focus.losses is not None:
        tables["downstream"] = focus.losses
    sample = per_token.sample(min(len(per_token), 3000), random_state=config.seed)
    small, large = min(config.widths), max(config.widths)
    figures = dict(
        norm_r2_grid=norm_r2_grid_figure(grid),
        scaling=scaling_figure(by_width, laws),
        decomposition=decomposition_figure(by_width),
        cross_width_scatter=norm_scatter_figure(
            sample, f"error_norm_W{small}", f"error_norm_W{large}", f"Per-token ||e||: width {small} against {large}"
        ),
        norm_probe_scatter=norm_scatter_figure(
            sample, "predicted_error_sq_norm", "error_sq_norm", f"||e||^2 predicted linearly from x (width {width})"
        ),
    )
    return Report(metrics, tables, figures, missing[0] if missing else None)
