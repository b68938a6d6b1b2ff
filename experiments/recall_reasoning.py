"""Recall vs reasoning circuits (arXiv 2510.03366): config in, results dir out.

    from experiments.recall_reasoning import RecallReasoningConfig, run
    run(RecallReasoningConfig.quick(), Path("results/recall-reasoning-quick"))

The chosen model (any spec `interp.load_model` takes; None = the bundled SmolLM2-135M) and a small
synthetic model trained here get the same pipeline; metrics.json holds the chosen model's
headline numbers at the top level and the synthetic model's under "synthetic".
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path


from circuits.recall_reasoning.figures import run_figures, training_curve
from circuits.recall_reasoning.pipeline import AnalysisSettings, analyse
from circuits.recall_reasoning.synthetic import KnowledgeBase, SyntheticTraining, evaluate, prompt_sets, train
from circuits.recall_reasoning.tasks import FAMILIES, TASKS, build_prompts
from interp.models import load_model
from dashboards import build_dashboard
from interp.results import ResultsDir
from interp.threads import torch_threads


@dataclass(frozen=True)
class RecallReasoningConfig:
    analysis: str = "recall_reasoning"
    model: str | dict | None = None  # anything interp.load_model takes; None: the bundled SmolLM2-135M-Instruct
    families: tuple[str, ...] = tuple(FAMILIES)
    max_entities: int | None = None  # per family; None: all
    # Exact patching of all 300 units on every item ran at ~15 s per unit on the shared 2-core machine (over 2 h): AtP picks 24 candidates per task,
    # 48 items per task, every other layer for layer x position, neuron sets at the verdict's method only.
    analysis_settings: AnalysisSettings = field(default_factory=lambda: AnalysisSettings(
        exact_candidates=24, max_items=48, position_layers=tuple(range(0, 30, 2)), neuron_methods=("mean",)))
    synthetic: bool = True
    kb: KnowledgeBase = field(default_factory=KnowledgeBase)
    training: SyntheticTraining = field(default_factory=SyntheticTraining)
    synthetic_reasoning_items: int = 128
    synthetic_max_recall: int | None = None
    synthetic_settings: AnalysisSettings = field(default_factory=lambda: AnalysisSettings(set_size=2, neuron_set_size=10, screen=True, control_length=False))
    threads: int = 1  # torch threads; more than the free cores makes every small op wait on the others
    png: bool = True

    @classmethod
    def quick(cls) -> RecallReasoningConfig:
        return cls(
            max_entities=10,
            analysis_settings=AnalysisSettings(position_layers=(0, 4, 8, 12, 16, 20, 24, 29), single_length=True, max_items=12,
                                              exact_candidates=12, n_random=20, neuron_set_size=10, neuron_candidates=24, neuron_methods=("mean",)),
            training=SyntheticTraining(steps=1000),
            synthetic_reasoning_items=64, synthetic_max_recall=64,
            synthetic_settings=AnalysisSettings(set_size=2, neuron_set_size=10, control_length=False, position_layers=(), max_items=48),
        )


def _model_name(spec) -> str:
    return "SmolLM2-135M-Instruct" if spec is None else str(spec.get("model_name", "config model") if isinstance(spec, dict) else spec)


def run(config: RecallReasoningConfig, out: Path) -> Path:
    """Run the analysis on the chosen model and (config.synthetic) on the synthetic model; write the results dir at `out`."""
    with torch_threads(config.threads):
        results = ResultsDir.create(out, config, analysis=config.analysis, title="Recall vs reasoning circuits", exist_ok=True)
        start = time.perf_counter()
        model = load_model(config.model)
        name = _model_name(config.model)
        prompts, unpaired = {}, {}
        for task in TASKS:
            prompts[task], unpaired[task] = build_prompts(model, task, config.families, max_entities=config.max_entities)
        tables, metrics = analyse(model, prompts, config.analysis_settings, model_name=name, progress=True)
        metrics.update(n_recall_unpaired=unpaired["recall"], n_reasoning_unpaired=unpaired["reasoning"], seconds_model=time.perf_counter() - start)
        figures = run_figures(tables, "", name)
        del model
        if config.synthetic:
            start = time.perf_counter()
            synthetic_model, curve = train(config.kb, config.training, progress=True)
            seconds_training = time.perf_counter() - start
            synthetic_prompts = prompt_sets(config.kb, config.synthetic_reasoning_items, max_recall=config.synthetic_max_recall, seed=config.training.seed + 1)
            synthetic_tables, synthetic_metrics = analyse(synthetic_model, synthetic_prompts, config.synthetic_settings, model_name="the synthetic model")
            synthetic_tables["training"] = curve
            held_out = evaluate(synthetic_model, config.kb)
            synthetic_metrics.update(final_train_recall_acc=float(curve["recall_acc"].iloc[-1]), final_train_reasoning_acc=float(curve["reasoning_acc"].iloc[-1]),
                                     **{f"held_out_{name}": value for name, value in held_out.items()}, seconds_training=seconds_training,
                                     seconds=time.perf_counter() - start)
            metrics["synthetic"] = synthetic_metrics
            tables.update({f"synthetic_{k}": v for k, v in synthetic_tables.items()})
            figures.update(run_figures(synthetic_tables, "synthetic_", "synthetic model"))
            figures["synthetic_training"] = training_curve(curve)
        for table_name, frame in tables.items():
            results.save_table(table_name, frame)
        results.write_metrics(metrics, merge=False)
        results.save_figures(figures, png=config.png)
        build_dashboard(results)
        return results.path




def main() -> None:  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/recall-reasoning"))
    parser.add_argument("--model", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    config = RecallReasoningConfig.quick() if args.quick else RecallReasoningConfig()
    if args.model is not None:
        from dataclasses import replace

        config = replace(config, model=args.model)
    print(run(config, args.out))


if __name__ == "__main__":  # pragma: no cover
    main()
