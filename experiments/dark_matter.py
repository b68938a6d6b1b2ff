"""Dark matter of SAEs (Engels, Riggs, Tegmark 2024, arXiv 2410.14670): config in, results dir out.

    from experiments.dark_matter import DarkMatterConfig, run
    run(DarkMatterConfig.quick(), Path("results/dark-matter-quick"))

The activation store and every SAE live under `cache_dir` (default: the toolkit cache), keyed by what
determines them, so a second run with the same settings reuses them. SAEs train on the fit tokens only;
every number is measured on the held-out tokens.
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

from dashboards import build_dashboard
from interp.errors import InterpError
from interp.models import cache_root, load_model
from interp.results import ResultsDir
from interp.store import build_store
from interp.threads import torch_threads
from sae.activations import TensorBatches
from sae.darkmatter import (
    SyntheticSpec, ce_shares, cross_width_norms, decompose_error, fit_power_law, fvu, nonlinear_fvu_with_inputs, norm_baselines, pursuit_reconstruction,
    regression_r2, spliced_losses, synthetic_check,
)
from sae.darkmatter.claims import claims_table
from sae.darkmatter.figures import decomposition_figure, norm_scatter_figure, scaling_figure
from sae.io import load_sae
from sae.models import Sae, TopKConfig
from sae.train import TrainConfig, train_sae

ROWS_PER_CHUNK = 8192


@dataclass(frozen=True)
class DarkMatterConfig:
    analysis: str = "dark_matter"
    model: str | dict | None = None  # anything interp.load_model takes; None: the bundled SmolLM2-135M-Instruct
    layer: int = 6  # SAEs at blocks.{layer}.hook_resid_post
    n_tokens: int = 1_048_576
    seq_len: int = 128
    store_dtype: str = "float16"
    fit_fraction: float = 2 / 3  # of the sequences (a seeded random split): fit (SAE training, linear maps); the rest held out
    widths: tuple[int, ...] = (1152, 2304, 4608, 9216, 18432)
    k: int = 32  # TopK: every width at the same L0
    skip_positions: int = 1  # the first position of each packed sequence is an attention sink (~7x the norm): left out, like the paper's BOS
    training: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000, batch_size=4096, dead_after_tokens=2_000_000))
    focus_width: int | None = None  # width for the CE, pursuit, earlier-layer and error-SAE analyses; None: the smallest
    pursuit_tokens: int = 16_384  # half fit, half held out
    downstream_seqs: int = 64
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    cache_dir: str | None = None  # None: <toolkit cache>/dark_matter
    seed: int = 0
    threads: int = 2
    png: bool = True

    def __post_init__(self):
        problems = [
            (self.layer < 1, f"layer={self.layer}: must be >= 1 (the earlier-layer analysis needs layer - 1)"),
            (len(self.widths) < 3 or len(set(self.widths)) != len(self.widths), f"widths={self.widths}: give at least 3 distinct widths (the power law has 3 parameters)"),
            (self.k >= min(self.widths, default=0), f"k={self.k}: must be below the smallest width {min(self.widths, default=0)}"),
            (not 0 <= self.skip_positions < self.seq_len - 1, f"skip_positions={self.skip_positions}: must be in 0..seq_len - 2 = {self.seq_len - 2}"),
            (not 0 < self.fit_fraction < 1, f"fit_fraction={self.fit_fraction}: must be strictly between 0 and 1 (fit and held-out tokens are disjoint)"),
            (self.focus_width is not None and self.focus_width not in self.widths, f"focus_width={self.focus_width}: must be one of widths {self.widths}"),
        ]
        for bad, message in problems:
            if bad:
                raise InterpError(f"DarkMatterConfig({message}).")

    @classmethod
    def quick(cls) -> DarkMatterConfig:
        return cls(
            n_tokens=32_768, store_dtype="float32", widths=(1152, 2304, 4608),
            training=TrainConfig(steps=200, batch_size=1024, lr=2e-3, warmup_steps=20, dead_after_tokens=100_000, checkpoint_every=100),
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


def _trained_sae(folder: Path, acts: torch.Tensor, width: int, config: DarkMatterConfig, what: str) -> Sae:
    """A TopK SAE on `acts`, from `folder` when an identical one was trained before."""
    sae_cfg = TopKConfig(acts.shape[1], width, k=config.k, seed=config.seed)
    digest = hashlib.sha256(json.dumps([what, sae_cfg.to_dict(), asdict(config.training)], sort_keys=True, default=str).encode())
    digest.update(acts.contiguous().numpy().tobytes())  # the training rows themselves: a changed split or store never reuses a stale SAE
    key = digest.hexdigest()[:10]
    out = folder / f"{what}-W{width}-k{config.k}-{key}"
    if (out / "sae").is_dir():
        return load_sae(out / "sae").eval()
    return train_sae(sae_cfg, TensorBatches(acts, config.training.batch_size, seed=config.seed), config.training, out).sae


@torch.no_grad()
def _reconstruct(sae: Sae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    outs, l0 = [], []
    for chunk in x.split(ROWS_PER_CHUNK):
        acts = sae.encode(chunk)
        outs.append(sae.decode(acts))
        l0.append((acts > 0).sum(-1))
    return torch.cat(outs), torch.cat(l0)


def _tokens_for(model, config: DarkMatterConfig):
    """The corpus for the store: the default text, or seeded random ids for a config model without a tokenizer."""
    if model.tokenizer is not None:
        return None
    n_seqs = -(-config.n_tokens // config.seq_len)
    return torch.randint(0, model.cfg.d_vocab, (n_seqs, config.seq_len), generator=torch.Generator().manual_seed(0))  # fixed: the corpus, not the run's seed


def _load(model, config: DarkMatterConfig, cache: Path) -> dict[str, torch.Tensor]:
    names = dict(x=f"blocks.{config.layer}.hook_resid_post", x_prev=f"blocks.{config.layer - 1}.hook_resid_post",
                 attn=f"blocks.{config.layer}.hook_attn_out", mlp=f"blocks.{config.layer}.hook_mlp_out")
    store = build_store(model, list(names.values()), _tokens_for(model, config), cache / "store", config.n_tokens, seq_len=config.seq_len,
                        dtype=getattr(torch, config.store_dtype))
    data = {key: store.activations(name).float() for key, name in names.items()}
    data["tokens"] = store.tokens().long()
    return data


def split_sequences(n_seqs: int, fit_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint fit and held-out sequence ids, a seeded random split: in stream order the held-out part would be other documents."""
    order = torch.randperm(n_seqs, generator=torch.Generator().manual_seed(seed))
    cut = int(n_seqs * fit_fraction)
    return order[:cut].sort().values, order[cut:].sort().values


