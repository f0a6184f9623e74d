"""Communication graphs for decentralized learning, built by name.

Every builder returns an undirected ``networkx.Graph`` on nodes ``0..m-1`` without
self-loops, so that node ``i`` is client ``i`` and row ``i`` of the mixing matrix.
Gossip averaging only reaches consensus on a connected graph, so the random builders
re-draw until connected and :func:`build_graph` rejects anything else (DFedSAM's
assumption on W: Shi et al., ICML 2023, arXiv 2302.04083).

Randomness: networkx's random builders draw from Python's ``random.Random``. Seeding
it with the integer seed makes ``random_regular(m, d, seed=0)`` the same graph as
``nx.random_regular_graph(d, m, seed=0)``, which is how the reference spectral
numbers in the tests were computed. Per-round draws use a seed mixed from ``(seed, round)`` by
``numpy.random.SeedSequence``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal, TypedDict

import networkx as nx
import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_MAX_TRIES = 100


class TopologyError(ValueError):
    """A topology that cannot be built or cannot be gossiped on (e.g. a disconnected graph).

    A ``ValueError`` so that pydantic validators raising it report a validation error.
    """


# ---------------------------------------------------------------------------------------
# Checks


def require_connected(
    G: nx.Graph, what: str, fix: str = "raise p or degree, or use another topology"
) -> None:
    """Reject a disconnected graph: on one, λ(W) = 1 and the components never agree."""
    if G.number_of_nodes() == 0:
        raise TopologyError(f"topology {what} has no nodes")
    if not nx.is_connected(G):
        components = nx.number_connected_components(G)
        raise TopologyError(
            f"topology {what} is not connected ({components} components); "
            f"gossip needs a connected graph: {fix}"
        )


def _require_num_nodes(num_nodes: int) -> None:
    if num_nodes < 1:
        raise TopologyError(f"num_nodes must be >= 1, got {num_nodes}")


def _connected_draw(
    draw: Callable[[random.Random], nx.Graph], seed: int, max_tries: int, what: str, fix: str
) -> nx.Graph:
    """Draw from one seeded stream until the graph is connected, at most `max_tries` times.

    Conditioning on connectedness (rather than patching edges in) keeps the graph's
    distribution the builder's own, restricted to connected graphs.
    """
    stream = random.Random(seed)
    for _ in range(max_tries):
        G = draw(stream)
        if nx.is_connected(G):
            return G
    raise TopologyError(
        f"topology {what} was not connected in any of {max_tries} draws; "
        f"gossip needs a connected graph: {fix}"
    )


# ---------------------------------------------------------------------------------------
# Builders


def ring(num_nodes: int) -> nx.Graph:
    """Cycle 0-1-...-(m-1)-0: the sparsest connected regular graph, λ → 1 as m grows."""
    _require_num_nodes(num_nodes)
    # cycle_graph(1) has a self-loop; for m <= 2 the ring is the complete graph.
    return nx.cycle_graph(num_nodes) if num_nodes >= 3 else nx.complete_graph(num_nodes)


def lattice_shape(
    num_nodes: int, rows: int | None = None, cols: int | None = None
) -> tuple[int, int]:
    """Rows and columns of a 2-D lattice on `num_nodes` nodes.

    An unset side is m divided by the other; with neither set, the most square
    factorisation (rows <= cols), since a long thin lattice mixes almost as slowly as
    a ring. A prime m gives 1 x m, i.e. a ring (torus) or a path (grid).
    """
    _require_num_nodes(num_nodes)
    given = f"rows={rows}, cols={cols}"
    if rows is None and cols is None:
        rows = max(r for r in range(1, math.isqrt(num_nodes) + 1) if num_nodes % r == 0)
    if rows is None:
        rows = num_nodes // cols
    if cols is None:
        cols = num_nodes // rows
    if rows * cols != num_nodes:
        raise TopologyError(
            f"rows/cols: a lattice needs num_nodes = rows*cols, got {given} for "
            f"num_nodes={num_nodes}; leave rows and cols unset to factor m automatically"
        )
    return rows, cols


def _lattice(num_nodes: int, rows: int | None, cols: int | None, periodic: bool) -> nx.Graph:
    rows, cols = lattice_shape(num_nodes, rows, cols)
    G = nx.grid_2d_graph(rows, cols, periodic=periodic)
    # Row-major numbering: node (r, c) is client r*cols + c.
    return nx.relabel_nodes(G, {(r, c): r * cols + c for r, c in G.nodes})


def torus(num_nodes: int, rows: int | None = None, cols: int | None = None) -> nx.Graph:
    """2-D lattice with wrap-around: every node has degree 4 (for rows, cols >= 3)."""
    return _lattice(num_nodes, rows, cols, periodic=True)


def grid(num_nodes: int, rows: int | None = None, cols: int | None = None) -> nx.Graph:
    """2-D lattice without wrap-around; the boundary makes it mix slower than the torus."""
    return _lattice(num_nodes, rows, cols, periodic=False)


def exponential(num_nodes: int) -> nx.Graph:
    """i ↔ (i + 2^k) mod m for every 2^k < m: O(log m) degree and a λ well below the ring's."""
    _require_num_nodes(num_nodes)
    G = nx.empty_graph(num_nodes)
    hop = 1
    while hop < num_nodes:
        G.add_edges_from(
            (i, (i + hop) % num_nodes) for i in range(num_nodes) if (i + hop) % num_nodes != i
        )
        hop *= 2
    return G


