"""nnsight remote execution through interp.nnsight_model (issue 19), tested up to the point of sending: the request
is built and serialisable, and what a server would run from it (nnsight's local simulation: serialised, deserialised
with the interp package hidden, run) gives the local values; offline, sending fails at once with an InterpError
naming the fix. A tiny random Llama written as a local HF folder."""

import pickle
import socket
import time

import pytest
import torch

from interp.errors import InterpError
from interp.nnsight_model import NNsightModel
from interp.sites import Site

PROMPTS, CORRUPTED = torch.randint(3, 100, (2, 2, 7), generator=torch.Generator().manual_seed(0))  # token ids
SITES = [Site(1, "resid_post"), Site(0, "z", head=1), Site(1, "mlp_post", neuron=3), Site(0, "k", head=0)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.tiny_families import write_family

    return write_family("llama", tmp_path_factory.mktemp("tiny-llama"))


def test_the_remote_path_simulated_gives_the_local_values(folder):
    local = NNsightModel.from_pretrained(folder)
    simulated = NNsightModel(local.hf_model, local.tokenizer, remote="local")
    here, there = local.cache(PROMPTS, SITES), simulated.cache(PROMPTS, SITES)
    for site in SITES:
        assert there[site].shape == here[site].shape and here[site].abs().sum() > 0
        torch.testing.assert_close(there[site], here[site], atol=0, rtol=0)
    patched_here = local.patch(PROMPTS, CORRUPTED, [Site(0, "z", head=1), Site(1, "resid_pre", position=2)])
    patched_there = simulated.patch(PROMPTS, CORRUPTED, [Site(0, "z", head=1), Site(1, "resid_pre", position=2)])
    torch.testing.assert_close(patched_there, patched_here, atol=0, rtol=0)
    with torch.no_grad():  # and the patch did something: the logits differ from the corrupted run's
        assert (patched_here - local.hf_model(CORRUPTED).logits).abs().max() > 1e-4


def test_a_remote_model_builds_a_serialisable_request_without_weights(folder, monkeypatch):
    import interp.nnsight_model as module
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.schema.request import RequestModel

    remote = NNsightModel.remote("meta-llama/Llama-3.1-70B", config=folder, api_key="test-key")
    assert all(p.device.type == "meta" for p in remote.hf_model.parameters())  # nothing loaded here
    key = remote.model_key()
    assert key.startswith("nnsight.") and '"repo_id": "meta-llama/Llama-3.1-70B"' in key
    request = RequestModel(model_key=key)
    assert RequestModel.model_validate_json(request.metadata()).model_key == key
    # the payload: the traced block as nnsight's remote backend serialises it, kept at the point of sending (the
    # transport is the one thing replaced: this machine has no network; the reachability check is tested below)
    sent = {}

    class Sent(Exception):
        pass

    def keep(self, request, tracer):  # RemoteBackend.request: serialise, then open the websocket and post
        sent["blob"], sent["request"] = self._serialize(tracer), request
        raise Sent  # stop at the point of sending

    monkeypatch.setattr(RemoteBackend, "request", keep)
    monkeypatch.setattr(module, "_reachable", lambda *args: None)
    with pytest.raises(Sent):
        remote.cache(PROMPTS, SITES[:2])
    assert sent["request"].model_key == key and len(sent["blob"]) > 0
    # a server rebuilds the block from the payload against its own model: here the same tiny architecture
    local = NNsightModel.from_pretrained(folder)
    tracer = RequestModel.deserialize(sent["blob"], local.nn._remoteable_persistent_objects(), compress=True)
    shipped = tracer.info.frame.f_locals  # the block's inputs as the server gets them: plain data and tensors
    assert [step[0] for step in shipped["plan"]] == ["model.layers.0.self_attn.o_proj", "model.layers.1"]
    assert "get" in tracer.info.code.co_names and "save" in tracer.info.code.co_names
    pickle.dumps(sent["request"].model_dump())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_offline_sending_fails_at_once_naming_the_fix(folder, monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    from nnsight.schema.config import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    no_key = NNsightModel.remote("meta-llama/Llama-3.1-70B", config=folder)
    with pytest.raises(InterpError, match="NDIF_API_KEY"):
        no_key.cache(PROMPTS, SITES[:1])
    unreachable = NNsightModel.remote(
        "meta-llama/Llama-3.1-70B", config=folder, api_key="k", host=f"http://127.0.0.1:{_closed_port()}"
    )
    start = time.perf_counter()
    with pytest.raises(InterpError, match="cannot reach the NDIF host.*network"):
        unreachable.cache(PROMPTS, SITES[:1])
    assert time.perf_counter() - start < 15
    with pytest.raises(InterpError, match="runs here"):
        NNsightModel.from_pretrained(folder).model_key()
    with pytest.raises(InterpError, match="remote="):
        NNsightModel(no_key.hf_model, no_key.tokenizer, remote="ndif")


def test_remote_without_a_config_offline_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InterpError, match="config="):
        NNsightModel.remote("no-such-org/no-such-model-xyz")
