"""Properties of topologies/: graph builders, mixing matrices and gossip.

Reference spectral numbers were computed once with networkx and numpy from the same
graphs (networkx's seeded builders), independently of this code.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedsim.core.errors import ScenarioError
from fedsim.core.plugins import parse_topology_spec
from topologies import (
    MixingKind,
    TopologyError,
    build_graph,
    check_mixing_matrix,
    consensus_distance,
    degree_stats,
    draw_topology,
    edge_list,
    erdos_renyi,
    gossip,
    graph_for_round,
    lattice_shape,
    max_degree,
    metropolis_hastings,
    mixing_lambda,
    mixing_matrix,
    random_regular,
    spectral_gap,
    torus,
)

# λ of the Metropolis–Hastings W; cells the spec's table leaves "—" are left out.
# "random_regular" is nx.random_regular_graph(10, m, seed=0), whose first draw is connected
# for m = 16 and 100. It depends on how networkx's generator consumes its random stream
# (checked with networkx 3.6); the builder's equality with that call is tested separately.
REFERENCE_LAMBDA = {
    "ring": {10: 0.8727, 16: 0.9493, 100: 0.9987},
    "exponential": {10: 0.4286, 16: 0.5000, 100: 0.7333},
    "torus": {16: 0.6000, 100: 0.9236},
    "grid": {16: 0.8686, 100: 0.9795},
    "random_regular": {16: 0.3456, 100: 0.5845},
    "complete": {10: 0.0, 16: 0.0, 100: 0.0},
}
REFERENCE_SPECS = {
    "ring": {"name": "ring"},
    "exponential": {"name": "exponential"},
    "torus": {"name": "torus"},
    "grid": {"name": "grid"},
    "random_regular": {"name": "random_regular", "degree": 10},
    "complete": {"name": "complete"},
}

# One spec per builder, all valid on 16 nodes.
ALL_SPECS = {
    "ring": {"name": "ring"},
    "torus": {"name": "torus"},
    "torus_2x8": {"name": "torus", "rows": 2},
    "grid": {"name": "grid"},
    "exponential": {"name": "exponential"},
    "erdos_renyi": {"name": "erdos_renyi", "p": 0.3},
    "random_regular": {"name": "random_regular", "degree": 3},
    "small_world": {"name": "small_world", "k": 4, "p": 0.2},
    "star": {"name": "star"},
    "complete": {"name": "complete"},
}


def _write_edge_list(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("topology", "num_nodes", "expected"),
    [(t, m, lam) for t, row in REFERENCE_LAMBDA.items() for m, lam in row.items()],
)
def test_metropolis_hastings_lambda_matches_reference_table(
    topology: str, num_nodes: int, expected: float
) -> None:
    G = build_graph(parse_topology_spec(REFERENCE_SPECS[topology]), num_nodes, seed=0)
    assert mixing_lambda(metropolis_hastings(G)) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize("num_nodes", [16, 100])
def test_random_regular_seed_is_networkx_seed(num_nodes: int) -> None:
    ours = random_regular(num_nodes, degree=10, seed=0)
    theirs = nx.random_regular_graph(10, num_nodes, seed=0)
    assert sorted(ours.edges()) == sorted(theirs.edges())


def test_gossip_preserves_average_and_contracts_by_lambda_power() -> None:
    G = build_graph(parse_topology_spec({"name": "ring"}), 10, seed=0)
    W = metropolis_hastings(G)
    lam = mixing_lambda(W)
    x0 = np.arange(10, dtype=float)
    expected_ratio = {1: 0.7363, 2: 0.6192, 4: 0.4634, 8: 0.2680}
    for steps, ratio in expected_ratio.items():
        x = gossip(x0, W, steps)
        assert x.mean() == pytest.approx(4.5, abs=1e-12)
        measured = np.linalg.norm(x - x.mean()) / np.linalg.norm(x0 - x0.mean())
        assert measured == pytest.approx(ratio, abs=5e-5)
        assert measured <= lam**steps
    assert lam**4 == pytest.approx(0.5800, abs=5e-5)


def test_gossip_on_matrix_rows_preserves_average_and_shrinks_consensus_distance() -> None:
    G = build_graph(parse_topology_spec({"name": "exponential"}), 16, seed=0)
    W = metropolis_hastings(G)
    X = np.random.default_rng(0).normal(size=(16, 5))
    mixed = gossip(X, W, steps=3)
    np.testing.assert_allclose(mixed.mean(axis=0), X.mean(axis=0), atol=1e-12)
    assert consensus_distance(mixed) <= mixing_lambda(W) ** 6 * consensus_distance(X)
    assert gossip(X, W, steps=0) is not X


@pytest.mark.parametrize(
    ("topology", "std_q1", "std_q4"),
    [("ring", 1.734, 0.828), ("exponential", 0.289, 0.0076), ("complete", 0.0, 0.0)],
)
def test_train_then_gossip_reaches_optimum_average_with_reference_consensus_std(
    topology: str, std_q1: float, std_q4: float
) -> None:
    # Sanity check (f) 3: F_i = ½(x − c_i)², c_i = i, m = 10, ρ = 0, η = 0.1, K = 5.
    W = metropolis_hastings(build_graph(parse_topology_spec({"name": topology}), 10, seed=0))
    c = np.arange(10, dtype=float)
    shrink = (1 - 0.1) ** 5  # K gradient steps on ½(x − c)² from x give c + 0.9^K (x − c)
    stds = {}
    for steps, expected_std in ((1, std_q1), (4, std_q4)):
        x = np.zeros(10)
        for _ in range(200):
            x = gossip(c + shrink * (x - c), W, steps)
        assert x.mean() == pytest.approx(4.5, abs=1e-12)
        stds[steps] = float(np.std(x))
        assert stds[steps] == pytest.approx(expected_std, abs=5e-4 if expected_std > 0.01 else 5e-5)
    if topology != "complete":
        assert stds[4] < stds[1]  # more gossip steps strictly reduce the consensus error


def test_consensus_distance_is_mean_squared_distance_to_average() -> None:
    X = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]])
    assert consensus_distance(X) == pytest.approx((4 + 0 + 4) / 3)
    assert consensus_distance(np.ones((4, 3))) == 0.0


@pytest.mark.parametrize("kind", ["metropolis_hastings", "max_degree"])
@pytest.mark.parametrize("topology", sorted(ALL_SPECS))
def test_mixing_matrix_is_symmetric_doubly_stochastic_on_every_builder(
    topology: str, kind: MixingKind
) -> None:
    G = build_graph(parse_topology_spec(ALL_SPECS[topology], num_nodes=16), 16, seed=3)
    W = mixing_matrix(G, kind)
    check_mixing_matrix(W)
    np.testing.assert_array_equal(W > 0, nx.to_numpy_array(G, weight=None) + np.eye(16) > 0)
    assert mixing_lambda(W) < 1.0


def test_max_degree_weights_are_uniform_on_edges() -> None:
    W = max_degree(nx.star_graph(4))
    assert W[0, 1] == W[2, 0] == pytest.approx(1 / 5)
    assert W[1, 1] == pytest.approx(4 / 5)
    assert W[1, 2] == 0.0


def test_complete_graph_gives_uniform_matrix_and_exact_average_in_one_step() -> None:
    m = 10
    W = metropolis_hastings(build_graph(parse_topology_spec({"name": "complete"}), m, seed=0))
    np.testing.assert_allclose(W, np.full((m, m), 1 / m), rtol=0, atol=1e-15)
    X = np.random.default_rng(1).normal(size=(m, 3))
    np.testing.assert_allclose(gossip(X, W, 1), np.tile(X.mean(axis=0), (m, 1)), atol=1e-14)
    assert spectral_gap(W) == pytest.approx(1.0)


def test_disconnected_erdos_renyi_is_rejected_with_the_fix() -> None:
    spec = parse_topology_spec({"name": "erdos_renyi", "p": 0.01, "max_tries": 5})
    with pytest.raises(TopologyError, match=r"not connected .*5 draws.*raise p"):
        build_graph(spec, 20, seed=0)


def test_disconnected_edge_list_is_rejected_with_the_fix(tmp_path: Path) -> None:
    path = _write_edge_list(tmp_path / "two.txt", "# two triangles\n0 1\n1 2\n2 0\n3 4\n4 5\n5 3\n")
    spec = parse_topology_spec({"name": "edge_list", "path": str(path)})
    with pytest.raises(TopologyError, match=r"\(2 components\).*join the components"):
        build_graph(spec, 6, seed=0)
    # A node missing from the file is isolated, so the graph is disconnected too.
    with pytest.raises(TopologyError, match=r"\(3 components\)"):
        build_graph(spec, 7, seed=0)


def test_disconnected_graph_has_lambda_one() -> None:
    G = nx.disjoint_union(nx.cycle_graph(4), nx.cycle_graph(4))
    assert mixing_lambda(metropolis_hastings(G)) == pytest.approx(1.0)


def test_edge_list_reads_pairs_and_comments_and_rejects_bad_lines(tmp_path: Path) -> None:
    good = _write_edge_list(tmp_path / "g.txt", "0 1  # spoke\n\n1 2\n2 0\n")
    assert sorted(edge_list(good, 3).edges()) == [(0, 1), (0, 2), (1, 2)]
    for text, message in [
        ("0 3\n", "outside 0..2"),
        ("0 1 2\n", "two node ids"),
        ("0 x\n", "integers"),
        ("1 1\n", "self-loop"),
    ]:
        with pytest.raises(TopologyError, match=message):
            edge_list(_write_edge_list(tmp_path / "bad.txt", text), 3)


def test_mixing_lambda_counts_the_most_negative_eigenvalue() -> None:
    # Eigenvalues 1 and -0.8: an oscillating W contracts by |λ_m|, not by λ_2.
    W = np.array([[0.1, 0.9], [0.9, 0.1]])
    assert mixing_lambda(W) == pytest.approx(0.8)
    assert mixing_lambda(np.ones((1, 1))) == 0.0


def test_non_doubly_stochastic_matrix_is_rejected() -> None:
    G = nx.path_graph(4)
    A = nx.to_numpy_array(G) + np.eye(4)
    # DisPFL-style neighbourhood average: row-stochastic only, does not keep the average.
    with pytest.raises(TopologyError, match="not symmetric"):
        check_mixing_matrix(A / A.sum(axis=1, keepdims=True))
    symmetric_not_stochastic = metropolis_hastings(G) * 1.1
    with pytest.raises(TopologyError, match="not doubly stochastic"):
        check_mixing_matrix(symmetric_not_stochastic)
    negative = np.array([[1.5, -0.5], [-0.5, 1.5]])
    with pytest.raises(TopologyError, match="negative"):
        check_mixing_matrix(negative)


@pytest.mark.parametrize("topology", ["erdos_renyi", "random_regular", "small_world"])
def test_random_builders_are_deterministic_for_a_seed(topology: str) -> None:
    spec = parse_topology_spec(ALL_SPECS[topology])
    first = sorted(build_graph(spec, 16, seed=7).edges())
    assert sorted(build_graph(spec, 16, seed=7).edges()) == first
    assert sorted(build_graph(spec, 16, seed=8).edges()) != first


def test_erdos_renyi_retries_until_connected() -> None:
    # p = 0.12 on 30 nodes is just above ln(m)/m = 0.113, so some first draws are disconnected.
    first_draws = [nx.gnp_random_graph(30, 0.12, seed=seed) for seed in range(10)]
    assert not all(nx.is_connected(G) for G in first_draws)
    for seed in range(10):
        assert nx.is_connected(erdos_renyi(30, 0.12, seed=seed))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "ring", "degree": 3}, "degree"),
        ({"name": "erdos_renyi", "p": -0.1}, "p"),
        ({"name": "erdos_renyi", "p": 1.5}, "p"),
        ({"name": "random_regular", "degree": 3}, "degree"),  # 3 * 11 odd
        ({"name": "random_regular", "degree": 11}, "degree"),  # not < m
        ({"name": "small_world", "k": 3, "p": 0.1}, "k"),
        ({"name": "torus", "rows": 4}, "rows/cols"),  # 11 is not 4 * cols
        ({"name": "ring", "time_varying": "resample"}, "time_varying"),
    ],
)
def test_bad_spec_is_a_validation_error_naming_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_topology_spec(data, num_nodes=11)
    assert field in str(error.value)


def test_unknown_topology_is_one_line_naming_the_installed_ones() -> None:
    with pytest.raises(ScenarioError, match=r"^name: unknown topology 'hypercube' \(available: "
                                            r"complete, .*ring.*; see `fedsim topologies`\)$"):
        parse_topology_spec({"name": "hypercube"})


def test_spec_checks_on_num_nodes_also_run_when_building() -> None:
    spec = parse_topology_spec({"name": "random_regular", "degree": 3})
    with pytest.raises(TopologyError, match="degree=3: degree\\*num_nodes must be even"):
        build_graph(spec, 11, seed=0)


def test_torus_uses_most_square_lattice_and_wraps_around() -> None:
    assert lattice_shape(12) == (3, 4)
    assert lattice_shape(100) == (10, 10)
    assert lattice_shape(13) == (1, 13)
    assert lattice_shape(12, cols=6) == (2, 6)
    G = torus(12)
    assert {d for _, d in G.degree()} == {4}
    assert G.has_edge(0, 3)  # (0, 0) – (0, 3) wrap-around in a 3 x 4 torus
    assert G.has_edge(0, 8)  # (0, 0) – (2, 0)


def test_random_matching_is_a_matching_that_changes_per_round_and_repeats_per_seed() -> None:
    spec = parse_topology_spec({"name": "complete", "time_varying": "random_matching"})
    rounds = [graph_for_round(spec, 10, seed=5, round=r) for r in range(6)]
    for G in rounds:
        assert sorted(G.nodes) == list(range(10))
        assert {d for _, d in G.degree()} == {1}  # perfect matching: m even, complete base
        check_mixing_matrix(metropolis_hastings(G))
    edge_sets = [frozenset(G.edges()) for G in rounds]
    assert len(set(edge_sets)) == len(edge_sets)
    again = graph_for_round(spec, 10, seed=5, round=3)
    assert frozenset(again.edges()) == edge_sets[3]
    assert frozenset(graph_for_round(spec, 10, seed=6, round=3).edges()) != edge_sets[3]
    # One round is not connected; the union over rounds is.
    assert not nx.is_connected(rounds[0])
    assert nx.is_connected(nx.compose_all(rounds))


def test_random_matching_uses_only_base_edges_and_is_maximal() -> None:
    spec = parse_topology_spec({"name": "ring", "time_varying": "random_matching"})
    base = build_graph(spec, 9, seed=0)
    for r in range(5):
        G = graph_for_round(spec, 9, seed=0, round=r)
        assert max(d for _, d in G.degree()) == 1
        assert all(base.has_edge(i, j) for i, j in G.edges())
        unmatched = {n for n, d in G.degree() if d == 0}
        assert not any(i in unmatched and j in unmatched for i, j in base.edges())


def test_resample_redraws_a_connected_random_graph_each_round() -> None:
    spec = parse_topology_spec(
        {"name": "random_regular", "degree": 4, "time_varying": "resample"}, num_nodes=12
    )
    rounds = [graph_for_round(spec, 12, seed=1, round=r) for r in range(4)]
    assert all(nx.is_connected(G) for G in rounds)
    assert len({frozenset(G.edges()) for G in rounds}) == 4
    again = graph_for_round(spec, 12, seed=1, round=2)
    assert frozenset(again.edges()) == frozenset(rounds[2].edges())


def test_fixed_topology_is_the_same_graph_every_round() -> None:
    spec = parse_topology_spec({"name": "erdos_renyi", "p": 0.4})
    fixed = frozenset(build_graph(spec, 12, seed=2).edges())
    assert all(
        frozenset(graph_for_round(spec, 12, seed=2, round=r).edges()) == fixed for r in range(3)
    )


def test_degree_stats_of_ring() -> None:
    stats = degree_stats(build_graph(parse_topology_spec({"name": "ring"}), 10, seed=0))
    assert stats == {
        "num_nodes": 10,
        "num_edges": 10,
        "min_degree": 2,
        "mean_degree": 2.0,
        "max_degree": 2,
        "components": 1,
        "diameter": 5,
    }
    assert degree_stats(nx.empty_graph(3))["diameter"] is None


def test_draw_topology_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "torus.png"
    draw_topology(torus(16), path, title="torus(16)")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@settings(max_examples=25, deadline=None, database=None)
@given(
    num_nodes=st.integers(min_value=2, max_value=25),
    p=st.floats(min_value=0.3, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_gossip_never_increases_consensus_distance_on_random_graphs(
    num_nodes: int, p: float, seed: int
) -> None:
    W = metropolis_hastings(erdos_renyi(num_nodes, p, seed=seed, max_tries=1000))
    check_mixing_matrix(W)
    X = np.random.default_rng(seed).normal(size=(num_nodes, 2))
    mixed = gossip(X, W, 2)
    np.testing.assert_allclose(mixed.mean(axis=0), X.mean(axis=0), atol=1e-12)
    assert consensus_distance(mixed) <= mixing_lambda(W) ** 4 * consensus_distance(X) + 1e-12


def test_a_graph_too_big_to_build_is_refused_before_any_memory_is_spent() -> None:
    with pytest.raises(TopologyError, match="complete on 1000000 nodes has about 5e\\+11"):
        build_graph(parse_topology_spec({"name": "complete"}), 1_000_000, seed=0)
    with pytest.raises(TopologyError, match="erdos_renyi"):
        build_graph(parse_topology_spec({"name": "erdos_renyi", "p": 0.5}), 20_000, seed=0)
    with pytest.raises(TopologyError, match="at most 16384 clients"):
        mixing_matrix(nx.cycle_graph(20_000))