def erdos_renyi(
    num_nodes: int, p: float, seed: int, max_tries: int = DEFAULT_MAX_TRIES
) -> nx.Graph:
    """G(m, p) conditioned on being connected (re-drawn up to `max_tries` times).

    Drawn with networkx's O(m + edges) sampler (not the O(m²) one), and refused at
    once when connection is hopeless: with μ = m(1-p)^(m-1) expected isolated
    vertices, P(connected) <= P(none isolated) ≈ e^-μ, below e^-50 for μ > 50.
    """
    _require_num_nodes(num_nodes)
    threshold = math.log(num_nodes) / num_nodes if num_nodes > 1 else 0.0
    what = f"erdos_renyi(p={p}) on {num_nodes} nodes"
    fix = f"raise p (G(m, p) is connected w.h.p. above ln(m)/m = {threshold:.3g})"
    if p < 1 and num_nodes * math.exp((num_nodes - 1) * math.log1p(-p)) > 50:
        raise TopologyError(f"topology {what} is almost surely not connected; gossip needs "
                            f"a connected graph: {fix}")
    return _connected_draw(
        lambda stream: nx.fast_gnp_random_graph(num_nodes, p, seed=stream),
        seed, max_tries, what=what, fix=fix,
    )


def random_regular(
    num_nodes: int, degree: int, seed: int, max_tries: int = DEFAULT_MAX_TRIES
) -> nx.Graph:
    """Uniform random `degree`-regular graph conditioned on being connected."""
    _require_num_nodes(num_nodes)
    _check_regular_degree(degree, num_nodes)
    return _connected_draw(
        lambda stream: nx.random_regular_graph(degree, num_nodes, seed=stream),
        seed,
        max_tries,
        what=f"random_regular(degree={degree}) on {num_nodes} nodes",
        fix="raise degree (degree >= 3 is connected w.h.p.)",
    )


def small_world(
    num_nodes: int, k: int, p: float, seed: int, max_tries: int = DEFAULT_MAX_TRIES
) -> nx.Graph:
    """Watts–Strogatz: a ring lattice to k nearest neighbours, each edge rewired with prob. p.

    Re-drawn until connected, like ``nx.connected_watts_strogatz_graph``.
    """
    _require_num_nodes(num_nodes)
    _check_small_world_k(k, num_nodes)
    return _connected_draw(
        lambda stream: nx.watts_strogatz_graph(num_nodes, k, p, seed=stream),
        seed,
        max_tries,
        what=f"small_world(k={k}, p={p}) on {num_nodes} nodes",
        fix="raise k or lower p",
    )


def star(num_nodes: int) -> nx.Graph:
    """Hub 0 joined to every other node: the server topology written as a graph."""
    _require_num_nodes(num_nodes)
    return nx.star_graph(num_nodes - 1)


def complete(num_nodes: int) -> nx.Graph:
    """Every pair joined; Metropolis–Hastings gives W = 11ᵀ/m, exact averaging in one step."""
    _require_num_nodes(num_nodes)
    return nx.complete_graph(num_nodes)


