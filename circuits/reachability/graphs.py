"""Random reachability problems: a DAG (edges a -> b with a < b), a root, two candidates of which one is reachable.

Each graph has two components with the same level structure: the root's component A (every node
reachable) and a decoy component B whose source is not the root (no edge leads from A into B). The
reachable candidate is an A node at distance >= `min_distance`, the unreachable one a B node on the
same level, so local statistics (level, label range, in-degree) do not give the answer away.
Node labels are drawn from `n_node_ids`. With `shuffle_ids` (the default) they are assigned at random,
so a label says nothing about a node's level (no label-order shortcut); without it they are assigned in
level order, so every edge goes a -> b with a < b (ProsQA's convention).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property

from interp.errors import InterpError


@dataclass(frozen=True)
class GraphConfig:
    n_node_ids: int = 24  # node vocabulary; a graph uses a random subset
    n_levels: int = 3  # depth D: the reachable candidate is at most D steps from the root
    min_width: int = 2  # nodes per level per component; >= 2 makes the frontier branch (issue 14)
    max_width: int = 2
    n_edges: int = 16  # every graph has exactly this many edges, so every sequence has one length
    min_distance: int = 2  # shortest root -> reachable-candidate distance
    shuffle_ids: bool = True  # random labels per graph; False: labels in level order (a < b on every edge)

    def __post_init__(self):
        most_nodes = 2 + 2 * self.n_levels * self.max_width
        fewest_edges = 2 * self.n_levels * self.max_width
        checks = [
            (self.n_levels >= 1, f"n_levels={self.n_levels} must be >= 1"),
            (
                1 <= self.min_width <= self.max_width,
                f"min_width={self.min_width}, max_width={self.max_width}: need 1 <= min_width <= max_width",
            ),
            (
                self.n_node_ids >= most_nodes,
                f"n_node_ids={self.n_node_ids} is smaller than the largest graph ({most_nodes} nodes); raise n_node_ids or lower max_width / n_levels",
            ),
            (
                self.n_edges >= fewest_edges,
                f"n_edges={self.n_edges} cannot hold the {fewest_edges} backbone edges of the widest graph; raise n_edges to at least {fewest_edges}",
            ),
            (
                1 <= self.min_distance <= self.n_levels,
                f"min_distance={self.min_distance} must be in 1..n_levels={self.n_levels}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InterpError(f"GraphConfig: {message}.")


@dataclass(frozen=True)
class Problem:
    """One problem. `distance[v]` is the shortest distance from the root (absent: unreachable)."""

    nodes: tuple[int, ...]  # node ids in the graph, ascending
    edges: tuple[tuple[int, int], ...]  # in the order they appear in the prompt (shuffled)
    root: int
    candidates: tuple[int, int]  # in prompt order
    answer: int  # the reachable candidate
    path: tuple[int, ...]  # a shortest path root -> answer, both ends included
    distance: dict[int, int]

    @property
    def graph_key(self) -> tuple:
        """Identity of the graph (edge set), for splitting datasets by graph."""
        return tuple(sorted(self.edges))

    def reachable_within(self, steps: int) -> frozenset[int]:
        """V_c: the nodes at distance <= steps from the root."""
        return frozenset(v for v, d in self.distance.items() if d <= steps)

    def frontier(self, steps: int) -> frozenset[int]:
        """The nodes at distance exactly `steps` from the root."""
        return frozenset(v for v, d in self.distance.items() if d == steps)

    @property
    def n_hops(self) -> int:
        """The answer's distance from the root (the number of thoughts at the final curriculum stage)."""
        return len(self.path) - 1

    def on_shortest_paths(self, steps: int) -> frozenset[int]:
        """The nodes at distance `steps` that lie on some shortest root -> answer path (the authors' neighbor_k)."""
        return frozenset(v for v in self.frontier(steps) if v in self._path_nodes)

    @cached_property
    def _path_nodes(self) -> frozenset[int]:
        # v lies on a shortest root -> answer path iff it can reach the answer in exactly d(answer) - d(v) steps
        children: dict[int, list[int]] = {}
        for a, b in self.edges:
            children.setdefault(a, []).append(b)
        on, frontier = {self.answer}, {self.answer}
        for d in range(self.distance[self.answer] - 1, -1, -1):
            frontier = {
                v for v, dv in self.distance.items() if dv == d and any(c in frontier for c in children.get(v, ()))
            }
            on |= frontier
        return frozenset(on)