def _rows(data: dict[str, torch.Tensor], seqs: torch.Tensor, config: DarkMatterConfig) -> dict[str, torch.Tensor]:
    positions = torch.arange(config.skip_positions, config.seq_len)
    rows = (seqs[:, None] * config.seq_len + positions).reshape(-1)
    return {key: v[rows] for key, v in data.items()}


def _by_width(fit, held, saes) -> tuple[pd.DataFrame, dict, dict]:
    x_fit, x_eval = fit["x"], held["x"]
    rows, norms, per_width = [], {}, {}
    for width, sae in saes.items():
        out_fit, l0_fit = _reconstruct(sae, x_fit)
        out_eval, l0_eval = _reconstruct(sae, x_eval)
        result = decompose_error(x_fit, out_fit, x_eval, out_eval)
        nonlinear_fit = result.fit.split(x_fit, x_fit.double() - out_fit.double()).nonlinear
        norms[width] = dict(error=((x_fit - out_fit).double().norm(dim=1), (x_eval - out_eval).double().norm(dim=1)),
                            nonlinear=(nonlinear_fit.norm(dim=1), result.parts.nonlinear.norm(dim=1)), l0=(l0_fit, l0_eval))
        per_width[width] = dict(result=result, out_fit=out_fit, out_eval=out_eval, l0_fit=l0_fit, l0_eval=l0_eval)
        rows.append(dict(width=width, l0=float(l0_eval.float().mean()), **result.metrics))
    return pd.DataFrame(rows), norms, per_width


def _baselines(fit, held, norms) -> pd.DataFrame:
    frames = []
    for width, n in norms.items():
        sq_fit, sq_eval = n["error"][0].pow(2), n["error"][1].pow(2)
        scalars = {"l0": n["l0"], "x_norm": (fit["x"].norm(dim=1), held["x"].norm(dim=1))}
        frames.append(norm_baselines(sq_fit, sq_eval, fit["x"], held["x"], fit["tokens"], held["tokens"], scalars).assign(width=width))
    return pd.concat(frames, ignore_index=True)


