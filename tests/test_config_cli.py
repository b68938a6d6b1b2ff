"""The run commands' flags are generated from the config dataclasses (experiments/config_cli.py)."""

import json
from dataclasses import dataclass, field

import pytest
import typer
from typer.testing import CliRunner

from experiments.cli import RUNS, app
from experiments.config_cli import RunSpec, add_run_command, config_options, field_comments, parse_value, with_overrides


@dataclass(frozen=True)
class Inner:
    steps: int = 100  # optimiser steps
    lr: float | None = None


@dataclass(frozen=True)
class Toy:
    analysis: str = "toy"
    # the widths to train,
    # one SAE each
    widths: tuple[int, ...] = (1, 2)
    model: str | dict | None = None
    png: bool = True
    inner: Inner = field(default_factory=Inner)
    table: tuple[tuple[float, float], ...] = ((1.0, 2.0),)  # not a command-line type: no flag

    @classmethod
    def quick(cls):
        return cls(widths=(1,), inner=Inner(steps=5))


def run(config, out):  # the experiment's entry point, as the runner calls it
    raise AssertionError("not called in these tests")


def test_one_flag_per_simple_field_nested_included_with_the_comments_as_help():
    options = {o.flag: o for o in config_options(Toy)}
    assert list(options) == [
        "widths",
        "model",
        "png",
        "inner-steps",
        "inner-lr",
    ]  # analysis and the nested tuple skipped
    assert options["widths"].help == "the widths to train, one SAE each"
    assert options["inner-steps"].help == "optimiser steps" and options["inner-steps"].path == ("inner", "steps")
    assert field_comments(Inner) == {"steps": "optimiser steps"}


def test_values_parse_by_the_field_type():
    assert parse_value("576,2304", tuple[int, ...], "widths") == (576, 2304)
    assert parse_value("none", float | None, "lr") is None and parse_value("0.5", float | None, "lr") == 0.5
    assert parse_value('{"n_layers": 2}', str | dict | None, "model") == {"n_layers": 2}
    assert parse_value("smollm", str | dict | None, "model") == "smollm"
    with pytest.raises(typer.BadParameter, match="comma-separated ints"):
        parse_value("1,x", tuple[int, ...], "widths")
    with pytest.raises(typer.BadParameter, match="not a valid int"):
        parse_value("none", int, "steps")  # not optional: none is refused


def test_overrides_rebuild_nested_configs():
    config = with_overrides(Toy.quick(), config_options(Toy), {"inner_lr": "0.1", "widths": "3,4", "png": False})
    assert config == Toy(widths=(3, 4), png=False, inner=Inner(steps=5, lr=0.1))


def test_generated_command_prints_the_config_it_would_run(tmp_path):
    toy_app = typer.Typer()
    called = []
    import sys

    sys.modules[__name__].run = lambda config, out: called.append(config)
    add_run_command(
        toy_app, "toy", RunSpec(__name__, "Toy", "A toy.", "tiny"), lambda fn, config, out, overwrite: fn(config, out)
    )
    result = CliRunner().invoke(toy_app, ["--quick", "--inner-steps", "7", "--print-config"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["inner"] == {"steps": 7, "lr": None} and not called
    result = CliRunner().invoke(toy_app, ["--out", str(tmp_path), "--no-png"])
    assert result.exit_code == 0, result.output
    assert called == [Toy(png=False)]
    bad = CliRunner().invoke(toy_app, ["--widths", "a"])
    assert bad.exit_code == 2 and "--widths" in bad.output


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_investigation_has_its_run_command(name):
    result = CliRunner().invoke(app, ["run", name, "--print-config"])
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.output), dict)
