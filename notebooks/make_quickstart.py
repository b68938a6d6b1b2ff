"""Writes notebooks/01_quickstart.ipynb (kept as code so the notebook's source reviews as a diff)."""

from pathlib import Path

import nbformat as nbf

cells = [
    (
        "md",
        "# Quickstart: load, cache, ablate, patch, plot\nEverything here runs offline on the bundled SmolLM2-135M-Instruct.",
    ),
    (
        "code",
        "import torch\nimport interp\nfrom interp import Site, Ablation, heads\nfrom interp.patching import PatchingTask, patch_layer_positions, patch_heads\nfrom interp import plots\n\nmodel = interp.load_model()\nmodel.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads",
    ),
    (
        "md",
        "## Cache only what you ask for\nA `Site` is a TransformerLens hook name plus an optional head, neuron and position.",
    ),
    (
        "code",
        "prompts = ['The capital of France is', 'The capital of Spain is']\nacts = interp.cache_sites(model, prompts, [Site(6, 'resid_post'), Site(3, 'z', head=2, position=-1), 'blocks.5.mlp.hook_post'])\n{str(s): tuple(t.shape) for s, t in acts.items()}",
    ),
    (
        "md",
        "## Ablate\nZero-ablate two heads together (their slice of `attn.hook_z`, the input to W_O) and see the answer's probability move.",
    ),
    (
        "code",
        "paris = model.to_single_token(' Paris')\nclean = model(model.to_tokens(prompts[0]))[0, -1].softmax(-1)[paris].item()\nablated = interp.run_ablated(model, prompts[:1], Ablation(heads([(20, 1), (22, 4)]), method='zero'))[0, -1].softmax(-1)[paris].item()\nprint(f'p(Paris): clean {clean:.3f}, after ablation {ablated:.3f}')",
    ),
    (
        "md",
        "## Patch\nClean and corrupted prompts differ in the country; the metric is the logit difference between the two capitals. Each sweep runs its variants as batches that start from the cached corrupted run.",
    ),
    (
        "code",
        "task = PatchingTask(model, ['The capital of France is', 'The capital of Japan is'], ['The capital of Spain is', 'The capital of Italy is'],\n                   answers=[' Paris', ' Tokyo'], wrong_answers=[' Madrid', ' Rome'])\nresid = patch_layer_positions(task, 'resid_pre')\nresid.head()",
    ),
    (
        "code",
        "plots.layer_position_heatmap(resid, value='restoration', tokens=model.to_str_tokens(task.clean_tokens[0]))",
    ),
    (
        "code",
        "head_effects = patch_heads(task, layers=range(12, 30))\nplots.head_heatmap(head_effects, value='restoration')",
    ),
    (
        "code",
        "assert resid.loc[(resid.layer == 0) & (resid.position == 3), 'restoration'].item() > 0.99  # the country token carries everything at layer 0",
    ),
]
nb = nbf.v4.new_notebook()
nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).with_name("01_quickstart.ipynb"))
