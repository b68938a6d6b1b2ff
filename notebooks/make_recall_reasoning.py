"""Writes notebooks/02_recall_vs_reasoning.ipynb (kept as code so the notebook's source reviews as a diff)."""

from pathlib import Path

import nbformat as nbf

cells = [
    (
        "md",
        "# 02 · Recall vs reasoning circuits\n"
        "After arXiv 2510.03366: does a model recall a memorised fact with other components than it uses to compose facts given in context? "
        "We localise each task's components by activation patching on half of the entities, ablate them on the other half, "
        "and compare against random sets of the same composition (heads, MLP layers) from the same layers; the verdict needs each set's own drop and "
        "selectivity (own minus cross drop) to beat those random sets and the interaction's bootstrap CI to exclude 0.\n\n"
        "First a controlled setting, a small transformer trained here, where what is memorised is known by construction; then the bundled SmolLM2-135M. "
        "With `INTERP_NOTEBOOK_QUICK=1` (the test suite) the analyses are smaller: fewer items, one ablation method; the synthetic model is trained as in the quick run either way.",
    ),
    (
        "code",
        "import os\nfrom dataclasses import replace\n\nimport torch\n\n"
        "from circuits.recall_reasoning import AnalysisSettings, KnowledgeBase, analyse, build_prompts, prompt_sets, train\n"
        "from circuits.recall_reasoning.figures import accuracy_bars, set_grid, training_curve, unit_heatmap\n"
        "from circuits.recall_reasoning.synthetic import evaluate\n"
        "from experiments.recall_reasoning import RecallReasoningConfig\n"
        "from interp.models import load_model\n\n"
        "torch.set_num_threads(1)  # one thread: repeatable numbers, and no fight over a shared machine's cores\n"
        "QUICK = os.environ.get('INTERP_NOTEBOOK_QUICK') == '1'\n"
        "config = RecallReasoningConfig.quick()\n"
        "methods = ('mean',) if QUICK else ('zero', 'mean', 'resample')",
    ),
    (
        "md",
        "## The synthetic knowledge base\n"
        "Recall prompts end `entity relation [Q]` and must be answered from memory (the facts are never in context). "
        "Reasoning prompts give four facts about fresh names, `x y  w u  y v  u v2`, then ask `x [Q]`: the answer `v` needs both `x -> y` and `y -> v`; "
        "`w -> u -> v2` is a distractor chain. Both prompts have ten tokens and end on `[Q]`.",
    ),
    (
        "code",
        "kb = config.kb\nsets = prompt_sets(kb, 4, max_recall=2, seed=0)\n"
        "for task, prompts in sets.items():\n    print(task, prompts.items[['prompt', 'answer']].to_string(index=False), sep='\\n')",
    ),
    (
        "md",
        "## Train it\nRecall facts and in-context problems (several queries per fact set: the two 2-hop queries and the four 1-hop lookups) in every batch.",
    ),
    (
        "code",
        "training = config.training  # 1,000 steps, about a minute on one thread\n"
        "synthetic, curve = train(kb, training)\n"
        "print(evaluate(synthetic, kb))  # held-out accuracy: every memorised fact; 1,024 new 2-hop problems and 1-hop lookups\n"
        "training_curve(curve)",
    ),
    (
        "md",
        "## Localise and ablate\nUnits are heads (their `hook_z` slice) and MLP layers; MLP neurons get their own sets. "
        "The recall set is the units whose patching restores recall most beyond what it restores reasoning (and the reverse); "
        "see `circuits/recall_reasoning/localisation.py` for the rule.",
    ),
    (
        "code",
        "synthetic_settings = replace(config.synthetic_settings, methods=methods, verdict_method='mean', max_items=32 if QUICK else 48)\n"
        "prompts = prompt_sets(kb, 48, max_recall=48, seed=training.seed + 1)\n"
        "tables, metrics = analyse(synthetic, prompts, synthetic_settings, model_name='the synthetic model')\n"
        "print(metrics['verdict'])\nprint(metrics['neurons']['verdict'])",
    ),
    ("code", "accuracy_bars(tables['dissociation'], 'synthetic model: accuracy after ablation')"),
    ("code", "set_grid(tables['sets'], 'synthetic model: recall (+1) and reasoning (-1) sets')"),
    (
        "md",
        "## The bundled SmolLM2-135M\nOne relation family, a few entities: items the model gets wrong before any intervention are dropped and counted.",
    ),
    (
        "code",
        "model = load_model()\n"
        "real = {task: build_prompts(model, task, ['capital', 'opposite'], max_entities=12)[0] for task in ('recall', 'reasoning')}\n"
        "real_settings = AnalysisSettings(methods=methods, verdict_method='mean', n_random=20, exact_candidates=8, neuron_set_size=10, neuron_candidates=16,  # quick: 20 random sets\n"
        "                                 single_length=True, max_items=8, position_layers=(), screen=False, n_bootstrap=500)\n"
        "real_tables, real_metrics = analyse(model, real, real_settings, model_name='SmolLM2-135M-Instruct')\n"
        "print({k: real_metrics[k] for k in ('n_recall_localisation', 'n_reasoning_localisation', 'n_recall_items', 'n_reasoning_items', 'n_recall_dropped', 'n_reasoning_dropped')})\n"
        "print(real_metrics['verdict'])",
    ),
    (
        "code",
        "unit_heatmap(real_tables['unit_patching'], 'recall', 'SmolLM2: recall, AtP restoration per unit', value='restoration_atp')",
    ),
    (
        "code",
        "real_tables['sets'].query('chosen_for != \"\"')[['unit', 'restoration_recall', 'restoration_reasoning', 'chosen_for']]",
    ),
    (
        "md",
        "The full analysis (five families, every ablation method, the screen, layer x position patching, dashboard) is "
        "`interp run recall-reasoning --quick --out DIR` (or without `--quick`).",
    ),
]
nb = nbf.v4.new_notebook()
nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).with_name("02_recall_vs_reasoning.ipynb"))
