"""Latent dashboards: one offline HTML page per SAE, a searchable table of every latent and a card per chosen latent.

A card shows the latent's top-activating corpus contexts with its activation on every token of each window
(shaded; hover for the value; the top token outlined), a histogram of its nonzero activations, the tokens its
decoder direction promotes and suppresses most through the unembedding, and its nearest latents by decoder
cosine (links to their cards when they have one). Rendering only: experiments/latent_dashboard.py builds the
cards from sae.latent_pass's cached, resumable pass and writes directory/latents/index.html.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin:0 0 .3em} h3{font-size:.95em;margin:.6em 0 .3em}
table{border-collapse:collapse;font-size:.85em} td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
#table-box{max-height:340px;overflow:auto;border:1px solid #ddd;margin-bottom:1.5em}
.card{border:1px solid #ccc;border-radius:6px;padding:.8em 1em;margin:1em 0}
.ctx{font-family:ui-monospace,monospace;font-size:.85em;white-space:pre-wrap;margin:2px 0;line-height:1.7}
.tok{border-radius:2px} .focus{outline:2px solid #c33}
.cols{display:flex;gap:2em;flex-wrap:wrap} .cols>div{min-width:200px}
.meta{color:#666;font-size:.85em}
"""

SEARCH = """
const box = document.getElementById('search');
box.addEventListener('input', () => {
  const q = box.value.trim().toLowerCase();
  let shown = 0;
  for (const tr of document.querySelectorAll('#latents tbody tr')) {
    const hit = !q || tr.dataset.key.includes(q);
    tr.style.display = hit ? '' : 'none';
    shown += hit;
  }
  document.getElementById('shown').textContent = shown;
});
"""


def _token_html(text: str, act: float, peak: float, focus: bool) -> str:
    alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, act / peak))
    shown = html.escape(text.replace("\n", "⏎"))
    cls = "tok focus" if focus else "tok"
    return f'<span class="{cls}" style="background:rgba(255,120,0,{alpha:.3f})" title="{act:.4g}">{shown}</span>'


def _histogram_svg(counts: list[int], edges: list[float], width: int = 320, height: int = 90) -> str:
    """Bars of counts over log10 bins with these edges (len(counts) + 1 of them)."""
    counts, edges = np.asarray(counts, dtype=float), np.asarray(edges, dtype=float)
    if counts.sum() == 0:
        return '<p class="meta">never active</p>'
    nz = np.nonzero(counts)[0]
    lo, hi = max(0, nz[0] - 1), min(len(counts), nz[-1] + 2)
    counts = counts[lo:hi]
    bar = width / len(counts)
    peak = counts.max()
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - 14 - c / peak * (height - 20):.1f}" width="{max(bar - 1, 1):.1f}" '
        f'height="{c / peak * (height - 20):.1f}" fill="#e07000"><title>{int(c)}</title></rect>'
        for i, c in enumerate(counts)
    )
    left, right = 10 ** edges[lo], 10 ** edges[hi]
    labels = (
        f'<text x="0" y="{height - 2}" font-size="10">{left:.3g}</text>'
        f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">{right:.3g}</text>'
    )
    return f'<svg class="hist" width="{width}" height="{height}" role="img" aria-label="activation histogram">{rects}{labels}</svg>'


def _card_html(card: dict, with_cards: set[int]) -> str:
    j = card["latent"]
    rows = []
    for ex in card["examples"]:
        peak = max(card["max_activation"], 1e-12)
        spans = "".join(
            _token_html(t, a, peak, i == ex["focus"]) for i, (t, a) in enumerate(zip(ex["tokens"], ex["acts"]))
        )
        rows.append(
            f'<div class="ctx"><span class="meta">{ex["activation"]:.3g} · seq {ex["seq"]}</span>  {spans}</div>'
        )

    def logit_list(items):
        return (
            "<table>"
            + "".join(f"<tr><td>{html.escape(repr(t))}</td><td>{v:+.3f}</td></tr>" for t, v in items)
            + "</table>"
        )

    neighbours = "".join(
        f'<li><a href="#latent-{n}">{n}</a> ({c:.3f})</li>' if n in with_cards else f"<li>{n} ({c:.3f})</li>"
        for n, c in card["neighbours"]
    )
    return f"""<div class="card" id="latent-{j}">
<h2>Latent {j}</h2>
<p class="meta">density {card["density"]:.3g} · max activation {card["max_activation"]:.3g}</p>
<h3>Top-activating contexts</h3>{"".join(rows) or '<p class="meta">never active in the pass</p>'}
<div class="cols">
<div><h3>Activation histogram (nonzero, log scale)</h3>{_histogram_svg(card["hist"], card["hist_edges"])}</div>
<div><h3>Promoted tokens</h3>{logit_list(card["top_logits"])}</div>
<div><h3>Suppressed tokens</h3>{logit_list(card["bottom_logits"])}</div>
<div><h3>Nearest latents (decoder cosine)</h3><ul>{neighbours}</ul></div>
</div></div>"""


def render_latent_page(title: str, table: pd.DataFrame, cards: list[dict], meta: str = "") -> str:
    with_cards = {c["latent"] for c in cards}
    rows = "".join(
        f'<tr data-key="{html.escape(f"{int(r.latent)} {r.top_token}".lower(), quote=True)}"><td>'
        + (
            f'<a href="#latent-{int(r.latent)}">{int(r.latent)}</a>'
            if int(r.latent) in with_cards
            else str(int(r.latent))
        )
        + f"</td><td>{r.density:.3g}</td><td>{r.max_activation:.3g}</td><td>{html.escape(repr(r.top_token))}</td></tr>"
        for r in table.itertuples()
    )
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1><p class="meta">{html.escape(meta)}</p>
<p><label>Search latents (number or top token): <input id="search" type="search"></label>
<span class="meta"><span id="shown">{len(table)}</span> of {len(table)} shown; linked latents have a card below</span></p>
<div id="table-box"><table id="latents"><thead><tr><th>latent</th><th>density</th><th>max activation</th><th>top token</th></tr></thead>
<tbody>{rows}</tbody></table></div>
{"".join(_card_html(c, with_cards) for c in cards)}
<script>{SEARCH}</script></body></html>"""
