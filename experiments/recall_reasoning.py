"""Recall vs reasoning circuits (arXiv 2510.03366): config in, results dir out.

    from experiments.recall_reasoning import RecallReasoningConfig, run
    run(RecallReasoningConfig.quick(), Path("results/recall-reasoning-quick"))

The chosen model (any spec `interp.load_model` takes; None = the bundled SmolLM2-135M) and a small
synthetic model trained here get the same held-out pipeline (circuits/recall_reasoning/pipeline.py);
metrics.json holds the chosen model's headline numbers at the top level, the synthetic model's under
"synthetic", and the planted-circuit / shuffled-label controls (circuits/recall_reasoning/controls.py)
under "controls" (planted_detection_rate and shuffled_detection_rate also at the top level).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from circuits.recall_reasoning.controls import PlantedSettings, control_metrics, run_control, train_reasoner
from circuits.recall_reasoning.figures import control_bars, run_figures, training_curve
from circuits.recall_reasoning.localisation import SET_RULE
from circuits.recall_reasoning.pipeline import DESIGN, AnalysisSettings, analyse
from circuits.recall_reasoning.synthetic import KnowledgeBase, SyntheticTraining, evaluate, prompt_sets, train
from circuits.recall_reasoning.tasks import FAMILIES, TASKS, build_prompts, reference_pool
from interp.errors import InterpError
from interp.fileio import atomic_path
from interp.models import bundled_tokenizer, cache_root, load_model
from dashboards import build_dashboard
from interp.results import ResultsDir
from interp.threads import torch_threads


@dataclass(frozen=True)
class RecallReasoningConfig:
    analysis: str = "recall_reasoning"
    model: str | dict | None = None  # anything interp.load_model takes; None: the bundled SmolLM2-135M-Instruct
    families: tuple[str, ...] = tuple(FAMILIES)
    max_entities: int | None = None  # per family; None: all
    reference_pool: bool = True  # template references also draw on every fill of each template (every entity, every fresh bridge); evaluated entities are kept out
    # Sized for the shared 2-core machine at one thread: every condition is an exact forward of all evaluated items, and there are
    # 3 + 2 x n_random conditions per method. AtP picks 16 candidates per task for exact patching; 12 items per task, half and stratum
    # (reasoning: answer in the prompt or not); mean and resample (zero is in the quick run); neuron sets and layer x position patching
    # are left to the quick run (neuron_set_size=0).
    analysis_settings: AnalysisSettings = field(
        default_factory=lambda: AnalysisSettings(
            exact_candidates=16,
            max_items=12,
            n_random=200,
            methods=("mean", "resample"),
            position_layers=(),
            neuron_set_size=0,
            neuron_methods=("mean",),
        )
    )
    synthetic: bool = True
    kb: KnowledgeBase = field(default_factory=KnowledgeBase)
    training: SyntheticTraining = field(default_factory=lambda: SyntheticTraining(steps=1000))
    synthetic_reasoning_items: int = 128
    synthetic_max_recall: int | None = None
    synthetic_settings: AnalysisSettings = field(
        default_factory=lambda: AnalysisSettings(set_size=2, neuron_set_size=10, screen=True, control_length=False)
    )
    controls: bool = True  # the planted-circuit (positive) and shuffled-label (negative) controls
    planted: PlantedSettings = field(default_factory=PlantedSettings)
    control_seeds: int = 20
    threads: int = 1  # torch threads; more than the free cores makes every small op wait on the others
    png: bool = True

    @classmethod
    def quick(cls) -> RecallReasoningConfig:
        return cls(
            max_entities=10,
            # reference cells of exactly 8 prompts (the full run: 8-32) and no half-cell check: reference forwards were most of the quick run
            analysis_settings=AnalysisSettings(
                position_layers=(0, 8, 16, 24, 29),
                single_length=True,
                max_items=8,
                exact_candidates=8,
                n_random=20,
                methods=("zero", "mean", "resample"),
                neuron_set_size=10,
                neuron_candidates=16,
                neuron_methods=("mean",),
                max_reference_prompts=8,
                reference_check=False,
            ),
            training=SyntheticTraining(steps=1000),
            synthetic_reasoning_items=64,
            synthetic_max_recall=64,
            synthetic_settings=AnalysisSettings(
                set_size=2, neuron_set_size=10, control_length=False, position_layers=(), max_items=24, n_random=50
            ),
            planted=replace(
                PlantedSettings(), n_reasoning_items=64, analysis=replace(PlantedSettings().analysis, n_random=100)
            ),
            control_seeds=2,
        )


def _model_name(spec) -> str:
    return (
        "SmolLM2-135M-Instruct"
        if spec is None
        else str(spec.get("model_name", "config model") if isinstance(spec, dict) else spec)
    )


def _load(spec) -> object:
    """load_model(spec); a model without a tokenizer (a random config) gets the bundled one, so the same prompts can be built."""
    model = load_model(spec)
    if model.tokenizer is None:
        tokenizer = bundled_tokenizer()
        if model.cfg.d_vocab < len(tokenizer):
            raise InterpError(
                f"RecallReasoningConfig(model=...): the model has no tokenizer and d_vocab={model.cfg.d_vocab} is below the bundled tokenizer's "
                f"{len(tokenizer)} tokens; give it d_vocab >= {len(tokenizer)} or a tokenizer."
            )
        model.set_tokenizer(tokenizer, default_padding_side="left")
    return model


def _reasoner(planted: PlantedSettings, results_path: Path):
    """The controls' reasoner, trained once per training setting and cached (it is the slow part); returns it and its curve."""
    key = hashlib.sha256(json.dumps(asdict(planted.training), sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_root() / "recall-reasoning" / f"planted-reasoner-{key}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=False)
        from circuits.recall_reasoning.synthetic import build_model

        model = build_model(planted.kb(0), planted.training)
        model.load_state_dict(saved["state"])
        return model.eval(), pd.DataFrame(saved["curve"])
    model, curve = train_reasoner(planted, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(dict(state=model.state_dict(), curve=curve.to_dict("list")), tmp)
    return model, curve


def _controls(config: RecallReasoningConfig, results_path: Path) -> tuple[dict[str, pd.DataFrame], dict]:
    """Both controls over config.control_seeds seeds; each seed's row is checkpointed in the results dir, so a rerun resumes."""
    start = time.perf_counter()
    reasoner, curve = _reasoner(config.planted, results_path)
    checkpoint = results_path / "controls_checkpoint.csv"
    done = pd.read_csv(checkpoint) if checkpoint.exists() else pd.DataFrame()
    frames = {}
    for shuffled in (False, True):
        have = done[done["shuffled"] == shuffled] if len(done) else done
        todo = [s for s in range(config.control_seeds) if not len(have) or s not in set(have["seed"])]
        for seed in todo:
            row = run_control(reasoner, config.planted, [seed], shuffled=shuffled)
            done = pd.concat([done, row], ignore_index=True)
            done.to_csv(checkpoint, index=False)
        rows = (
            done[(done["shuffled"] == shuffled) & done["seed"].isin(range(config.control_seeds))]
            .sort_values("seed")
            .reset_index(drop=True)
        )
        frames["shuffled" if shuffled else "planted"] = rows
    metrics = control_metrics(frames["planted"], frames["shuffled"])
    metrics.update(
        n_seeds=config.control_seeds,
        n_random=config.planted.analysis.n_random,
        reasoner_final_reasoning_acc=float(curve["reasoning_acc"].iloc[-1]),
        reasoner_final_lookup_acc=float(curve["lookup_acc"].iloc[-1]),
        seconds=time.perf_counter() - start,
    )
    table = pd.concat([frames["planted"], frames["shuffled"]], ignore_index=True)
    table["double_dissociation"] = table["double_dissociation"].astype(bool)
    return {"controls": table, "controls_training": curve}, metrics


def run(config: RecallReasoningConfig, out: Path) -> Path:
    """Run the analysis on the chosen model, (config.synthetic) on the synthetic model and (config.controls) the controls; write the results dir at `out`."""
    with torch_threads(config.threads):
        results = ResultsDir.create(
            out, config, analysis=config.analysis, title="Recall vs reasoning circuits", exist_ok=True
        )
        start = run_start = time.perf_counter()
        model = _load(config.model)
        name = _model_name(config.model)
        prompts, unpaired = {}, {}
        for task in TASKS:
            prompts[task], unpaired[task] = build_prompts(
                model, task, config.families, max_entities=config.max_entities
            )
        pool = (
            reference_pool(model, config.families) if config.reference_pool else None
        )  # all entities: those past max_entities are never evaluated
        tables, metrics = analyse(
            model, prompts, config.analysis_settings, model_name=name, progress=True, reference_pool=pool
        )
        metrics.update(
            n_recall_unpaired=unpaired["recall"],
            n_reasoning_unpaired=unpaired["reasoning"],
            seconds_model=time.perf_counter() - start,
            method_text={"set_rule": SET_RULE.strip(), "design": DESIGN.strip()},
        )  # the page states the method it ran (dashboards read results only)
        figures = run_figures(tables, "", name)
        del model
        for table_name, frame in tables.items():
            results.save_table(table_name, frame)
        results.write_metrics(
            dict(metrics, partial="the model's analysis only; controls and synthetic model still running"), merge=False
        )
        if config.controls:
            control_tables, control = _controls(config, results.path)
            tables.update(control_tables)
            metrics["controls"] = control
            metrics.update(
                planted_detection_rate=control["planted_detection_rate"],
                shuffled_detection_rate=control["shuffled_detection_rate"],
                control_seeds=config.control_seeds,
            )
            figures["controls"] = control_bars(control_tables["controls"])
            for table_name, frame in control_tables.items():
                results.save_table(table_name, frame)
            results.write_metrics(
                dict(metrics, partial="model and controls; synthetic model still running"), merge=False
            )
        if config.synthetic:
            start = time.perf_counter()
            synthetic_model, curve = train(config.kb, config.training, progress=True)
            seconds_training = time.perf_counter() - start
            synthetic_prompts = prompt_sets(
                config.kb,
                config.synthetic_reasoning_items,
                max_recall=config.synthetic_max_recall,
                seed=config.training.seed + 1,
            )
            synthetic_tables, synthetic_metrics = analyse(
                synthetic_model, synthetic_prompts, config.synthetic_settings, model_name="the synthetic model"
            )
            synthetic_tables["training"] = curve
            held_out = evaluate(synthetic_model, config.kb)
            synthetic_metrics.update(
                final_train_recall_acc=float(curve["recall_acc"].iloc[-1]),
                final_train_reasoning_acc=float(curve["reasoning_acc"].iloc[-1]),
                **{f"held_out_{name}": value for name, value in held_out.items()},
                seconds_training=seconds_training,
                seconds=time.perf_counter() - start,
            )
            metrics["synthetic"] = dict(synthetic_metrics, method_text=metrics["method_text"])
            tables.update({f"synthetic_{k}": v for k, v in synthetic_tables.items()})
            figures.update(run_figures(synthetic_tables, "synthetic_", "synthetic model"))
            figures["synthetic_training"] = training_curve(curve)
        metrics["seconds_total"] = time.perf_counter() - run_start
        for table_name, frame in tables.items():
            results.save_table(table_name, frame)
        results.write_metrics(metrics, merge=False)
        results.save_figures(figures, png=config.png)
        build_dashboard(results)
        return results.path


if __name__ == "__main__":  # pragma: no cover  (the same command and options as `interp run recall-reasoning`)
    from experiments.cli import script_main

    script_main("recall-reasoning")
