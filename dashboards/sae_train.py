"""The page of an `interp sae train` run: the evaluation (DIR/eval, rewritten by `interp sae eval`), then the defaults."""

from __future__ import annotations

from dashboards.sae_eval import evaluation_sections
from dashboards.sections import Section, default_sections, register_sections
from interp.results import ResultsDir


@register_sections("sae_train")
def sae_train_sections(run: ResultsDir) -> list[Section]:
    output_site = run.record()["config"].get("output_site")
    return [*evaluation_sections(run.path / "eval", transcoder_site=output_site), *default_sections(run)]