def bfs_distances(edges, root: int) -> dict[int, int]:
    children: dict[int, list[int]] = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
    distance, layer = {root: 0}, [root]
    while layer:
        nxt = []
        for a in layer:
            for b in children.get(a, ()):
                if b not in distance:
                    distance[b] = distance[a] + 1
                    nxt.append(b)
        layer = nxt
    return distance


def shortest_path(edges, distance: dict[int, int], target: int, rng: random.Random) -> tuple[int, ...]:
    """Walk back from target through parents one step closer to the root (ties broken at random)."""
    path = [target]
    while distance[path[-1]] > 0:
        parents = sorted(a for a, b in edges if b == path[-1] and distance.get(a) == distance[path[-1]] - 1)
        path.append(rng.choice(parents))
    return tuple(reversed(path))


def make_problem(config: GraphConfig, rng: random.Random) -> Problem:
    while True:  # extra A -> A edges can shortcut every deep node; then draw again
        problem = _draw_problem(config, rng)
        if problem is not None:
            return problem


def _draw_problem(config: GraphConfig, rng: random.Random) -> Problem | None:
    levels = range(1, config.n_levels + 1)
    # (component, level) slots; component 0 holds the root, 1 the decoy source
    slots = [(0, 0), (1, 0)] + [
        (comp, lvl) for lvl in levels for comp in (0, 1) for _ in range(rng.randint(config.min_width, config.max_width))
    ]
    order = sorted(range(len(slots)), key=lambda i: (slots[i][1], rng.random()))
    labels = rng.sample(range(config.n_node_ids), len(slots))
    if not config.shuffle_ids:
        labels.sort()
    node_of = {slot_index: labels[rank] for rank, slot_index in enumerate(order)}
    by = {}
    for i, key in enumerate(slots):
        by.setdefault(key, []).append(node_of[i])
    level_of = {node_of[i]: slots[i][1] for i in range(len(slots))}
    comp_of = {node_of[i]: slots[i][0] for i in range(len(slots))}

    edges = {(rng.choice(by[(comp, lvl - 1)]), v) for comp in (0, 1) for lvl in levels for v in by[(comp, lvl)]}
    nodes = sorted(level_of)
    # extra edges: any a -> b with level(a) < level(b) (level order, not label order), except A -> B (that would make B reachable)
    allowed = [
        (a, b)
        for a in nodes
        for b in nodes
        if level_of[a] < level_of[b] and not (comp_of[a] == 0 and comp_of[b] == 1) and (a, b) not in edges
    ]
    edges |= set(rng.sample(allowed, config.n_edges - len(edges)))

    distance = bfs_distances(edges, by[(0, 0)][0])
    far = [v for v in distance if distance[v] >= config.min_distance]
    if not far:
        return None
    target_distance = rng.choice(sorted({distance[v] for v in far}))
    answer = rng.choice(sorted(v for v in far if distance[v] == target_distance))
    decoy = rng.choice(by[(1, level_of[answer])])
    edge_list = sorted(edges)
    rng.shuffle(edge_list)
    candidates = (answer, decoy) if rng.random() < 0.5 else (decoy, answer)
    return Problem(
        tuple(nodes),
        tuple(edge_list),
        by[(0, 0)][0],
        candidates,
        answer,
        shortest_path(edges, distance, answer, rng),
        distance,
    )


def make_problems(config: GraphConfig, n: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    return [make_problem(config, rng) for _ in range(n)]


def split_by_graph(problems: list[Problem], test_fraction: float, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Train/test split in which no graph (edge set) appears on both sides."""
    if not 0 < test_fraction < 1:
        raise InterpError(f"test_fraction={test_fraction} must be strictly between 0 and 1.")
    keys = sorted({p.graph_key for p in problems})
    random.Random(seed).shuffle(keys)
    test_keys = set(keys[: max(1, round(test_fraction * len(keys)))])
    return [p for p in problems if p.graph_key not in test_keys], [p for p in problems if p.graph_key in test_keys]
