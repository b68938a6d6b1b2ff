"""load_model on every family: tiny random-weight models written here (HF directories and GGUF files), log-probs
equal to transformers' within 1e-4; an architecture TransformerLens cannot convert takes the nnsight route."""

import pytest
import torch

from interp.models import UnsupportedArchitectureError, load_model
from interp.sites import Site
from tests.tiny_families import FAMILIES, GGUF_FAMILIES, VOCAB, write_family, write_gguf

TOKENS = torch.randint(
    3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0)
)  # 12 > the Gemma sliding window of 8


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: write_family(name, root / name) for name in (*FAMILIES, "granite")}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))  # convert afresh, away from the shared cache


def _hf_logprobs(folder, **kwargs):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return hf(TOKENS).logits.log_softmax(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_directory_log_probs_equal_transformers(family, family_dirs):
    model = load_model(family_dirs[family], n_ctx=None)
    assert type(model).__name__ == "HookedTransformer"
    with torch.no_grad():
        ours = model(TOKENS).log_softmax(-1)
    reference = _hf_logprobs(family_dirs[family])
    assert reference.std() > 0.5  # the random weights give logits that vary, so agreement means something
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    again = load_model(family_dirs[family], n_ctx=None)  # from the converted cache
    with torch.no_grad():
        torch.testing.assert_close(again(TOKENS).log_softmax(-1), ours, atol=0, rtol=0)


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_gguf_log_probs_equal_transformers(family, family_dirs, tmp_path):
    path = write_gguf(family, family_dirs[family], tmp_path / f"{family}.gguf")
    with torch.no_grad():
        ours = load_model(path, n_ctx=None)(TOKENS).log_softmax(-1)
    torch.testing.assert_close(ours, _hf_logprobs(path.parent, gguf_file=path.name), atol=1e-4, rtol=0)
    if (
        family in ("llama", "qwen2")
    ):  # the round trip loses nothing here (transformers reads no query_pre_attn_scalar or layer types from a Gemma GGUF)
        torch.testing.assert_close(ours, _hf_logprobs(family_dirs[family]), atol=1e-4, rtol=0)


def test_unconvertible_architecture_takes_the_nnsight_route(family_dirs, capsys):
    from transformers import AutoModelForCausalLM

    with pytest.raises(UnsupportedArchitectureError, match="GraniteForCausalLM"):
        load_model(family_dirs["granite"], nnsight_fallback=False)
    model = load_model(family_dirs["granite"])
    assert type(model).__name__ == "NNsightModel"
    assert "GraniteForCausalLM is not an architecture TransformerLens converts" in capsys.readouterr().err
    hf = AutoModelForCausalLM.from_pretrained(family_dirs["granite"], dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = hf(TOKENS, output_hidden_states=True).hidden_states
    torch.testing.assert_close(
        model.cache(TOKENS, [Site(0, "resid_post")])[Site(0, "resid_post")], hidden[1], atol=1e-5, rtol=0
    )


def test_a_temporary_folder_named_llama_does_not_mislead_the_converter(family_dirs, tmp_path, monkeypatch):
    import tempfile

    misleading = tmp_path / "llama-gemma-tmp"
    misleading.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(misleading))  # TL reads an architecture from 'llama' in a config path
    with torch.no_grad():
        ours = load_model(family_dirs["gpt2"], n_ctx=None)(TOKENS).log_softmax(-1)
    torch.testing.assert_close(ours, _hf_logprobs(family_dirs["gpt2"]), atol=1e-4, rtol=0)


def test_commands_that_need_hooks_refuse_an_nnsight_model_in_one_line(family_dirs, tmp_path):
    import json

    from typer.testing import CliRunner

    from experiments.cli import app

    runner = CliRunner()
    granite = str(family_dirs["granite"])
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"clean": "The capital", "corrupted": "A quick fox", "answer": "P", "wrong": "M"}))
    for args in (
        ["patch", str(pairs), "--out", str(tmp_path / "run"), "--model", granite],
        ["cache", "--out", str(tmp_path / "store"), "--site", "blocks.0.hook_resid_post", "--model", granite],
    ):
        result = runner.invoke(app, args)
        text = result.output.strip().splitlines()
        assert (
            result.exit_code == 2
            and text[-1].startswith("error: ")
            and "GraniteForCausalLM was loaded through nnsight" in text[-1]
        ), result.output
