"""A TopK SAE on the default corpus: train, evaluate (L0, FVU, CE loss recovered), browse latents; config in, results dir out.

    python -m experiments.sae_topk --out results/sae            (the settings below)
    python -m experiments.sae_topk --out results/sae --quick    (what `make demo` runs, ~2 minutes at 1 thread)

The activation store and the SAE's training checkpoints live in the toolkit cache, keyed by what
determines them, so a killed run resumes (store from its last shard, SAE from its last checkpoint) and
a rerun with the same settings reuses both. Training reads the store's tokens; every number is measured
on held-out corpus sequences that come after them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from dashboards.sae import EVALUATION_KEYS
from interp.errors import InterpError

ANALYSIS = "sae"


@dataclass(frozen=True)
class SaeRunConfig:
    analysis: str = ANALYSIS
    model: str | None = None  # anything interp.load_model takes; None: the bundled SmolLM2-135M-Instruct
    site: str = "blocks.6.hook_resid_post"
    d_sae: int = 4608
    k: int = 32
    train_tokens: int = 1_048_576  # stored once, then read for as many epochs as steps x batch_size needs
    steps: int = 1000
    batch_size: int = 4096
    lr: float | None = None  # None: the trainer's width-scaled default
    seq_len: int = 128
    eval_seqs: int = 64  # held-out sequences (after the training tokens) for L0 / FVU / CE recovered
    latents_shown: int = 8  # latents whose top-activating contexts the page lists (the most frequent live ones)
    context_seqs: int = 128  # held-out sequences searched for those contexts
    seed: int = 0
    threads: int = 1
    png: bool = True

    def __post_init__(self):
        problems = [
            (self.k >= self.d_sae, f"k={self.k}: must be below d_sae={self.d_sae}"),
            (
                self.train_tokens < self.batch_size,
                f"train_tokens={self.train_tokens}: must be at least batch_size={self.batch_size}",
            ),
            (
                min(self.steps, self.batch_size, self.eval_seqs, self.context_seqs, self.seq_len) < 1,
                "steps, batch_size, eval_seqs, context_seqs and seq_len must be positive",
            ),
        ]
        for bad, message in problems:
            if bad:
                raise InterpError(f"SaeRunConfig({message}).")

    @classmethod
    def quick(cls) -> SaeRunConfig:
        """~2 minutes at 1 thread: 64k stored tokens, 300 steps of 1024 rows (~5 epochs), width 2304."""
        return cls(
            d_sae=2304,
            train_tokens=65_536,
            steps=300,
            batch_size=1024,
            lr=2e-3,
            eval_seqs=16,
            context_seqs=32,
            latents_shown=6,
        )


def _cache_dir(config: SaeRunConfig) -> Path:
    from interp.models import cache_root

    settings = {
        k: v
        for k, v in asdict(config).items()
        if k not in ("png", "threads", "latents_shown", "context_seqs", "eval_seqs")
    }  # what the store and SAE depend on
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_root() / "sae_runs" / key


def run(config: SaeRunConfig, out: Path) -> Path:
    """Train (or resume, or reuse) the SAE, evaluate it on held-out text, and write the results dir with its dashboard."""
    import plotly.graph_objects as go

    from dashboards import build_dashboard
    from interp.corpus import corpus_tokens
    from interp.models import load_model
    from interp.results import ResultsDir
    from interp.store import build_store
    from interp.threads import torch_threads
    from sae.activations import StoreBatches, site_width
    from sae.evaluate import density_histogram, evaluate_sae
    from sae.io import load_sae, save_sae
    from sae.latents import top_activating_contexts
    from sae.models import TopKConfig
    from sae.train import TrainConfig, train_sae

    with torch_threads(config.threads):
        model = load_model(config.model)
        cache = _cache_dir(config)
        n_train_seqs = -(-config.train_tokens // config.seq_len)
        store = build_store(
            model,
            [config.site],
            corpus_tokens(model, n_train_seqs, config.seq_len),
            cache / "store",
            n_train_seqs * config.seq_len,
            seq_len=config.seq_len,
        )
        sae_cfg = TopKConfig(site_width(model, config.site), config.d_sae, k=config.k, seed=config.seed)
        train_cfg = TrainConfig(
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.lr,
            warmup_steps=max(1, config.steps // 10),
            dead_after_tokens=min(1_000_000, config.steps * config.batch_size // 4),
            checkpoint_every=max(1, config.steps // 6),
        )
        if (cache / "train" / "sae").is_dir() and (
            cache / "train" / "training_curve.parquet"
        ).is_file():  # finished before: reuse
            sae, curve = (
                load_sae(cache / "train" / "sae").eval(),
                pd.read_parquet(cache / "train" / "training_curve.parquet"),
            )
        else:
            result = train_sae(
                sae_cfg,
                StoreBatches(store, config.site, config.batch_size, seed=config.seed),
                train_cfg,
                cache / "train",
                hook_name=config.site,
                model_name=getattr(model.cfg, "model_name", None),
            )
            sae, curve = result.sae.eval(), result.curve  # train_sae wrote sae/ and training_curve.parquet (atomically)
        held_out = corpus_tokens(model, config.eval_seqs + config.context_seqs, config.seq_len, skip_seqs=n_train_seqs)
        evaluation = evaluate_sae(model, sae, config.site, held_out[: config.eval_seqs])
        latents = evaluation.latents
        shown = (
            latents[latents.firing_count > 0].nlargest(config.latents_shown, "firing_count").latent.astype(int).tolist()
        )
        contexts = top_activating_contexts(model, sae, config.site, held_out[config.eval_seqs :], shown, top=5)

    results = ResultsDir.create(out, config, title="TopK sparse autoencoder", exist_ok=True)
    save_sae(sae, results.path / "sae", hook_name=config.site, model_name=getattr(model.cfg, "model_name", None))
    results.save_table("training_curve", curve)
    results.save_table("latent_density", latents)
    results.save_table("top_contexts", contexts)
    histogram = density_histogram(latents)
    finite = histogram[histogram.log10_density_low > float("-inf")]

    figures = {
        "training_fvu": go.Figure(
            go.Scatter(x=curve["tokens"], y=curve["fvu"], mode="lines", name="FVU")
        ).update_layout(
            title=dict(text="Training: fraction of variance unexplained (on training batches)"),
            xaxis=dict(title=dict(text="tokens")),
            yaxis=dict(title=dict(text="FVU"), type="log"),
        ),
        "latent_density": go.Figure(
            go.Bar(x=(finite.log10_density_low + finite.log10_density_high) / 2, y=finite.latents)
        ).update_layout(
            title=dict(
                text=f"Latent firing density on held-out tokens ({int(histogram.latents.iloc[0])} dead latents not drawn)"
            ),
            xaxis=dict(title=dict(text="log10 firing density")),
            yaxis=dict(title=dict(text="latents")),
        ),
    }
    results.save_figures(figures, png=config.png)
    metrics = {key: evaluation.metrics[key] for key in EVALUATION_KEYS}
    metrics.update(
        site=config.site,
        d_sae=config.d_sae,
        k=config.k,
        train_steps=config.steps,
        train_tokens_seen=config.steps * config.batch_size,
        latents_shown=shown,
        undertrained=config.steps * config.batch_size < 2_000_000,
    )
    results.write_metrics(metrics)
    build_dashboard(results)
    return results.path


if __name__ == "__main__":  # pragma: no cover  (the same command and options as `interp run sae`)
    from experiments.cli import script_main

    script_main("sae")
