"""`interp sae train | eval | latents`: sparse autoencoders from the command line (sae.site_training, sae.evaluate,
sae.latent_pass underneath)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from experiments.cli_common import MODEL_HELP, fail, join_torchrun, positive, user_errors, writable

sae_app = typer.Typer(help="Sparse autoencoders: train and evaluate.", no_args_is_help=True)


@sae_app.command("train")
def sae_train(
    out: Path = typer.Option(
        ..., help="Run directory (resumed from its checkpoints if they were written with the same settings)."
    ),
    site: str = typer.Option("blocks.6.hook_resid_post", help="Hook name to train on."),
    architecture: str = typer.Option(
        "topk", help="relu, topk, batchtopk, jumprelu, gated, matryoshka, transcoder, skip_transcoder."
    ),
    output_site: Optional[str] = typer.Option(
        None,
        help="transcoder / skip_transcoder: the site it writes (e.g. blocks.6.hook_mlp_out; --site is then the MLP input, blocks.6.ln2.hook_normalized).",
    ),
    d_sae: int = typer.Option(4608, help="Number of latents."),
    k: int = typer.Option(32, help="Active latents per token (topk, batchtopk, matryoshka, transcoders)."),
    n_tokens: int = typer.Option(1_000_000, help="Training tokens (from the store or the default corpus)."),
    batch_size: int = typer.Option(4096),
    store: Optional[Path] = typer.Option(
        None, help="An activation store from `interp cache`; default: on the fly from the corpus."
    ),
    eval_tokens: int = typer.Option(16_384, help="Held-out tokens for the evaluation after training."),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    seed: int = typer.Option(0, help="Seed of the SAE's initial weights and of the order of training batches."),
    checkpoint_every: int = typer.Option(100, help="Steps between checkpoints (a killed run resumes from the latest)."),
    overwrite: bool = typer.Option(
        False, help="Delete the run already in --out (checkpoints included) and start again."
    ),
    lr: Optional[float] = typer.Option(
        None, help="Learning rate; default 2e-4 / sqrt(d_sae / 2^14) (Gao et al. 2024)."
    ),
    plan: bool = typer.Option(
        False,
        "--plan",
        help="Print the steps, batches, predicted peak memory and time (from a three-step probe of the trainer, nothing written), then stop; refuse when the memory will not fit.",
    ),
    select_dtype: Optional[str] = typer.Option(
        None,
        help="topk: choose each token's k latents on scores in this dtype (bfloat16: about 2x faster steps on CPUs "
        "with AVX512-BF16 and on GPUs), then re-rank a shortlist exactly; values and gradients stay exact. "
        "Default: exact scores.",
    ),
) -> None:
    """Train a sparse autoencoder on one site, then evaluate it on held-out tokens."""
    positive(
        d_sae=d_sae,
        k=k,
        n_tokens=n_tokens,
        batch_size=batch_size,
        eval_tokens=eval_tokens,
        checkpoint_every=checkpoint_every,
    )
    if seed < 0:
        fail(f"--seed {seed}: must be an integer >= 0.")
    writable(out)
    if store is not None and not (store / "manifest.json").is_file():
        fail(
            f"--store {store}: no manifest.json there, so it is not an activation store; build one with `interp cache`."
        )
    from contextlib import nullcontext

    from interp.corpus import corpus_tokens
    from interp.distributed import init_from_env
    from interp.models import load_model, require_hooked
    from interp.store import open_store, store_lock
    from sae.activations import site_width
    from sae.models import make_config
    from sae.site_training import train_at_site
    from sae.train import TrainConfig

    if plan:
        join_torchrun("interp sae train", plan)  # refused under torchrun
    rank = init_from_env(cpu=True)[0]  # under torchrun: join the group; train_sae splits each batch over the ranks
    lock = store_lock if rank == 0 else lambda _: nullcontext()  # rank 0 holds the folder and writes it
    try:
        if out.is_dir() and (out / ".lock").exists():
            with lock(out):  # before loading anything: is another process training here?
                pass
        if overwrite and rank == 0 and not plan:  # a plan deletes nothing
            _clear_sae_dir(out)
        cfg = TrainConfig(
            steps=max(1, n_tokens // batch_size), batch_size=batch_size, checkpoint_every=checkpoint_every, lr=lr
        )
        fields = (
            {"k": k} if architecture in ("topk", "batchtopk", "matryoshka", "transcoder", "skip_transcoder") else {}
        )
        if select_dtype is not None:
            if architecture != "topk":
                fail(f"--select-dtype {select_dtype}: only the topk architecture chooses its latents so; drop it.")
            fields["select_dtype"] = select_dtype
        transcoder = architecture in ("transcoder", "skip_transcoder")
        if transcoder != (output_site is not None):
            fail(
                f"--output-site {output_site}: a transcoder needs it (the MLP output it writes), other architectures take none."
            )
        # the resume check runs before loading the model and the corpus; a transcoder's needs d_out, from the model
        if not transcoder:
            _check_sae_resume(out, cfg, architecture, d_sae, seed, site, fields)
        lm = require_hooked(load_model(model), "interp sae train")
        if transcoder:
            fields["d_out"] = site_width(lm, output_site)
            _check_sae_resume(out, cfg, architecture, d_sae, seed, site, fields)
        sae_cfg = make_config(architecture, d_in=site_width(lm, site), d_sae=d_sae, seed=seed, **fields)
        seq_len = 128
        n_train_seqs = -(-n_tokens // seq_len)
        source = (
            {"store": open_store(store, lm)} if store else {"train_tokens": corpus_tokens(lm, n_train_seqs, seq_len)}
        )
        if plan:
            _plan_sae_train(lm, site, sae_cfg, cfg, output_site, source)
            return
        held_out = corpus_tokens(lm, max(1, eval_tokens // seq_len), seq_len, skip_seqs=n_train_seqs)
        out.mkdir(parents=True, exist_ok=True)
        with lock(out):  # a second `sae train` on this folder is refused, naming this process
            result = train_at_site(lm, site, sae_cfg, cfg, out, eval_tokens=held_out, output_site=output_site, **source)
    except user_errors() as exc:
        fail(exc)
    typer.echo(f"sae: {result.out_dir}")


def _plan_sae_train(lm, site: str, sae_cfg, cfg, output_site: str | None, source: dict) -> None:
    """`interp sae train --plan`: the trainer probed on the run's own batches (as train_at_site reads them)."""
    from sae.activations import ModelBatches, StoreBatches
    from sae.plan import plan_sae_train

    if "store" in source:
        batches = StoreBatches(source["store"], site, cfg.batch_size, seed=sae_cfg.seed)
    else:
        sites = (site, output_site) if output_site else site
        batches = ModelBatches(lm, source["train_tokens"], sites, cfg.batch_size, seed=sae_cfg.seed)
    result = plan_sae_train(sae_cfg, batches, cfg, budget_flag="--batch-size")
    typer.echo(result.render())
    result.check()


