"""SAELens interop both ways: SAELens's own loader reads what we save and gives the same encode/decode."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from interp.errors import CorruptFileError, ModelLoadError
from sae.io import load_sae, save_sae
from sae.models import BatchTopKConfig, JumpReluConfig, ReluConfig, TopKConfig, build_sae

D_IN, D_SAE = 16, 48
CONFIGS = [
    ReluConfig(D_IN, D_SAE),
    TopKConfig(D_IN, D_SAE, k=6),
    BatchTopKConfig(D_IN, D_SAE, k=6),
    JumpReluConfig(D_IN, D_SAE),
]


def trained_like(cfg):
    sae = build_sae(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.encoder.add_(torch.randn(sae.encoder.shape, generator=gen) * 0.2)
        sae.W_dec.add_(torch.randn(sae.W_dec.shape, generator=gen) * 0.2)
        sae.b_enc.normal_(generator=gen)
        sae.b_dec.normal_(generator=gen)
        if cfg.architecture == "jumprelu":
            sae.log_threshold.copy_(torch.randn(D_SAE, generator=gen) * 0.5 - 0.5)
        if cfg.architecture == "batchtopk":
            sae.threshold.fill_(0.7)
    return sae


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.architecture)
def test_saelens_load_from_disk_gives_the_same_encode_and_decode(cfg, tmp_path):
    from sae_lens import SAE

    ours = trained_like(cfg)
    save_sae(ours, tmp_path, hook_name="blocks.3.hook_resid_post", model_name="tiny")
    theirs = SAE.load_from_disk(tmp_path)
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        acts = ours.encode(x)
        assert (acts > 0).any(1).all()
        torch.testing.assert_close(theirs.encode(x), acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(acts), ours.decode(acts), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    again = load_sae(tmp_path)
    assert again.cfg == cfg
    torch.testing.assert_close(again(x), ours(x).detach())


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_saelens_saved_saes_load_into_ours(arch, apply_b_dec_to_input, tmp_path):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    kinds = {
        "standard": (StandardSAE, StandardSAEConfig, {}),
        "topk": (TopKSAE, TopKSAEConfig, {"k": 5}),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),
    }
    cls, cfg_cls, extra = kinds[arch]
    torch.manual_seed(0)
    theirs = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec_to_input, **extra))
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
        if arch == "jumprelu":
            theirs.threshold.uniform_(0.1, 1.0)
    theirs.save_model(tmp_path)
    ours = load_sae(tmp_path)
    x = torch.randn(32, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-5)


def test_config_that_does_not_match_weights_is_refused(tmp_path):
    save_sae(trained_like(TopKConfig(D_IN, D_SAE, k=6)), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["d_sae"] = 64
    cfg["interp_toolkit"]["sae_config"]["d_sae"] = 64
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match=r"W_enc has shape \(16, 48\) but cfg.json says d_in=16, d_sae=64"):
        load_sae(tmp_path)


def test_missing_threshold_and_damaged_files_are_refused(tmp_path):
    save_sae(trained_like(JumpReluConfig(D_IN, D_SAE)), tmp_path)
    weights = load_file(str(tmp_path / "sae_weights.safetensors"))
    del weights["threshold"]
    save_file(weights, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(CorruptFileError, match=r"lacks weights \['threshold'\]"):
        load_sae(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError, match="cannot be read as safetensors"):
        load_sae(tmp_path)
    with pytest.raises(ModelLoadError, match="no cfg.json"):
        load_sae(tmp_path / "nowhere")
