"""The hand-set 2-layer construction: continuous thought c = |V_c|^(-1/2) * sum of u_v over V_c.

The same architecture family as the trained model (LayerNorm, GELU, learned positions) with weights
written into named subspaces of a "logical" residual. Every logical axis is a column of a basis B
orthogonal to the all-ones vector, so each residual has zero mean and LayerNorm only rescales it:
LN(x) = sqrt(d_model) * x / |x|.

    content   u_v, the node embeddings (the thoughts live here)
    src       layer 1, head 0: at an edge's target slot, the edge's source (previous-slot copy)
    new       layer 2: mean of the targets of edges whose source is in the current thought
    last      layer 1, head 1: at [A], the last thought
    cand      layer 1, head 2: at [A], the mean of the two candidates
    answer    layer-2 MLP at [A]: the score of each candidate
    src_slot / tgt_slot   position codes of edge i's source and target slots
    one, bos, query, last_flag, cand_flag, amark   flags

Layer 2's MLP thresholds content + new per node (1 if positive, else 0) and writes it, scaled by
`amplitude`, into content; ln_final (weight 1/sqrt(d_model)) divides by the norm, which gives the
|V_c|^(-1/2) normalisation up to O(1/amplitude). Attention uses BOS as a sink whose score sits
between "no match" and the weakest match, so positions with nothing to read read nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuits.reachability.tokens import SequenceLayout

FLAGS = ("one", "bos", "query", "last_flag", "cand_flag", "amark")


@dataclass(frozen=True)
class ConstructionConfig:
    attention_gain: float = 30.0  # layer-2 score gap (sink over non-matches, weakest match over sink)
    threshold_gain: float = 100.0  # MLP slope: any positive content/new coordinate reaches saturation
    amplitude: float = 1e4  # the MLP's write into content; the thought's error is O(1 / amplitude)
    gelu_offset: float = 6.0  # GELU(z - 6) - GELU(z - 7) is a clean 0 / 1 step


class LogicalAxes:
    """Named blocks of logical residual coordinates."""

    def __init__(self, n_nodes: int, n_edges: int):
        sizes = {
            "content": n_nodes,
            "src": n_nodes,
            "new": n_nodes,
            "last": n_nodes,
            "cand": n_nodes,
            "answer": n_nodes,
            "src_slot": n_edges,
            "tgt_slot": n_edges,
        }
        sizes |= {flag: 1 for flag in FLAGS}
        self.start, offset = {}, 0
        for name, size in sizes.items():
            self.start[name] = offset
            offset += size
        self.size = offset

    def __call__(self, name: str, index: int = 0) -> int:
        return self.start[name] + index

    def block(self, name: str, n: int) -> slice:
        return slice(self.start[name], self.start[name] + n)


def zero_mean_basis(d_model: int) -> Float[Tensor, "d_model d_logical"]:
    """Orthonormal columns spanning the vectors orthogonal to all-ones (d_logical = d_model - 1)."""
    spanning = torch.cat(
        [torch.ones(d_model, 1, dtype=torch.float64), torch.eye(d_model, dtype=torch.float64)[:, : d_model - 1]], 1
    )
    q, _ = torch.linalg.qr(spanning)
    return q[:, 1:]


def construction_model(layout: SequenceLayout, config: ConstructionConfig = ConstructionConfig()) -> HookedTransformer:
    """A HookedTransformer whose continuous thoughts are the normalised reachable sets (see module doc)."""
    graph = layout.graph
    n, e = graph.n_node_ids, graph.n_edges
    ax = LogicalAxes(n, e)
    d_model, d_head = ax.size + 1, max(n, e) + 1
    sink = d_head - 1
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=d_model,
        n_heads=3,
        d_head=d_head,
        d_mlp=3 * n,
        d_vocab=layout.d_vocab,
        n_ctx=layout.seq_len,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        default_prepend_bos=False,
        model_name="reachability-construction",
        dtype=torch.float32,
    )
    model = HookedTransformer(cfg, move_to_device=False)
    s, root_d = math.sqrt(d_model), math.sqrt(d_head)  # LN output scale; TL divides scores by sqrt(d_head)
    lg = {
        name: torch.zeros(shape, dtype=torch.float64)
        for name, shape in {
            "E": (layout.d_vocab, ax.size),
            "pos": (layout.seq_len, ax.size),
            "U": (ax.size, layout.d_vocab),
            "Q0": (3, ax.size, d_head),
            "K0": (3, ax.size, d_head),
            "V0": (3, ax.size, d_head),
            "O0": (3, d_head, ax.size),
            "Q1": (3, ax.size, d_head),
            "K1": (3, ax.size, d_head),
            "V1": (3, ax.size, d_head),
            "O1": (3, d_head, ax.size),
            "in1": (ax.size, 3 * n),
            "b_in1": (3 * n,),
            "out1": (3 * n, ax.size),
        }.items()
    }

    # embeddings and position codes (unit coordinates; LN sees their norms, worked out below)
    for v in range(n):
        lg["E"][v, ax("content", v)] = 1
    lg["E"][layout.special("BOS"), ax("bos")] = 1
    lg["pos"][:, ax("one")] = 1
    for i in range(e):
        source, target, _ = layout.edge_positions(i)
        lg["pos"][source, ax("src_slot", i)] = 1
        lg["pos"][target, ax("tgt_slot", i)] = 1
    for p in [layout.root, *layout.chain]:
        lg["pos"][p, ax("query")] = 1
    lg["pos"][layout.chain[-1] if layout.n_chain else layout.root, ax("last_flag")] = 1
    for p in layout.candidate_positions:
        lg["pos"][p, ax("cand_flag")] = 1
    lg["pos"][layout.answer_marker, ax("amark")] = 1

    # layer 1: every query reads the BOS sink at half strength; slot-specific matches score higher
    beta = 3.0 * root_d
    for h in range(3):
        lg["Q0"][h, ax("one"), sink] = 0.5 * beta
        lg["K0"][h, ax("bos"), sink] = 1
    for i in range(e):  # head 0: target slot i reads source slot i; norms sqrt(3) at both ends
        lg["Q0"][0, ax("tgt_slot", i), i] = beta
        lg["K0"][0, ax("src_slot", i), i] = 1
    lg["Q0"][1, ax("amark"), 0] = 2 * beta  # head 1: [A] reads the last latent
    lg["K0"][1, ax("last_flag"), 0] = 1
    lg["Q0"][2, ax("amark"), 0] = 2 * beta  # head 2: [A] reads both candidate slots equally
    lg["K0"][2, ax("cand_flag"), 0] = 1
    # values undo LN's rescaling: source slots and candidate slots have |x| = sqrt(3), the last latent 2
    for h, target_block, norm in ((0, "src", math.sqrt(3)), (1, "last", 2.0), (2, "cand", math.sqrt(3))):
        for v in range(n):
            lg["V0"][h, ax("content", v), v] = norm / s
            lg["O0"][h, v, ax(target_block, v)] = 1

    # layer 2, head 0: the thought's content queries the copied sources; the sink sits at half the weakest match
    n_reach = 1 + graph.n_levels * graph.max_width
    # weakest match: |x| <= 2 at a thought position, t_v >= n_reach^(-1/2), |x| = 2 at a target slot
    beta2 = 8 * config.attention_gain * root_d * math.sqrt(n_reach) / s**2
    for v in range(n):
        lg["Q1"][0, ax("content", v), v] = beta2
        lg["K1"][0, ax("src", v), v] = 1
        lg["V1"][0, ax("content", v), v] = 2.0 / s  # target slots have |x| = 2 after layer 1
        lg["O1"][0, v, ax("new", v)] = 1
    lg["Q1"][0, ax("one"), sink] = beta2 / (2 * math.sqrt(2) * math.sqrt(n_reach))  # BOS has |x| = sqrt(2)
    lg["K1"][0, ax("bos"), sink] = 1
    for h in (1, 2):  # unused heads read the sink only and write nothing
        lg["Q1"][h, ax("one"), sink] = 1
        lg["K1"][h, ax("bos"), sink] = 1

    # layer-2 MLP: neurons 0..2n-1 threshold content + new per node; 2n..3n-1 score the candidates at [A]
    k, off = config.threshold_gain, config.gelu_offset
    for v in range(n):
        for j, shift in ((v, off), (n + v, off + 1)):
            lg["in1"][ax("content", v), j] = k
            lg["in1"][ax("new", v), j] = k
            lg["b_in1"][j] = -shift
        lg["out1"][v, ax("content", v)] = config.amplitude
        lg["out1"][n + v, ax("content", v)] = -config.amplitude
    # at [A], |x|^2 = amark + one + |last thought|^2 + |cand|^2 = 1 + 1 + 1 + 1/2; a candidate's cand
    # coordinate is cand_value, and the gate keeps non-candidates (cand = 0) below zero however reachable
    cand_value = s * 0.5 / math.sqrt(3.5)
    gate = 8.0
    for v in range(n):
        lg["in1"][ax("last", v), 2 * n + v] = k
        lg["in1"][ax("cand", v), 2 * n + v] = gate * k
        lg["b_in1"][2 * n + v] = -gate * k * 0.9 * cand_value
        lg["out1"][2 * n + v, ax("answer", v)] = 1
        lg["U"][ax("answer", v), v] = 1

    basis = zero_mean_basis(d_model)
    to_model = lambda m: (m @ basis.T).float()  # noqa: E731  (rows are logical vectors)
    from_model = lambda m: (basis @ m).float()  # noqa: E731  (columns read logical coordinates)
    state = {
        name: (p if name.endswith(("IGNORE", "mask")) else torch.zeros_like(p))
        for name, p in model.state_dict().items()
    }
    state["embed.W_E"] = to_model(lg["E"])
    state["pos_embed.W_pos"] = to_model(lg["pos"])
    state["unembed.W_U"] = from_model(lg["U"])
    for layer in (0, 1):
        for part in "QKV":
            state[f"blocks.{layer}.attn.W_{part}"] = torch.stack(
                [from_model(lg[f"{part}{layer}"][h]) for h in range(3)]
            )
        state[f"blocks.{layer}.attn.W_O"] = torch.stack([to_model(lg[f"O{layer}"][h]) for h in range(3)])
        state[f"blocks.{layer}.ln1.w"] = torch.ones(d_model)
        state[f"blocks.{layer}.ln2.w"] = torch.ones(d_model)
    state["blocks.1.mlp.W_in"] = from_model(lg["in1"])
    state["blocks.1.mlp.b_in"] = lg["b_in1"].float()
    state["blocks.1.mlp.W_out"] = to_model(lg["out1"])
    state["ln_final.w"] = torch.full((d_model,), 1 / s)
    model.load_state_dict(state)
    return model.eval()


def reachable_set_vectors(model: HookedTransformer, problems, n_steps: int) -> Float[Tensor, "batch n_steps d_model"]:
    """The ideal thoughts: |V_c|^(-1/2) * sum of W_E[v] over V_c, for c = 1..n_steps."""
    w_e = model.W_E.detach()
    rows = []
    for p in problems:
        rows.append(
            torch.stack(
                [
                    w_e[sorted(p.reachable_within(c))].sum(0) / math.sqrt(len(p.reachable_within(c)))
                    for c in range(1, n_steps + 1)
                ]
            )
        )
    return torch.stack(rows)