def _check_sae_resume(out: Path, cfg, architecture: str, d_sae: int, seed: int, site: str, fields: dict) -> None:
    """Compare the latest checkpoint's settings with these (d_in, which the site fixes, is taken from the checkpoint)."""
    from sae.models import make_config
    from sae.checkpoints import check_resume, load_latest

    state = load_latest(out) if out.is_dir() else None
    if state is None:
        return
    sae_cfg = make_config(
        architecture, d_in=state.get("sae_config", {}).get("d_in", 1), d_sae=d_sae, seed=seed, **fields
    )
    check_resume(out, state, sae_cfg, cfg, site)


def _clear_sae_dir(out: Path) -> None:
    """--overwrite for `sae train`: clear a folder that holds an SAE run (config.json, checkpoints/ or sae/), refuse any other non-empty one."""
    import shutil

    from interp.errors import InterpError

    entries = [e for e in out.iterdir() if e.name != ".lock"] if out.is_dir() else []
    if not entries:
        return
    if not any((out / name).exists() for name in ("config.json", "checkpoints", "sae")):
        raise InterpError(
            f"--out {out}: a non-empty folder that holds no SAE run; --overwrite clears only run folders. Choose a new or empty folder."
        )
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


@sae_app.command("eval")
def sae_eval(
    directory: Path = typer.Argument(
        ..., help="A directory written by `interp sae train` (or holding an SAE in SAELens format)."
    ),
    n_tokens: int = typer.Option(16_384, help="Evaluation tokens."),
    skip_tokens: int = typer.Option(2_000_000, help="Start this far into the corpus, past the training tokens."),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    probing: bool = typer.Option(True, help="Sparse probing: k latents vs k raw dimensions on token labels."),
    absorption: bool = typer.Option(True, help="Feature absorption on the first-letter task (vocabulary words)."),
    dense_threshold: float = typer.Option(0.1, help="A latent active on more than this fraction of tokens is dense."),
) -> None:
    """L0, FVU, explained variance (mean- and geometric-median-centred), CE loss recovered (of the replaced MLP for a
    transcoder), KL, dead / dense fractions, density histogram, sparse probing, absorption, per-token errors."""
    positive(n_tokens=n_tokens)
    if not 0 < dense_threshold < 1:
        fail(f"--dense-threshold {dense_threshold}: must lie strictly between 0 and 1 (a fraction of tokens).")
    _check_sae_dir(directory, skip_tokens, "eval")
    from sae.evaluate import evaluate_saved

    try:
        lm, tokens = _model_and_corpus(model, n_tokens, skip_tokens)
        result = evaluate_saved(
            directory, lm, tokens, probing=probing, absorption=absorption, dense_threshold=dense_threshold
        )
        if (directory / "config.json").is_file():  # a run folder: its page shows the evaluation
            from dashboards import build_dashboard
            from interp.results import ResultsDir

            build_dashboard(ResultsDir.open(directory))
    except user_errors() as exc:
        fail(exc)
    for name, value in result.metrics.items():
        typer.echo(f"{name:<28} {value}")
    typer.echo(f"eval: {Path(directory) / 'eval'}")


