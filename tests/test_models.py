import pytest
import torch

from interp.errors import CorruptFileError, ModelLoadError
from interp.models import bundled_gguf_path, load_model

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "My favourite book is",
    "def add(a, b):\n    return",
]


def test_bundled_model_knows_paris(model):
    logits = model(model.to_tokens("The capital of France is"))
    assert model.to_string(logits[0, -1].argmax()) == " Paris"


def test_bundled_logprobs_equal_transformers(model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        assert torch.equal(ids, model.to_tokens(prompt))
        with torch.no_grad():
            ours = model(ids).log_softmax(-1)
            theirs = hf(ids).logits.log_softmax(-1)
        assert (ours - theirs).abs().max().item() < 1e-4, prompt


def test_random_model_from_config_is_seeded(tiny_model):
    from tests.conftest import TINY_GQA

    again = load_model(TINY_GQA, seed=0)
    other = load_model(TINY_GQA, seed=1)
    tokens = torch.randint(0, 101, (2, 8))
    assert torch.equal(tiny_model(tokens), again(tokens))
    assert not torch.allclose(tiny_model(tokens), other(tokens))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope.gguf")


def test_unknown_name_offline_says_how_to_supply_weights():
    with pytest.raises(ModelLoadError, match="local Hugging Face cache|not a file"):
        load_model("gpt2")


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(bundled_gguf_path().read_bytes()[:100_000])
    with pytest.raises(CorruptFileError, match="Could not read model weights"):
        load_model(bad)


def test_corrupt_weight_cache_is_a_clear_error(model, tmp_path, monkeypatch):
    import shutil

    from interp import models

    converted = models.converted_dir(bundled_gguf_path())  # filled by the `model` fixture
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    dest = models.converted_dir(bundled_gguf_path())
    shutil.copytree(converted, dest)
    data = (dest / "model.safetensors").read_bytes()
    (dest / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="corrupt"):
        load_model()
