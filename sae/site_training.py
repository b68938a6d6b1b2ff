"""`interp sae train`: an SAE (or transcoder) trained at one site of a model, from an activation store or on the fly
from tokens, evaluated on held-out tokens, written as a results directory (the loop itself is sae.train.train_sae)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from torch import Tensor

from interp.errors import InterpError, ShapeMismatchError

from sae.models import SaeConfig
from interp.distributed import rank_world
from sae.train import SaeTrainRun, TrainConfig, TrainResult, train_sae


def train_at_site(
    model,
    site: str,
    sae_cfg: SaeConfig,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    train_tokens: Tensor | None = None,
    store=None,
    eval_tokens: Tensor | None = None,
    progress: bool = True,
    output_site: str | None = None,
) -> TrainResult:
    """`interp sae train`: train at `site` from a store or on the fly from `train_tokens`, then evaluate on `eval_tokens`.

    A transcoder reads `site` (an MLP's input) and writes `output_site` (its output); it trains from train_tokens.

    Writes out_dir/{sae/, checkpoints/, training_curve.parquet, config.json, metrics.json, eval/}.
    """
    from interp.sites import as_site
    from sae.activations import ModelBatches, StoreBatches, site_width

    site = as_site(model, site).hook_name
    width = site_width(model, site)
    if width != sae_cfg.d_in:
        raise ShapeMismatchError(
            f"{type(sae_cfg).__name__}(d_in={sae_cfg.d_in}) does not match {site}, whose activations are {width} wide. Use d_in={width}."
        )
    if (store is None) == (train_tokens is None):
        raise InterpError(
            "train_at_site: pass exactly one of store= (an interp.store.ActivationStore) or train_tokens= ([seqs, pos] token ids)."
        )
    transcoder = hasattr(sae_cfg, "d_out")
    if transcoder != (output_site is not None):
        raise InterpError(
            f"train_at_site: output_site={output_site!r} with a {sae_cfg.architecture} SAE; a transcoder needs output_site "
            "(e.g. blocks.L.hook_mlp_out with site blocks.L.ln2.hook_normalized), an SAE takes none."
        )
    if transcoder:
        output_site = as_site(model, output_site).hook_name
        if site_width(model, output_site) != sae_cfg.d_out:
            raise ShapeMismatchError(
                f"{type(sae_cfg).__name__}(d_out={sae_cfg.d_out}) does not match {output_site}, whose activations are {site_width(model, output_site)} wide."
            )
        if store is not None:
            raise InterpError(
                "train_at_site: a transcoder trains on the fly from train_tokens= (the store holds one site per batch)."
            )
    batches = (
        StoreBatches(store, site, cfg.batch_size, seed=sae_cfg.seed)
        if store is not None
        else ModelBatches(
            model, train_tokens, (site, output_site) if transcoder else site, cfg.batch_size, seed=sae_cfg.seed
        )
    )
    result = train_sae(
        sae_cfg,
        batches,
        cfg,
        out_dir,
        progress=progress,
        hook_name=site,
        model_name=getattr(model.cfg, "model_name", None),
        hook_name_out=output_site,
    )
    out_dir = Path(out_dir)
    metrics = {"final_" + k: v for k, v in result.curve.iloc[-1].items()} if len(result.curve) else {}
    if eval_tokens is not None and rank_world()[0] == 0:
        from sae.evaluate import evaluate_saved

        metrics.update(evaluate_saved(out_dir, model, eval_tokens, probing=False, absorption=False).metrics)
    if rank_world()[0] == 0:
        from interp.results import ResultsDir

        # written when training is done, through ResultsDir like every run (so `interp dashboard` reads it); a resumed
        # run may have extended the steps, which check_resume allowed, so the previous record is replaced, not compared
        (out_dir / "config.json").unlink(missing_ok=True)
        record = SaeTrainRun(
            site=site,
            sae=sae_cfg.to_dict(),
            train=asdict(cfg),
            source="store" if store is not None else "model",
            output_site=output_site,
        )
        ResultsDir.create(out_dir, record, title=f"SAE at {site}").write_metrics(metrics, merge=False)
    return result
