"""Command-line options generated from an experiment's frozen Config dataclass.

Every field of a simple type becomes a flag (`steps` -> `--steps`), and every simple field of a nested
config dataclass one more (`train.steps` -> `--train-steps`), with the comment beside the field as its
help and the default (and the quick default) shown. Values are given as text and parsed by the field's
type: numbers, strings, `none` for optional fields, comma-separated lists for tuples, JSON for a model
given as a config dict. `interp run NAME` and `python -m experiments.X` are both built from this, so a
new config field is a new flag with nothing else to write.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import io
import json
import re
import tokenize
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Optional

import typer

from interp.errors import InterpError

SIMPLE = (int, float, str, bool)
SKIPPED_FIELDS = ("analysis",)  # names the kind of run (the dashboard it gets): not a setting


class RunSpec(NamedTuple):
    module: str  # the experiment script: a frozen `config` dataclass, `Config.quick()`, `run(config, out)`
    config: str  # the dataclass's name in that module
    help: str
    quick_help: str | None  # None: the config has no quick() settings
    aliases: tuple[tuple[str, str], ...] = ()  # (old flag, field flag): flags the script took before, kept working


class FieldOption(NamedTuple):
    path: tuple[str, ...]  # ("train", "steps")
    flag: str  # "train-steps"
    kind: Any  # the field's type
    help: str


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True
    return kind, False


def _is_simple(kind: Any) -> bool:
    """A type the command line can give: a simple scalar, an optional one, a tuple of them, or str-or-dict (a model spec)."""
    kind, _ = _unwrap_optional(kind)
    if kind in SIMPLE:
        return True
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0] in SIMPLE and args[0] is not bool
    if origin in (typing.Union, types.UnionType):
        return set(args) <= {str, dict}
    return False


def field_comments(cls: type) -> dict[str, str]:
    """The comment on each field's line (or the comment lines just above it) in the class's source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    above: list[str] = []
    field_at: dict[int, str] = {}  # line -> the field defined on it
    depth = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.NAME and depth == 0 and tok.start[1] == 4 and re.match(r"^\s{4}\w+\s*:", tok.line):
            field_at[tok.start[0]] = tok.string
            if above:
                comments[tok.string] = " ".join(above)
            above = []
        elif tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if tok.start[0] in field_at:
                comments[field_at[tok.start[0]]] = text  # the comment on the field's own line wins
            elif tok.line.strip().startswith("#") and depth == 0:
                above.append(text)
        elif tok.type == tokenize.NEWLINE and depth == 0 and tok.start[0] not in field_at:
            above = []
    return comments


def config_options(cls: type, prefix: tuple[str, ...] = ()) -> list[FieldOption]:
    """The flags of a config dataclass, nested config dataclasses included (one level)."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    options = []
    for f in dataclasses.fields(cls):
        if f.name in SKIPPED_FIELDS or not f.init:
            continue
        kind = hints.get(f.name, f.type)
        path = (*prefix, f.name)
        if _is_simple(kind):
            options.append(FieldOption(path, "-".join(path).replace("_", "-"), kind, comments.get(f.name, "")))
        elif dataclasses.is_dataclass(kind) and not prefix:
            options += config_options(kind, path)
    return options


def parse_value(text: str, kind: Any, flag: str) -> Any:
    """A flag's text as the field's type; a BadParameter naming the flag, the value and the type otherwise."""
    inner, optional = _unwrap_optional(kind)
    if optional and text.strip().lower() == "none":
        return None
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    try:
        if inner is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if inner in (int, float, str):
            return inner(text)
        if origin is tuple:
            return tuple(args[0](part.strip()) for part in text.split(",") if part.strip())
        if origin in (typing.Union, types.UnionType):  # str | dict: a model name or path, or a JSON config dict
            return json.loads(text) if text.lstrip().startswith("{") else text
    except (ValueError, json.JSONDecodeError):
        pass
    shown = getattr(inner, "__name__", str(inner)) if origin is not tuple else f"comma-separated {args[0].__name__}s"
    raise typer.BadParameter(
        f"{text!r} is not a valid {shown}" + (" (or none)" if optional else ""), param_hint=f"--{flag}"
    )


def with_overrides(config: Any, options: list[FieldOption], values: dict[str, Any]) -> Any:
    """`config` with each given flag's value put at its field (nested configs rebuilt with dataclasses.replace)."""
    by_parent: dict[tuple[str, ...], dict[str, Any]] = {}
    for opt in options:
        value = values.get(opt.flag.replace("-", "_"))
        if value is None:
            continue
        if opt.kind is not bool and not isinstance(value, bool):
            value = parse_value(value, opt.kind, opt.flag)
        by_parent.setdefault(opt.path[:-1], {})[opt.path[-1]] = value
    for parent, changes in sorted(by_parent.items(), key=lambda item: -len(item[0])):
        if parent:
            inner = getattr(config, parent[0])
            config = dataclasses.replace(config, **{parent[0]: dataclasses.replace(inner, **changes)})
        else:
            config = dataclasses.replace(config, **changes)
    return config


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if len(value) <= 8 else f"{len(value)} values"
    return "none" if value is None else str(value)


