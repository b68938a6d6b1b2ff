"""Writes notebooks/03_sae.ipynb (kept as code so the notebook's source reviews as a diff)."""

from pathlib import Path

import nbformat as nbf

cells = [
    (
        "md",
        "# Sparse autoencoders: train, evaluate, open in SAELens, read latents\n"
        "A TopK SAE on the residual stream of the bundled SmolLM2-135M-Instruct, trained on the default offline corpus. "
        "Sizes are small so the notebook runs in about a minute on a laptop CPU; `experiments/sae_topk.py` is the same pipeline at full size.",
    ),
    (
        "code",
        "import torch\nimport interp\nfrom interp.corpus import corpus_tokens\nfrom interp.store import build_store\nfrom sae.activations import StoreBatches\n"
        "from sae.models import TopKConfig\nfrom sae.train import TrainConfig, train_sae\nfrom sae.evaluate import evaluate_sae\nfrom sae.io import save_sae\n"
        "from sae.latents import top_activating_contexts\nimport tempfile, pathlib\n\ntorch.manual_seed(0)\nmodel = interp.load_model()\n"
        "site = 'blocks.6.hook_resid_post'\nwork = pathlib.Path(tempfile.mkdtemp())",
    ),
    (
        "md",
        "## Activations from the default corpus\n`build_store` streams corpus text through the model and writes sharded, checksummed activations "
        "(resumable: run it again with the same arguments and it continues). The model stops after layer 6, so this costs a fifth of a full forward.",
    ),
    (
        "code",
        "train_tokens = corpus_tokens(model, 128, 128)  # 128 sequences x 128 tokens\nstore = build_store(model, [site], train_tokens, work / 'store', n_tokens=train_tokens.numel(), progress=False)\nstore.n_tokens",
    ),
    (
        "md",
        "## Train\nTopK keeps the k largest pre-activations per token (Gao et al. 2024). The sparse backward touches only the k active latents; "
        "with `out_dir` the trainer checkpoints and resumes.",
    ),
    (
        "code",
        "cfg = TopKConfig(d_in=model.cfg.d_model, d_sae=1152, k=32, seed=0)\n"
        "result = train_sae(cfg, StoreBatches(store, site, 512, seed=0), TrainConfig(steps=150, batch_size=512, lr=2e-3, warmup_steps=15, dead_after_tokens=40_000),\n"
        "                   work / 'run', progress=False, hook_name=site)\nsae = result.sae.eval()\nresult.curve[['step', 'fvu', 'l0', 'dead_fraction']].tail()",
    ),
    (
        "md",
        "## Evaluate on held-out text\nL0 (active latents per token), FVU (fraction of variance unexplained), and CE loss recovered: "
        "how much of the next-token loss survives when the SAE's reconstruction replaces the activation, relative to zero-ablating it.",
    ),
    (
        "code",
        "held_out = corpus_tokens(model, 8, 128, skip_seqs=128)  # sequences after the training ones\nevaluation = evaluate_sae(model, sae, site, held_out)\n"
        "{k: round(v, 4) for k, v in evaluation.metrics.items() if k in ('l0', 'fvu', 'ce_clean', 'ce_sae', 'ce_zero_ablation', 'ce_loss_recovered', 'dead_fraction')}",
    ),
    (
        "code",
        "assert evaluation.metrics['l0'] <= 32 and evaluation.metrics['fvu'] < 0.5 and evaluation.metrics['ce_loss_recovered'] > 0.8",
    ),
    (
        "md",
        "## Open it in SAELens\n`save_sae` writes SAELens's own format (`cfg.json` + `sae_weights.safetensors`), so SAELens loads it and encodes the same latents.",
    ),
    (
        "code",
        "from sae_lens import SAE\nsave_sae(sae, work / 'saelens', hook_name=site)\ntheirs = SAE.load_from_disk(str(work / 'saelens'))\n"
        "x = interp.cache_sites(model, held_out[:2], [site])[interp.Site(6, 'resid_post')].reshape(-1, model.cfg.d_model)\n"
        "with torch.no_grad():\n    ours_acts, their_acts = sae.encode(x), theirs.encode(x)\n"
        "print(type(theirs).__name__, 'max |difference| of latent activations:', (ours_acts - their_acts).abs().max().item())",
    ),
    ("code", "assert torch.allclose(ours_acts, their_acts, atol=1e-4)"),
    (
        "md",
        "## What do latents respond to?\nThe held-out contexts where a few of the most frequent live latents fire hardest; the token in brackets is where it fires.",
    ),
    (
        "code",
        "live = evaluation.latents[evaluation.latents.firing_count > 0].nlargest(4, 'firing_count').latent.tolist()\n"
        "contexts = top_activating_contexts(model, sae, site, held_out, live, top=4)\n"
        "for latent, rows in contexts.groupby('latent'):\n    print(f'latent {latent}:')\n"
        "    for r in rows.itertuples():\n        print(f'   {r.activation:6.2f}  ...{r.context_before!r} [{r.token_text!r}] {r.context_after!r}')",
    ),
]
nb = nbf.v4.new_notebook()
nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).with_name("03_sae.ipynb"))