def _downstream(model, config, data, held_seqs, sae, focus) -> tuple[dict, pd.DataFrame, float]:
    """CE of each spliced variant on the first held-out sequences, and the model-loss baseline for ||e||^2 on the same tokens."""
    p = config.seq_len
    seqs = held_seqs[: config.downstream_seqs]
    n_seqs = len(seqs)
    tokens = data["tokens"].reshape(-1, p)[seqs]
    losses = spliced_losses(model, tokens, sae, f"blocks.{config.layer}.hook_resid_post", focus["result"].fit.error_map, from_position=config.skip_positions)
    rows = seqs[torch.tensor(losses.seq.to_numpy(copy=True))] * p + torch.tensor(losses.pos.to_numpy(copy=True))
    sq_norm = (data["x"][rows] - _reconstruct(sae, data["x"][rows])[0]).double().pow(2).sum(-1)
    loss = torch.tensor(losses.ce_clean.to_numpy(copy=True))
    half = losses.seq.to_numpy() < n_seqs // 2
    model_loss_r2 = regression_r2(loss[half][:, None], sq_norm[half], loss[~half][:, None], sq_norm[~half])
    return ce_shares(losses), losses, model_loss_r2


def _pursuit(config, fit, held, sae, focus) -> dict:
    """Nonlinear FVU after gradient pursuit (k = each token's SAE L0) against the SAE's own, on the same token subset."""
    half = config.pursuit_tokens // 2
    x_fit, x_eval = fit["x"][:half], held["x"][:half]
    k_fit, k_eval = focus["l0_fit"][:half], focus["l0_eval"][:half]
    own = decompose_error(x_fit, focus["out_fit"][:half], x_eval, focus["out_eval"][:half]).metrics
    pursued = decompose_error(x_fit, pursuit_reconstruction(sae, x_fit, k_fit), x_eval, pursuit_reconstruction(sae, x_eval, k_eval)).metrics
    return dict(pursuit_fvu_sae=pursued["fvu_sae"], sae_fvu_on_pursuit_tokens=own["fvu_sae"], pursuit_nonlinear_fvu=pursued["fvu_sae_plus_linear"],
                sae_nonlinear_fvu_on_pursuit_tokens=own["fvu_sae_plus_linear"], pursuit_nonlinear_fvu_change=pursued["fvu_sae_plus_linear"] - own["fvu_sae_plus_linear"])


def _earlier(config, fit, held, focus, cache, width) -> dict:
    prev_sae = _trained_sae(cache / "saes", fit["x_prev"], width, config, f"resid_L{config.layer - 1}")
    prev_fit, _ = _reconstruct(prev_sae, fit["x_prev"])
    prev_eval, _ = _reconstruct(prev_sae, held["x_prev"])
    x_fit, x_eval = fit["x"], held["x"]
    e_fit, e_eval = x_fit.double() - focus["out_fit"].double(), x_eval.double() - focus["out_eval"].double()
    prev = nonlinear_fvu_with_inputs(x_fit, e_fit, prev_fit, x_eval, e_eval, prev_eval)
    same = nonlinear_fvu_with_inputs(x_fit, e_fit, torch.cat([fit["attn"], fit["mlp"]], 1), x_eval, e_eval,
                                     torch.cat([held["attn"], held["mlp"]], 1))
    return dict(earlier_layer_nonlinear_fvu_change=prev["nonlinear_fvu_change"], earlier_layer_nonlinear_fvu=prev["nonlinear_fvu_with_inputs"],
                attn_mlp_nonlinear_fvu_change=same["nonlinear_fvu_change"], attn_mlp_nonlinear_fvu=same["nonlinear_fvu_with_inputs"])


def _error_saes(config, cache, focus, width) -> dict:
    """TopK SAEs of the same width and L0 trained on LinearError and on NonlinearError of the fit tokens; FVU on held-out parts."""
    result = focus["result"]
    metrics = {}
    for part in ("linear", "nonlinear"):
        fit_part = result.fit.split(focus["x_fit"], focus["x_fit"].double() - focus["out_fit"].double())._asdict()[part].float()
        eval_part = result.parts._asdict()[part].float()
        sae = _trained_sae(cache / "saes", fit_part, width, config, f"{part}_error_L{config.layer}")
        metrics[f"sae_on_{part}_fvu"] = fvu(eval_part, _reconstruct(sae, eval_part)[0])
    return metrics