def _default_text(opt: FieldOption, default: Any, quick: Any) -> str:
    def at(config):
        for name in opt.path:
            config = getattr(config, name)
        return config

    text = f"default {_shown(at(default))}"
    if quick is not None and at(quick) != at(default):
        text += f"; quick {_shown(at(quick))}"
    return text


def add_run_command(run_app: typer.Typer, name: str, spec: RunSpec, runner: Callable[..., None]) -> None:
    """Register `interp run NAME`: --out, --quick, --overwrite, --print-config, and one flag per config field."""
    module = importlib.import_module(spec.module)
    cls = getattr(module, spec.config)
    default = cls()
    quick = cls.quick() if spec.quick_help is not None else None
    options = config_options(cls)
    aliases: dict[str, list[str]] = {}
    for old, new in spec.aliases:
        aliases.setdefault(new, []).append(f"--{old}")
    params = [
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Path,
            default=typer.Option(
                Path(f"results/{name}"), help="Results directory (one run: rerunning the same settings resumes it)."
            ),
        ),
        inspect.Parameter(
            "overwrite",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=bool,
            default=typer.Option(False, help="Replace the run already in --out (its files are deleted first)."),
        ),
        inspect.Parameter(
            "print_config",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=bool,
            default=typer.Option(False, help="Print the settings this command would run with, as JSON, and stop."),
        ),
    ]
    if quick is not None:
        params.insert(
            1,
            inspect.Parameter(
                "quick",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=bool,
                default=typer.Option(False, help=f"Start from the quick settings: {spec.quick_help}."),
            ),
        )
    for opt in options:
        help_text = f"{opt.help} ({_default_text(opt, default, quick)})".strip()
        if opt.kind is bool:
            flag = typer.Option(None, f"--{opt.flag}/--no-{opt.flag}", help=help_text, show_default=False)
            params.append(
                inspect.Parameter(
                    opt.flag.replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, annotation=Optional[bool], default=flag
                )
            )
        else:
            metavar = "TEXT" if typing.get_origin(_unwrap_optional(opt.kind)[0]) is not tuple else "A,B,..."
            flag = typer.Option(
                None, f"--{opt.flag}", *aliases.get(opt.flag, []), help=help_text, show_default=False, metavar=metavar
            )
            params.append(
                inspect.Parameter(
                    opt.flag.replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=flag
                )
            )

    def command(**values: Any) -> None:
        out, overwrite, print_config = values.pop("out"), values.pop("overwrite"), values.pop("print_config")
        config = quick if values.pop("quick", False) else default
        try:
            config = with_overrides(config, options, values)
        except InterpError as exc:  # the config's own checks (__post_init__): one line, exit 2, before any work
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        if print_config:
            from interp.results import to_jsonable

            typer.echo(json.dumps(to_jsonable(config, "config"), indent=1))
            return
        runner(module.run, config, out, overwrite)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = spec.help
    command.__name__ = f"run_{name.replace('-', '_')}"
    run_app.command(name, help=spec.help)(command)