def edge_list(path: Path, num_nodes: int) -> nx.Graph:
    """Graph from a text file of lines ``i j`` (``#`` starts a comment), on nodes 0..m-1.

    Nodes that appear on no line are still in the graph (isolated), so that a missing
    client shows up as a disconnected graph rather than as a silently smaller one.
    """
    _require_num_nodes(num_nodes)
    G = nx.empty_graph(num_nodes)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"topology.path: cannot read edge list {path}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{line_number}"
        if len(fields) != 2:
            raise TopologyError(f"{where}: expected two node ids 'i j', got {line.strip()!r}")
        try:
            i, j = (int(f) for f in fields)
        except ValueError:
            raise TopologyError(
                f"{where}: node ids must be integers, got {line.strip()!r}"
            ) from None
        for node in (i, j):
            if not 0 <= node < num_nodes:
                raise TopologyError(f"{where}: node {node} is outside 0..{num_nodes - 1}")
        if i == j:
            raise TopologyError(f"{where}: self-loop {i} {j}; W's diagonal is derived, drop it")
        G.add_edge(i, j)
    return G


# ---------------------------------------------------------------------------------------
# Scenario specs


def _check_regular_degree(degree: int, num_nodes: int) -> None:
    if degree >= num_nodes:
        raise TopologyError(
            f"degree={degree}: a regular graph on num_nodes={num_nodes} needs degree < "
            "num_nodes; lower degree"
        )
    if degree * num_nodes % 2:
        raise TopologyError(
            f"degree={degree}: degree*num_nodes must be even (a regular graph has "
            f"degree*num_nodes/2 edges), got {degree}*{num_nodes}; change degree"
        )


def _check_small_world_k(k: int, num_nodes: int) -> None:
    if k >= num_nodes:
        raise TopologyError(f"k={k}: needs k < num_nodes={num_nodes}; lower k")