@sae_app.command("latents")
def sae_latents(
    directory: Path = typer.Argument(
        ..., help="A directory written by `interp sae train` (or holding an SAE in SAELens format)."
    ),
    n_tokens: int = typer.Option(65_536, help="Corpus tokens the cached pass reads (resumed if killed)."),
    skip_tokens: int = typer.Option(2_000_000, help="Start this far into the corpus, past the training tokens."),
    n_latents: int = typer.Option(24, help="Latents given a card: half the most frequent, half a random sample."),
    latents: Optional[list[int]] = typer.Option(
        None, "--latent", help="Give these latents cards instead (repeatable)."
    ),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
) -> None:
    """Latent dashboard: an offline page with a searchable table of every latent and a card per chosen latent
    (top contexts with per-token activations, activation histogram, promoted / suppressed tokens, nearest latents)."""
    positive(n_tokens=n_tokens, n_latents=n_latents)
    _check_sae_dir(directory, skip_tokens, "latents")
    from experiments.latent_dashboard import build_latent_dashboard

    try:
        lm, tokens = _model_and_corpus(model, n_tokens, skip_tokens)
        page = build_latent_dashboard(directory, lm, tokens, latents=latents or None, n_latents=n_latents)
    except user_errors() as exc:
        fail(exc)
    typer.echo(f"latents: {page}")


def _check_sae_dir(directory: Path, skip_tokens: int, output: str) -> None:
    """`interp sae eval / latents` DIRECTORY checks: --skip-tokens >= 0, a folder, DIRECTORY/<output> writable."""
    if skip_tokens < 0:
        fail(f"--skip-tokens {skip_tokens}: must be an integer >= 0.")
    if not directory.is_dir():
        fail(f"DIRECTORY {directory}: not a folder; pass a folder written by `interp sae train`.")
    writable(directory / output, "DIRECTORY")


def _model_and_corpus(model: str | None, n_tokens: int, skip_tokens: int):
    """The model and n_tokens of the default corpus in sequences of 128, after the first skip_tokens."""
    from interp.corpus import corpus_tokens
    from interp.models import load_model

    lm = load_model(model)
    return lm, corpus_tokens(lm, max(1, n_tokens // 128), 128, skip_seqs=skip_tokens // 128)
