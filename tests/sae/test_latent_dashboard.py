"""The latent pass against one brute-force encode of every token; its resume; the cards against direct computation;
the page's content, and the page in headless Chromium (renders offline, no errors, search filters the table)."""

import json
import time

import numpy as np
import pytest
import torch

from dashboards.latents import render_latent_page
from experiments.latent_dashboard import build_latent_dashboard
from sae.io import save_sae
from sae.latent_pass import HIST_EDGES, latent_cards, latent_pass, latent_table, site_latents
from sae.models import TopKConfig, build_sae
from tests.test_dashboards import DevToolsPage, needs_chromium

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def sae():
    sae = build_sae(TopKConfig(64, 96, k=6, seed=3))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    return sae.eval()


@pytest.fixture(scope="module")
def tokens(tiny_model):
    return torch.randint(0, tiny_model.cfg.d_vocab, (20, 16), generator=torch.Generator().manual_seed(1))


def test_pass_equals_one_brute_force_encode_of_every_token(tiny_model, sae, tokens, tmp_path):
    result = latent_pass(tiny_model, sae, SITE, tokens, tmp_path / "pass.pt", top=5, chunk_seqs=6)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=SITE)
    with torch.no_grad():
        acts = sae.encode(cache[SITE].reshape(-1, 64))  # [seqs * pos, d_sae]
    assert result.n_tokens == tokens.numel()
    assert torch.equal(result.firing, (acts > 0).sum(0))
    torch.testing.assert_close(result.max_act, acts.max(0).values)
    values = acts.sort(dim=0, descending=True).values[:5]
    torch.testing.assert_close(result.top_values, values)
    # each recorded (seq, pos) really holds that activation
    flat = result.top_seq * tokens.shape[1] + result.top_pos
    torch.testing.assert_close(acts.gather(0, flat), result.top_values)
    for j in range(96):
        nonzero = acts[:, j][acts[:, j] > 0].double().numpy()
        expected = np.histogram(np.clip(np.log10(nonzero), HIST_EDGES[0], HIST_EDGES[-1] - 1e-9), bins=HIST_EDGES)[0]
        assert result.hist[j].tolist() == expected.tolist(), j


def test_killed_pass_resumes_to_the_same_result_and_a_finished_one_is_reused(tiny_model, sae, tokens, tmp_path):
    whole = latent_pass(tiny_model, sae, SITE, tokens, tmp_path / "a.pt", top=4, chunk_seqs=3)
    partial = latent_pass(tiny_model, sae, SITE, tokens, tmp_path / "b.pt", top=4, chunk_seqs=3, stop_after_chunks=2)
    assert partial.n_tokens == 6 * tokens.shape[1]
    resumed = latent_pass(tiny_model, sae, SITE, tokens, tmp_path / "b.pt", top=4, chunk_seqs=3)
    for a, b in zip(whole, resumed):
        assert a == b if isinstance(a, int) else torch.equal(a, b)
    stamp = (tmp_path / "b.pt").stat().st_mtime_ns
    latent_pass(tiny_model, sae, SITE, tokens, tmp_path / "b.pt", top=4, chunk_seqs=3)
    assert (tmp_path / "b.pt").stat().st_mtime_ns == stamp  # nothing left to do: not rewritten
    other = build_sae(TopKConfig(64, 96, k=6, seed=4)).eval()
    again = latent_pass(tiny_model, other, SITE, tokens, tmp_path / "b.pt", top=4, chunk_seqs=3)
    assert not torch.equal(again.top_values, whole.top_values)  # another SAE: the old state is not reused