class TopologySpec(BaseModel):
    """A topology as a scenario writes it: the fields and checks every topology shares.

    A topology subclasses it with `name: Literal["its_name"] = "its_name"`, a one-line
    `summary`, its own fields and `build`; it is listed in its module's `TOPOLOGIES` and
    registered by an entry point of the group `fedsim.topologies`.

    Checks that need the number of nodes run in :func:`build_graph`, and at validation
    when the caller passes ``context={"num_nodes": m}`` (see :func:`parse_topology_spec`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    summary: ClassVar[str] = ""
    is_random: ClassVar[bool] = False

    name: str
    time_varying: Literal["none", "random_matching", "resample"] = Field(
        default="none",
        description=(
            "'none': one fixed graph. 'random_matching': each round a random maximal matching "
            "of the graph's edges (pairwise gossip). 'resample': each round a fresh draw of "
            "a random topology. Only the union over rounds needs to be connected."
        ),
    )

    @field_validator("time_varying")
    @classmethod
    def _resample_needs_random_topology(cls, time_varying: str) -> str:
        if time_varying == "resample" and not cls.is_random:
            raise ValueError(
                "time_varying='resample' re-draws a random graph each round, but this "
                "topology is deterministic; use erdos_renyi, random_regular or small_world, "
                "or time_varying='random_matching'"
            )
        return time_varying

    @model_validator(mode="after")
    def _fits_num_nodes(self, info: ValidationInfo) -> TopologySpec:
        num_nodes = (info.context or {}).get("num_nodes")
        if num_nodes is not None:
            self.check_num_nodes(num_nodes)
        return self

    def check_num_nodes(self, num_nodes: int) -> None:
        """Raise :class:`TopologyError` if this topology cannot be built on `num_nodes`."""
        _require_num_nodes(num_nodes)

    def expected_edges(self, num_nodes: int) -> float:
        """About how many edges the graph has (bounded degree by default: a small multiple
        of `num_nodes`, never too many to build)."""
        return 0.0

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        """The fixed graph on `num_nodes` nodes; `seed` is ignored by deterministic ones."""
        raise NotImplementedError

    def __str__(self) -> str:
        params = self.model_dump(exclude={"name"}, exclude_defaults=True)
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in params.items())})"


class RingSpec(TopologySpec):
    name: Literal["ring"] = "ring"
    summary: ClassVar[str] = "a cycle: each node gossips with its two neighbours"

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        return ring(num_nodes)


class _LatticeSpec(TopologySpec):
    rows: int | None = Field(default=None, ge=1, description="lattice rows; default: factor m")
    cols: int | None = Field(default=None, ge=1, description="lattice columns; default: factor m")

    def check_num_nodes(self, num_nodes: int) -> None:
        lattice_shape(num_nodes, self.rows, self.cols)


class TorusSpec(_LatticeSpec):
    name: Literal["torus"] = "torus"
    summary: ClassVar[str] = "a 2-D lattice with wrap-around (rows x cols = nodes)"

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        return torus(num_nodes, self.rows, self.cols)


class GridSpec(_LatticeSpec):
    name: Literal["grid"] = "grid"
    summary: ClassVar[str] = "a 2-D lattice without wrap-around (rows x cols = nodes)"

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        return grid(num_nodes, self.rows, self.cols)


class ExponentialSpec(TopologySpec):
    name: Literal["exponential"] = "exponential"
    summary: ClassVar[str] = "node i joined to i ± 2^k (log-degree, fast mixing)"

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        return exponential(num_nodes)


class _RandomSpec(TopologySpec):
    is_random: ClassVar[bool] = True

    max_tries: int = Field(
        default=DEFAULT_MAX_TRIES, ge=1, le=10_000,
        description="draws before giving up on connectedness"
    )


class ErdosRenyiSpec(_RandomSpec):
    name: Literal["erdos_renyi"] = "erdos_renyi"
    summary: ClassVar[str] = "random graph, each edge with probability p, re-drawn until connected"
    p: float = Field(gt=0.0, le=1.0, description="edge probability, in (0, 1]")

    def expected_edges(self, num_nodes: int) -> float:
        return self.p * num_nodes * (num_nodes - 1) / 2

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        return erdos_renyi(num_nodes, self.p, seed, self.max_tries)


class RandomRegularSpec(_RandomSpec):
    name: Literal["random_regular"] = "random_regular"
    summary: ClassVar[str] = "random graph in which every node has `degree` neighbours"
    degree: int = Field(ge=1, description="neighbours per node; degree < m, degree*m even")

    def check_num_nodes(self, num_nodes: int) -> None:
        _require_num_nodes(num_nodes)
        _check_regular_degree(self.degree, num_nodes)

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        return random_regular(num_nodes, self.degree, seed, self.max_tries)


class SmallWorldSpec(_RandomSpec):
    name: Literal["small_world"] = "small_world"
    summary: ClassVar[str] = "Watts-Strogatz: a ring lattice with edges rewired with probability p"
    k: int = Field(ge=2, description="each node starts joined to its k nearest ring neighbours")
    p: float = Field(ge=0.0, le=1.0, description="rewiring probability, in [0, 1]")

    @field_validator("k")
    @classmethod
    def _k_even(cls, k: int) -> int:
        if k % 2:
            raise ValueError(f"k must be even (k/2 neighbours on each side), got {k}")
        return k

    def check_num_nodes(self, num_nodes: int) -> None:
        _require_num_nodes(num_nodes)
        _check_small_world_k(self.k, num_nodes)

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        return small_world(num_nodes, self.k, self.p, seed, self.max_tries)


class StarSpec(TopologySpec):
    name: Literal["star"] = "star"
    summary: ClassVar[str] = "one hub joined to every other node"

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        return star(num_nodes)


class CompleteSpec(TopologySpec):
    name: Literal["complete"] = "complete"
    summary: ClassVar[str] = "every node joined to every other"

    def expected_edges(self, num_nodes: int) -> float:
        return num_nodes * (num_nodes - 1) / 2

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        return complete(num_nodes)


class EdgeListSpec(TopologySpec):
    name: Literal["edge_list"] = "edge_list"
    summary: ClassVar[str] = "the edges of a text file"
    path: Path = Field(description="text file of lines 'i j' on nodes 0..m-1; '#' comments")

    def build(self, num_nodes: int, seed: int) -> nx.Graph:
        return edge_list(self.path, num_nodes)


TOPOLOGIES = (RingSpec, TorusSpec, GridSpec, ExponentialSpec, ErdosRenyiSpec,
              RandomRegularSpec, SmallWorldSpec, StarSpec, CompleteSpec, EdgeListSpec)
"""The built-in topologies (each registered by name in pyproject.toml's entry points)."""


MAX_EDGES = 20_000_000
"""Edges a graph may have (a complete graph on 1,000,000 nodes would exhaust any memory)."""


def build_graph(spec: TopologySpec, num_nodes: int, seed: int) -> nx.Graph:
    """The spec's fixed graph on nodes 0..m-1, checked to be connected."""
    spec.check_num_nodes(num_nodes)
    edges = spec.expected_edges(num_nodes)
    if edges > MAX_EDGES:
        raise TopologyError(f"topology: {spec.name} on {num_nodes} nodes has about {edges:.3g} "
                            f"edges (at most {MAX_EDGES:.0e}); use a sparse topology (ring, "
                            "exponential, random_regular) or fewer clients")
    G = spec.build(num_nodes, seed)
    # Only an edge list can fail here: the random builders re-draw until connected.
    require_connected(G, str(spec), fix="join the components in the edge list")
    return G


def _round_seed(seed: int, round: int) -> int:
    """A seed for one round's draw, statistically independent across rounds."""
    return int(np.random.SeedSequence([seed, round]).generate_state(1)[0])


def random_matching(G: nx.Graph, rng: np.random.Generator) -> nx.Graph:
    """A random maximal matching of G's edges, on all of G's nodes.

    Greedy over a random edge order: every node gossips with at most one neighbour, and
    on a complete graph with m even every node is matched (a perfect matching).
    """
    edges = sorted(G.edges())
    matching = nx.empty_graph(G.number_of_nodes())
    for index in rng.permutation(len(edges)):
        i, j = edges[index]
        if matching.degree(i) == 0 and matching.degree(j) == 0:
            matching.add_edge(i, j)
    return matching


def graph_for_round(spec: TopologySpec, num_nodes: int, seed: int, round: int) -> nx.Graph:
    """The graph nodes gossip over in `round`.

    - ``time_varying="none"``: the fixed graph of :func:`build_graph`.
    - ``"random_matching"``: a random maximal matching of the fixed graph, drawn from
      ``(seed, round)``. A matching is not connected; consensus needs the union of the
      rounds' graphs to be connected, which holds since the fixed graph is and each of its
      edges is drawn with positive probability. λ of one round's W is 1.
    - ``"resample"``: the random topology re-drawn from ``(seed, round)``, each connected.
    """
    if round < 0:
        raise TopologyError(f"round must be >= 0, got {round}")
    if spec.time_varying == "resample":
        return build_graph(spec, num_nodes, _round_seed(seed, round))
    G = build_graph(spec, num_nodes, seed)
    if spec.time_varying == "random_matching":
        return random_matching(G, np.random.default_rng(_round_seed(seed, round)))
    return G


# ---------------------------------------------------------------------------------------
# Reporting


class DegreeStats(TypedDict):
    num_nodes: int
    num_edges: int
    min_degree: int
    mean_degree: float
    max_degree: int
    components: int
    diameter: int | None


def degree_stats(G: nx.Graph) -> DegreeStats:
    """Size, degree range and diameter (None when disconnected): what sets gossip cost and speed."""
    degrees = [d for _, d in G.degree()]
    components = nx.number_connected_components(G)
    return DegreeStats(
        num_nodes=G.number_of_nodes(),
        num_edges=G.number_of_edges(),
        min_degree=min(degrees),
        mean_degree=float(np.mean(degrees)),
        max_degree=max(degrees),
        components=components,
        diameter=nx.diameter(G) if components == 1 else None,
    )


def draw_topology(G: nx.Graph, path: Path, title: str, seed: int = 0) -> None:
    """Write a PNG of the graph (spring layout seeded by `seed`).

    Uses a bare Agg ``Figure`` rather than pyplot, so no global figure state is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    pos = nx.spring_layout(G, seed=seed)
    figure = Figure(figsize=(6, 6))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.add_collection(
        LineCollection([(pos[i], pos[j]) for i, j in G.edges()], colors="0.6", linewidths=0.8)
    )
    xy = np.array([pos[node] for node in G.nodes]).reshape(-1, 2)
    ax.scatter(xy[:, 0], xy[:, 1], s=120, c="tab:blue", zorder=2)
    if G.number_of_nodes() <= 50:
        for node, (x, y) in zip(G.nodes, xy, strict=True):
            ax.annotate(str(node), (x, y), ha="center", va="center", fontsize=7, color="white")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