def run(config: DarkMatterConfig, out: Path) -> Path:
    """Every analysis of the paper on one residual-stream layer, plus the synthetic check; writes the results dir at `out`."""
    with torch_threads(config.threads):
        results = ResultsDir.create(out, config, analysis=config.analysis, title="Dark matter of SAEs: linear and nonlinear error", exist_ok=True)
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        model = load_model(config.model)
        cache = _cache(config)
        data = _load(model, config, cache)
        seconds = dict(store=time.perf_counter() - start)
        fit_seqs, held_seqs = split_sequences(len(data["tokens"]) // config.seq_len, config.fit_fraction, config.seed)
        fit, held = (_rows(data, seqs, config) for seqs in (fit_seqs, held_seqs))
        saes = {w: _trained_sae(cache / "saes", fit["x"], w, config, f"resid_L{config.layer}") for w in config.widths}
        seconds["saes"] = time.perf_counter() - start - seconds["store"]
        by_width, norms, per_width = _by_width(fit, held, saes)
        laws = pd.DataFrame([dict(series=s, **fit_power_law(by_width.width, by_width[s])._asdict()) for s in ("fvu_sae", "fvu_sae_plus_linear")])
        cross = cross_width_norms({w: n["error"] for w, n in norms.items()}, {w: n["nonlinear"] for w, n in norms.items()})
        baselines = _baselines(fit, held, norms)

        width = config.focus_width or min(config.widths)
        focus = dict(per_width[width], x_fit=fit["x"])
        mark = time.perf_counter()
        shares, losses, model_loss_r2 = _downstream(model, config, data, held_seqs, saes[width], focus)
        seconds["downstream"] = time.perf_counter() - mark
        baselines = pd.concat([baselines, pd.DataFrame([dict(predictor="model_loss", r2=model_loss_r2, width=width)])], ignore_index=True)
        focus_metrics = {**_pursuit(config, fit, held, saes[width], focus), **_earlier(config, fit, held, focus, cache, width), **_error_saes(config, cache, focus, width)}
        synthetic, synthetic_metrics = synthetic_check(config.synthetic)

        focus_row = by_width.set_index("width").loc[width]
        focus_baselines = baselines[baselines.width == width].set_index("predictor").r2
        metrics = dict(
            widths=list(config.widths), l0=by_width.l0.tolist(), **{k: by_width[k].tolist() for k in ("vector_r2", "norm_r2", "fvu_sae", "fvu_sae_plus_linear", "fvu_sae_plus_nonlinear")},
            power_law={row.series: dict(c=row.c, a=row.a, m=row.m) for row in laws.itertuples()},
            cross_width_norm_r2=float(cross.r2.mean()), nonlinear_norm_gain=float(cross.nonlinear_gain.mean()),
            norm_baseline_r2={k: float(v) for k, v in focus_baselines.items()},
            focus_width=width, focus_nonlinear_fvu=float(focus_row.fvu_sae_plus_linear), focus_nonlinear_fvu_share=float(focus_row.fvu_sae_plus_linear / focus_row.fvu_sae),
            **shares, **focus_metrics, synthetic_corr=synthetic.to_dict(), synthetic_metrics=synthetic_metrics,
            fit_tokens=len(fit["x"]), eval_tokens=len(held["x"]), seconds=dict(seconds, before_figures=time.perf_counter() - start),
        )
        claims = claims_table(metrics)
        metrics["claims_holding"] = int(claims.holds.sum())
        per_token = pd.DataFrame({f"error_norm_W{w}": n["error"][1].numpy() for w, n in norms.items()})
        per_token = per_token.assign(nonlinear_norm=norms[width]["nonlinear"][1].numpy(), token=held["tokens"].numpy(),
                                     error_sq_norm=per_token[f"error_norm_W{width}"] ** 2,
                                     predicted_error_sq_norm=focus["result"].fit.norm_map.predict(held["x"])[:, 0].numpy())
        tables = dict(by_width=by_width, power_law=laws, cross_width=cross, norm_baselines=baselines, downstream=losses,
                      synthetic_corr=synthetic.reset_index(names="estimate"), claims=claims, per_token=per_token)
        for name, frame in tables.items():
            results.save_table(name, frame)
        results.write_metrics(metrics)
        sample = per_token.sample(min(len(per_token), 3000), random_state=config.seed)
        small, large = min(config.widths), max(config.widths)
        results.save_figures(dict(
            scaling=scaling_figure(by_width, laws), decomposition=decomposition_figure(by_width),
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
    args = parser.parse_args()
    config = DarkMatterConfig.quick() if args.quick else DarkMatterConfig()
    if args.model is not None:
        config = replace(config, model=args.model)
    if args.layer is not None:
        config = replace(config, layer=args.layer)
    print(run(config, args.out))


if __name__ == "__main__":  # pragma: no cover
    main()
