"""What every `interp` command shares: one-line user errors with exit code 2, the checks run before any work
(positive counts, a writable --out), and joining a torchrun process group."""

from __future__ import annotations

from pathlib import Path

import typer

MODEL_HELP = "None: the bundled SmolLM2-135M-Instruct; else a .gguf file, a local HF directory, or a TransformerLens name in the local HF cache."


def fail(exc: Exception | str) -> None:
    text = str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and getattr(exc, "filename", None):
        text = f"{exc.filename}: {exc.strerror}"
    typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def user_errors():
    from interp.errors import InterpError

    return (InterpError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def positive(**values: int) -> None:
    """Refuse a non-positive count before any work: one line naming the flag."""
    for name, value in values.items():
        if value < 1:
            fail(f"--{name.replace('_', '-')} {value}: must be a positive integer.")


def writable(out: Path, argument: str = "--out") -> None:
    from interp.errors import InterpError
    from interp.results import check_writable_dir

    try:
        check_writable_dir(out, argument)
    except InterpError as exc:
        fail(exc)


def clear_for_overwrite(out: Path) -> None:
    from interp.results import ResultsDir

    ResultsDir(out).clear()


def join_torchrun(command: str, plan: bool = False) -> int:
    """Under torchrun (WORLD_SIZE > 1): join the process group (gloo, the CPU, as the command runs without it); the
    rank. --plan predicts one process's run, so it is refused there."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and plan:
        fail(f"{command} --plan: plan as one process (without torchrun); the plan predicts one process's run.")
    from interp.distributed import init_from_env

    return init_from_env(cpu=True)[0]