def test_cards_match_direct_computation(tiny_model, sae, tokens, tmp_path):
    result = latent_pass(tiny_model, sae, SITE, tokens, tmp_path / "pass.pt", top=6)
    latents = [int(result.firing.argmax()), 5]
    cards = latent_cards(tiny_model, sae, SITE, tokens, result, latents, contexts=4, window=3, after=2, n_logits=3)
    for card, j in zip(cards, latents):
        for ex in card["examples"]:
            acts = site_latents(tiny_model, sae, SITE, tokens[ex["seq"] : ex["seq"] + 1])[0, :, j]
            lo = ex["pos"] - ex["focus"]
            assert ex["acts"] == pytest.approx(acts[lo : lo + len(ex["acts"])].tolist(), abs=1e-4)
            assert ex["acts"][ex["focus"]] == pytest.approx(ex["activation"], abs=1e-4)
        logits = sae.W_dec[j].detach() @ tiny_model.W_U.detach()
        assert [v for _, v in card["top_logits"]] == pytest.approx(
            logits.sort(descending=True).values[:3].tolist(), abs=1e-4
        )
        assert [v for _, v in card["bottom_logits"]] == pytest.approx(logits.sort().values[:3].tolist(), abs=1e-4)
        cosines = [
            float(torch.nn.functional.cosine_similarity(sae.W_dec[j], sae.W_dec[i], dim=0)) if i != j else -2
            for i in range(96)
        ]
        assert [n for n, _ in card["neighbours"]] == list(np.argsort(cosines)[::-1][:5])
    table = latent_table(result, tiny_model, tokens)
    assert len(table) == 96 and table.density.tolist() == pytest.approx((result.firing / tokens.numel()).tolist())


def test_page_content_escapes_text_and_links_cards():
    import pandas as pd

    table = pd.DataFrame(
        {"latent": [0, 1], "density": [0.1, 0.0], "max_activation": [2.0, 0.0], "top_token": ["<b>", ""]}
    )
    card = dict(
        latent=0,
        density=0.1,
        max_activation=2.0,
        hist=[0] * 10 + [3, 1] + [0] * 44,
        hist_edges=list(np.linspace(-4, 3, 57)),
        examples=[dict(activation=2.0, seq=0, pos=1, tokens=["a", "<b>", "c"], acts=[0.0, 2.0, 1.0], focus=1)],
        top_logits=[("x", 1.0)],
        bottom_logits=[("y", -1.0)],
        neighbours=[(1, 0.5)],
    )
    page = render_latent_page("T", table, [card])
    assert "&lt;b&gt;" in page and "<b>" not in page.replace("<body>", "")
    assert page.count("<tr data-key=") == 2 and 'href="#latent-0"' in page and 'id="latent-0"' in page
    assert "rgba(255,120,0,1.000)" in page and "rgba(255,120,0,0.500)" in page  # shading by activation / max


@needs_chromium
def test_latent_page_renders_offline_in_chromium_and_search_filters(tiny_model, sae, tokens, tmp_path):
    save_sae(sae, tmp_path / "sae", hook_name=SITE)
    page = build_latent_dashboard(tmp_path, tiny_model, tokens, n_latents=6, top=5)
    cards = json.loads((tmp_path / "latents" / "cards.json").read_text())
    assert len(cards) == 6
    browser = DevToolsPage(tmp_path / "profile")
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable")
        browser.send("Page.navigate", url=page.resolve().as_uri())
        browser.wait_for_event("Page.loadEventFired", timeout=20)
        state = browser.evaluate(
            "({rows: document.querySelectorAll('#latents tbody tr').length, cards: document.querySelectorAll('.card').length,"
            " hists: document.querySelectorAll('svg.hist rect').length, shaded: document.querySelectorAll('.ctx .tok').length})"
        )
        browser.evaluate(
            "const b = document.getElementById('search'); b.value = '17'; b.dispatchEvent(new Event('input'));"
        )
        time.sleep(0.2)
        shown = browser.evaluate(
            "[...document.querySelectorAll('#latents tbody tr')].filter(r => r.style.display !== 'none').map(r => r.cells[0].textContent)"
        )
        browser.evaluate("0")
    finally:
        browser.close()
    assert state["rows"] == 96 and state["cards"] == 6 and state["hists"] > 0 and state["shaded"] > 0, state
    assert shown and all("17" in s for s in shown) and "17" in shown  # latent 17 and any whose top token text has "17"
    assert browser.errors() == []
    assert all(url.startswith(("file:", "data:")) for url in browser.requested_urls()), browser.requested_urls()
