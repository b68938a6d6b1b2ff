"""NNsightModel on the bundled GGUF loaded by transformers, against the TransformerLens model."""

import pytest
import torch

from interp.errors import ModelLoadError, OutOfRangeError, ShapeMismatchError, UnknownSiteError
from interp.interventions import Ablation, heads, layers, neurons, run_ablated
from interp.models import bundled_gguf_path
from interp.nnsight_model import NNsightModel
from interp.sites import Site

PROMPTS = ["The capital of France is", "The capital of Spain is"]
CORRUPTED = ["The capital of Japan is", "The capital of Egypt is"]
REFERENCE = ["The colour of grass is", "The price of bread is", "The speed of light is"]

MAPPED_SITES = [
    Site(None, "embed"),
    Site(3, "resid_pre"),
    Site(2, "q", head=4),
    Site(2, "k", head=1),
    Site(2, "v"),
    Site(7, "z", head=5),
    Site(7, "z"),
    Site(4, "attn_out"),
    Site(9, "resid_mid"),
    Site(11, "mlp_pre"),
    Site(11, "mlp_pre_linear", neuron=3),
    Site(29, "mlp_post"),
    Site(12, "mlp_out"),
    Site(0, "resid_post"),
    Site(15, "resid_post", position=2),
    Site(29, "resid_post"),
]


@pytest.fixture(scope="module")
def nn_model():
    return NNsightModel.from_pretrained(bundled_gguf_path())


def log_probs(logits):
    # TL centres the unembedding (a per-position constant on logits); log-probs are unaffected.
    return logits.log_softmax(-1)


def test_cached_sites_equal_transformer_lens_hooks(nn_model, model):
    got = nn_model.cache(PROMPTS, MAPPED_SITES)
    with torch.no_grad():
        _, tl_cache = model.run_with_cache(model.to_tokens(PROMPTS, prepend_bos=False))
    for site in MAPPED_SITES:
        expected = tl_cache[site.hook_name]
        if site.head is not None:  # q, k, z: [batch, pos, head, d_head]
            expected = expected[:, :, site.head]
        if site.neuron is not None:  # [batch, pos, d_mlp]
            expected = expected[:, :, site.neuron]
        if site.position is not None:  # [batch, pos, ...]
            expected = expected[:, site.position]
        # float32 error grows with the activations' scale: residual entries reach ~2500 at layer 29.
        atol = 1e-4 + 1e-6 * expected.abs().max().item()
        torch.testing.assert_close(got[site], expected, atol=atol, rtol=1e-5, msg=lambda m: f"{site}: {m}")


def test_ablations_give_the_transformer_lens_ablation_logits(nn_model, model):
    sites = heads([(5, 4), (5, 5)]) + neurons([(8, 10), (20, 700)], position=3) + layers([14], "mlp_out", position=4)
    sites += layers([10], "attn_out", position=1) + layers(
        [3], "resid_post", position=0
    )  # tuple outputs and layer outputs too
    with torch.no_grad():
        clean = log_probs(model(model.to_tokens(PROMPTS, prepend_bos=False)))
    for ablation in (
        Ablation(sites),
        Ablation(sites, method="mean", reference=REFERENCE),
        Ablation(sites, method="resample", reference=REFERENCE, seed=3),
    ):
        ours, tl = log_probs(nn_model.run_ablated(PROMPTS, ablation)), log_probs(run_ablated(model, PROMPTS, ablation))
        torch.testing.assert_close(ours, tl, atol=2e-4, rtol=0, msg=lambda m: f"{ablation.method}: {m}")
        assert (ours - clean).abs().max() > 1e-2, f"{ablation.method} ablation changed nothing"


def test_patch_matches_a_hand_written_transformer_lens_patch(nn_model, model):
    site = Site(9, "z", head=2, position=-1)
    clean_tokens = model.to_tokens(PROMPTS, prepend_bos=False)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=site.hook_name)

    def patch_head(z, hook):
        z[:, -1, 2] = clean_cache[site.hook_name][:, -1, 2]

    with torch.no_grad():
        expected = model.run_with_hooks(
            model.to_tokens(CORRUPTED, prepend_bos=False), fwd_hooks=[(site.hook_name, patch_head)]
        )
    got = nn_model.patch(PROMPTS, CORRUPTED, site)
    torch.testing.assert_close(log_probs(got), log_probs(expected), atol=2e-4, rtol=0)
    by_name = nn_model.patch(PROMPTS, CORRUPTED, "blocks.9.attn.hook_z")  # whole layer by hook name
    assert by_name.shape == got.shape and not torch.allclose(by_name, got)


def test_unmapped_component_names_the_mapped_ones(nn_model):
    with pytest.raises(
        UnknownSiteError,
        match=r"component 'pattern' has no module value in LlamaForCausalLM.*Mapped components: embed, resid_pre",
    ):
        nn_model.cache(PROMPTS, [Site(3, "pattern", head=0)])


def test_architecture_without_a_mapping_is_refused(nn_model):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(nn_model.tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=16)
    )
    other = NNsightModel(gpt2, nn_model.tokenizer)
    with pytest.raises(UnknownSiteError, match=r"no Site mapping for GPT2LMHeadModel.*\.nn"):
        other.cache(PROMPTS, [Site(0, "resid_post")])


def test_bad_arguments_are_refused_with_the_fix(nn_model, tmp_path):
    with pytest.raises(OutOfRangeError, match=r"head=9 is out of range.*9 query heads"):
        nn_model.cache(PROMPTS, [Site(2, "z", head=9)])
    with pytest.raises(OutOfRangeError, match=r"head=3 is out of range.*3 key/value heads"):
        nn_model.run_ablated(PROMPTS, Ablation([Site(2, "v", head=3)]))
    with pytest.raises(ShapeMismatchError, match="prompts have different token lengths"):
        nn_model.cache(["short", "a much longer prompt than that"], [Site(0, "resid_post")])
    with pytest.raises(ShapeMismatchError, match=r"clean and corrupted must have the same shape"):
        nn_model.patch(PROMPTS, CORRUPTED[:1], Site(0, "resid_post"))
    with pytest.raises(ModelLoadError, match="no such file or directory"):
        NNsightModel.from_pretrained(tmp_path / "missing.gguf")
