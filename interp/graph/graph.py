"""The computation graph of a TransformerLens model: nodes that write to the residual stream, and the
inputs that read from it.

Senders (upstream nodes) are the token embeddings (what enters block 0's residual stream), every
query head's output (z @ W_O for that head; the bias b_O is the same in every run, so it is no node)
and every MLP layer's output. Receivers (the inputs of downstream nodes) are every query head's query
input, every key/value head's key and value input, every MLP's input and the logits (the final
residual stream). An edge u -> v is u's output as it enters v's input through the residual stream;
every sender upstream of a receiver has an edge to it.

Grouped-query attention: keys and values are computed per key/value head, so an edge into the k or v
input of kv head g is one edge shared by the query heads that read g (`query_heads` in the table
names them); edges into q are per query head.

Names: senders "embed", "a{L}.h{H}", "m{L}"; receivers "a{L}.h{H}.q", "a{L}.kv{G}.k",
"a{L}.kv{G}.v", "m{L}", "logits".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.errors import InterpError, UnknownSiteError, did_you_mean
from interp.hooks import capture
from interp.patching.task import PatchingTask
from interp.sites import n_heads

LOGITS = "logits"
INPUT_HOOKS = {
    "q": "blocks.{L}.hook_q_input",
    "k": "blocks.{L}.hook_k_input",
    "v": "blocks.{L}.hook_v_input",
    "mlp_in": "blocks.{L}.hook_mlp_in",
}
EDGE_COLUMNS = [
    "upstream", "downstream", "component", "layer", "head", "query_heads",
    "upstream_component", "upstream_layer", "upstream_head", "hook_name", "upstream_index", "downstream_index",
]  # fmt: skip


@dataclass(frozen=True)
class Sender:
    name: str
    component: str  # "embed", "head" or "mlp"
    layer: int | None
    head: int | None


@dataclass(frozen=True)
class Receiver:
    name: str
    component: str  # "q", "k", "v", "mlp_in" or "logits"
    layer: int | None
    head: int | None  # query head for q, key/value head for k and v
    query_heads: tuple[int, ...]  # the query heads that read this input
    hook_name: str  # the hook whose activation is this input (split per head for q, k, v)
    n_upstream: int  # the senders upstream of it are senders[:n_upstream]


class ComputationGraph:
    """Senders, receivers and edges of `model`; `edges` is the tidy table (one row per edge).

    The edge table's `component`, `layer`, `head` describe the receiving input, as the patching tables
    describe the patched site; `upstream_*` describe the sender. `upstream_index` / `downstream_index`
    index `senders` / `receivers`.
    """

    def __init__(self, model: HookedTransformer):
        cfg = model.cfg
        if cfg.attn_only:
            raise InterpError(
                "model: attention-only models are not supported yet (the graph has an MLP node per layer)."
            )
        if cfg.parallel_attn_mlp:
            raise InterpError(
                "model: parallel attention/MLP blocks are not supported yet (the graph assumes the MLP reads the attention's output)."
            )
        if cfg.positional_embedding_type == "shortformer":
            raise InterpError(
                "model: shortformer positional embeddings are added to q and k outside the residual stream; not supported by the graph."
            )
        self.model = model
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        self.n_kv_heads = cfg.n_heads if getattr(cfg, "ungroup_grouped_query_attention", False) else n_heads(cfg, "k")
        group = self.n_heads // self.n_kv_heads
        senders = [Sender("embed", "embed", None, None)]
        receivers = []
        for layer in range(self.n_layers):
            upstream = len(senders)
            for h in range(self.n_heads):
                receivers.append(
                    Receiver(f"a{layer}.h{h}.q", "q", layer, h, (h,), INPUT_HOOKS["q"].format(L=layer), upstream)
                )
            for kind in ("k", "v"):
                for g in range(self.n_kv_heads):
                    receivers.append(
                        Receiver(
                            f"a{layer}.kv{g}.{kind}",
                            kind,
                            layer,
                            g,
                            tuple(range(g * group, (g + 1) * group)),
                            INPUT_HOOKS[kind].format(L=layer),
                            upstream,
                        )
                    )
            senders += [Sender(f"a{layer}.h{h}", "head", layer, h) for h in range(self.n_heads)]
            receivers.append(
                Receiver(f"m{layer}", "mlp_in", layer, None, (), INPUT_HOOKS["mlp_in"].format(L=layer), len(senders))
            )
            senders.append(Sender(f"m{layer}", "mlp", layer, None))
        receivers.append(
            Receiver(LOGITS, LOGITS, None, None, (), f"blocks.{self.n_layers - 1}.hook_resid_post", len(senders))
        )
        self.senders, self.receivers = senders, receivers
        self._sender_index = {s.name: i for i, s in enumerate(senders)}
        self._receiver_index = {r.name: i for i, r in enumerate(receivers)}
        rows = []
        for j, r in enumerate(receivers):
            for i in range(r.n_upstream):
                s = senders[i]
                rows.append(
                    (
                        s.name,
                        r.name,
                        r.component,
                        r.layer,
                        r.head,
                        ",".join(map(str, r.query_heads)),
                        s.component,
                        s.layer,
                        s.head,
                        r.hook_name,
                        i,
                        j,
                    )
                )
        edges = pd.DataFrame(rows, columns=EDGE_COLUMNS)
        for column in ("layer", "head", "upstream_layer", "upstream_head"):
            edges[column] = pd.array(edges[column], dtype="Int64")
        self.edges = edges

    def __len__(self) -> int:
        return len(self.edges)

    def __repr__(self) -> str:
        return (
            f"ComputationGraph({len(self.senders)} senders, {len(self.receivers)} receivers, {len(self.edges)} edges)"
        )

    def sender_index(self, name: str) -> int:
        if name not in self._sender_index:
            raise UnknownSiteError(
                f"upstream={name!r} is not a sender of this graph.{did_you_mean(name, self._sender_index)} {self._range_hint()}"
            )
        return self._sender_index[name]

    def receiver_index(self, name: str) -> int:
        if name not in self._receiver_index:
            raise UnknownSiteError(
                f"downstream={name!r} is not a receiver of this graph.{did_you_mean(name, self._receiver_index)} {self._range_hint()}"
            )
        return self._receiver_index[name]

    def _range_hint(self) -> str:
        return (
            f"Senders: 'embed', 'a{{L}}.h{{H}}', 'm{{L}}'; receivers: 'a{{L}}.h{{H}}.q', 'a{{L}}.kv{{G}}.k' / '.v', 'm{{L}}', 'logits'; "
            f"layers 0..{self.n_layers - 1}, query heads 0..{self.n_heads - 1}, key/value heads 0..{self.n_kv_heads - 1}."
        )

    def edge_ids(self, edges) -> list[int]:
        """Row labels of `edges`: a subset of `self.edges` (any frame with upstream / downstream columns), or (upstream, downstream) name pairs."""
        if isinstance(edges, pd.DataFrame):
            if not {"upstream", "downstream"} <= set(edges.columns):
                raise InterpError(
                    "edges: a DataFrame of edges needs the columns 'upstream' and 'downstream' (rows of graph.edges)."
                )
            pairs = list(zip(edges["upstream"], edges["downstream"]))
        else:
            pairs = list(edges)
        lookup = {(u, v): i for i, (u, v) in enumerate(zip(self.edges["upstream"], self.edges["downstream"]))}
        ids = []
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise InterpError(f"edges: {pair!r} is not an (upstream, downstream) pair of node names.")
            if pair not in lookup:
                u, v = pair
                i, j = self.sender_index(u), self.receiver_index(v)  # unknown names raise here
                raise InterpError(
                    f"edges: ({u!r}, {v!r}) is no edge: {u!r} is not upstream of {v!r} (sender {i} of {len(self.senders)}, receiver reads the first {self.receivers[j].n_upstream})."
                )
            ids.append(lookup[pair])
        if not ids:
            raise InterpError(
                "edges is empty: pass at least one edge (rows of graph.edges or (upstream, downstream) pairs)."
            )
        return ids


def check_task_model(graph: ComputationGraph, model: HookedTransformer) -> None:
    if graph.model is not model:
        raise InterpError("graph: built for another model than task.model; build it with ComputationGraph(task.model).")


def task_graph(task, graph: ComputationGraph | None) -> ComputationGraph:
    """`graph` checked against the task's model, or the task model's graph when None."""
    if graph is None:
        return ComputationGraph(task.model)
    if not isinstance(graph, ComputationGraph):
        raise InterpError(f"graph: expected a ComputationGraph (or None to build one), got {type(graph).__name__}.")
    check_task_model(graph, task.model)
    return graph


@contextlib.contextmanager
def split_inputs(model: HookedTransformer) -> Iterator[None]:
    """Inside the block, the model exposes each head's q / k / v input and each MLP's input as hooks."""
    before = (model.cfg.use_split_qkv_input, model.cfg.use_hook_mlp_in)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        yield
    finally:
        model.set_use_split_qkv_input(before[0])
        model.set_use_hook_mlp_in(before[1])


def sender_hooks(graph: ComputationGraph) -> list[str]:
    return ["blocks.0.hook_resid_pre"] + [
        f"blocks.{layer}.{name}" for layer in range(graph.n_layers) for name in ("attn.hook_z", "hook_mlp_out")
    ]


def sender_slices(graph: ComputationGraph) -> dict[str, tuple[int, int]]:
    """Per sender hook, the range of sender indices it produces (embedding, a layer's heads, a layer's MLP)."""
    slices, i = {"blocks.0.hook_resid_pre": (0, 1)}, 1
    for layer in range(graph.n_layers):
        slices[f"blocks.{layer}.attn.hook_z"] = (i, i + graph.n_heads)
        slices[f"blocks.{layer}.hook_mlp_out"] = (i + graph.n_heads, i + graph.n_heads + 1)
        i += graph.n_heads + 1
    return slices


def stack_senders(graph: ComputationGraph, acts: dict[str, Tensor]) -> Float[Tensor, "senders batch pos d_model"]:
    """Every sender's output from a cache of `sender_hooks` (a head's output is its z through its rows of W_O)."""
    model, parts = graph.model, [acts["blocks.0.hook_resid_pre"][None]]
    for layer in range(graph.n_layers):
        z = acts[f"blocks.{layer}.attn.hook_z"]
        parts.append(torch.einsum("bphk,hkd->hbpd", z, model.blocks[layer].attn.W_O))
        parts.append(acts[f"blocks.{layer}.hook_mlp_out"][None])
    return torch.cat(parts)


def sender_outputs(
    graph: ComputationGraph, tokens: Tensor, attention_mask: Tensor | None = None
) -> Float[Tensor, "senders batch pos d_model"]:
    with torch.no_grad():
        return stack_senders(
            graph,
            capture(
                graph.model, tokens, sender_hooks(graph), attention_mask=attention_mask, stop_at_layer=graph.n_layers
            ),
        )


def sender_deltas(
    task: PatchingTask, graph: ComputationGraph, extra_clean_hooks: Sequence[str] = ()
) -> tuple[Tensor, dict[str, Tensor]]:
    """corrupted - clean output of every sender, and the clean run's activations at `extra_clean_hooks`."""
    with torch.no_grad():
        clean = capture(
            task.model,
            task.clean_tokens,
            set(sender_hooks(graph)) | set(extra_clean_hooks),
            attention_mask=task.clean_mask,
            stop_at_layer=graph.n_layers,
        )
        delta = sender_outputs(graph, task.corrupted_tokens, task.corrupted_mask) - stack_senders(graph, clean)
    return delta, clean
