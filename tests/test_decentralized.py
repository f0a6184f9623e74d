"""D-PSGD/DFedAvg, DFedSAM, DFedSAM-MGS through the simulator, and fedsim.engine.links."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.run import Run
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.core.codec import flatten
from fedsim.core.errors import ScenarioError
from fedsim.core.schema import ChannelSpec, ClientsSpec, LinkSpec
from fedsim.engine.devices import DevicePopulation
from fedsim.engine.grid import SimGrid
from fedsim.engine.ledger import COLUMN
from fedsim.engine.links import gossip_over_links
from fedsim.runner import simulate
from strategies.decentralized import DPSGD
from tests.conftest import quadratic
from tests.opaque_grid import OpaqueGrid, as_server_app, replying
from topologies import RingSpec, TopologyError, mixing_lambda, mixing_matrix, ring, star
from topologies.mixing import mix_step

CENTERS = [float(i) for i in range(10)]


def _run(topology: str, strategy: str = "dpsgd", centers: list[float] = CENTERS,
         rounds: int = 25, local_steps: int = 5, init: float = 0.0, **params: object):
    s = quadratic(centers, rounds=rounds, training__local_steps=local_steps,
                  task__params__init=init, topology={"name": topology},
                  strategy={"name": strategy, "params": params})
    return simulate(s)


# --------------------------------------------------------------- quadratics on ring and torus

@pytest.mark.parametrize(("topology", "q", "std"), [
    ("ring", 1, 1.734), ("ring", 4, 0.828),
    ("exponential", 1, 0.289), ("exponential", 4, 0.0076),
    ("complete", 1, 0.0), ("complete", 4, 0.0),
])
def test_network_average_reaches_optimum_and_consensus_std_matches_reference(topology, q, std):
    """F_i = ½(x−i)², m=10, ρ=0, η=0.1, K=5: std of the x_i at the fixed point (reference values).

    Started at x = mean(c) = 4.5, so only the disagreement has to converge (rate
    0.9^5·λ^Q per round); the network average must stay exactly 4.5 on the way.
    """
    result = _run(topology, init=4.5, gossip_steps=q)
    assert flatten(result.arrays)[0] == pytest.approx(4.5, abs=1e-12)
    consensus_std = math.sqrt(result.records[-1]["consensus_distance"])
    assert consensus_std == pytest.approx(std, abs=5e-4 if std > 0.01 else 5e-5)
    if topology == "complete":
        assert consensus_std == 0.0  # W = 11ᵀ/m: every node holds exactly the same model
    assert result.records[-1]["spectral_gap_q"] == pytest.approx(
        1 - (1 - result.records[-1]["spectral_gap"]) ** q)


@pytest.mark.slow
def test_network_average_converges_to_mean_of_centers_from_zero():
    result = _run("ring", rounds=40)
    assert flatten(result.arrays)[0] == pytest.approx(4.5, abs=1e-8)


def test_more_gossip_steps_strictly_reduce_consensus_error_on_sparse_graph():
    one, four = (_run("ring", rounds=5, init=4.5, gossip_steps=q).records[-1] for q in (1, 4))
    assert four["consensus_distance"] < 0.5 * one["consensus_distance"]


# --------------------------------------------------------------- complete graph

@pytest.mark.parametrize("centers", [[0.0, 3.0], CENTERS])
def test_complete_graph_rho0_equals_fedavg_with_full_participation(centers):
    """DFedSAM(ρ=0) on K_m with Q=1 is FedAvg with every node, round by round.

    With m = 2 the sums have two terms, so the order Flower sums replies in
    (random.sample's) cannot matter: the numbers are identical. With m = 10 Flower's
    order differs from the nodes', so they agree to rounding.
    """
    common = dict(rounds=4, training__local_steps=3, topology={"name": "complete"})
    ours = simulate(quadratic(centers, strategy={"name": "dfedsam", "params": {"rho": 0.0}},
                              **common))
    fedavg = simulate(quadratic(centers, strategy={"name": "fedavg", "params": {
        "fraction_train": 1.0, "fraction_evaluate": 0.0}}, **common))
    exact = len(centers) == 2
    for a, b in zip(ours.records, fedavg.records, strict=True):
        for key in ("loss", "distance", "train_loss"):
            if key in b:
                assert a[key] == (b[key] if exact else pytest.approx(b[key], rel=1e-12))
    a, b = flatten(ours.arrays), flatten(fedavg.arrays)
    assert np.array_equal(a, b) if exact else np.allclose(a, b, rtol=1e-12, atol=0)


# --------------------------------------------------------------- opaque node ids

def test_vertex_i_is_the_node_of_partition_i_on_a_grid_with_opaque_ids(monkeypatch):
    """Ids above 2^63 in shuffled order, replies in shuffled order: vertex i still trains at
    the node holding partition i, and gossip mixes row i as vertex i of the ring."""
    as_server_app(monkeypatch)
    m = 6

    def answer(message: Message, partition: int) -> RecordDict:
        return RecordDict({"arrays": ArrayRecord({"x": Array(np.full(2, float(partition)))}),
                           "metrics": MetricRecord({"num-examples": 1,
                                                    "train_loss": float(partition)})})

    grid = OpaqueGrid(m, replying(answer))
    strategy = DPSGD(RingSpec(), m, None, node_eval_every=0)  # type: ignore[arg-type]
    start = ArrayRecord({"x": Array(np.zeros(2))})
    strategy.prepare(grid, start, 2, None, ConfigRecord())  # type: ignore[arg-type]
    strategy.setup(grid, start)  # type: ignore[arg-type]
    _, metrics = strategy.step(1)
    assert [msg.metadata.dst_node_id for msg in grid.sent] == grid.ids  # vertex order
    z = np.arange(m, dtype=float)  # vertex i replied i; ring with Metropolis weights 1/3
    expected = (np.roll(z, 1) + z + np.roll(z, -1)) / 3
    np.testing.assert_allclose(strategy._X[:, 0], expected, rtol=0, atol=1e-12)
    assert metrics is not None and metrics["active_nodes"] == m
    assert metrics["gossip_exchanges"] == 2 * m


# --------------------------------------------------------------- SAM step

def test_one_sam_step_on_half_squared_norm():
    """F = ½‖x‖²: one SAM step from x is x − η(x + ρ x/‖x‖); ρ = 0 is the SGD step."""
    x, eta = np.array([1.0, 1.0]), 0.1
    for rho in (0.0, 0.5):
        s = quadratic([0.0], rounds=1, training__lr=eta, task__params__dim=2,
                      task__params__init=1.0, topology={"name": "ring"},
                      strategy={"name": "dfedsam", "params": {"rho": rho}})
        got = flatten(simulate(s).arrays)
        assert np.allclose(got, x - eta * (x + rho * x / np.linalg.norm(x)), rtol=0, atol=1e-15)


def test_sam_changes_the_local_update_on_a_nonlinear_task():
    """On digits, ρ > 0 must give a different model than ρ = 0 (the second pass is used)."""
    from tests.conftest import scenario

    runs = [simulate(scenario(rounds=1, clients__count=2, topology={"name": "ring"},
                              training__local_steps=2,
                              strategy={"name": "dfedsam", "params": {"rho": rho}}))
            for rho in (0.0, 0.05)]
    assert not np.array_equal(flatten(runs[0].arrays), flatten(runs[1].arrays))


# --------------------------------------------------------------- links: noise, erasure, bytes

def _sim_grid(num_nodes: int, uplink: LinkSpec, tiers: list[dict] | None = None) -> SimGrid:
    clients = ClientsSpec(count=num_nodes, devices=tiers or [{}])
    channel = ChannelSpec(uplink=uplink)
    return SimGrid(None, DevicePopulation(clients, 0), channel, 0,  # type: ignore[arg-type]
                   Run.create_empty(1))


def test_gossip_noise_changes_the_result():
    clean = _run("ring", rounds=3)
    noisy = simulate(quadratic(CENTERS, rounds=3, training__local_steps=5,
                               strategy={"name": "dpsgd"}, topology={"name": "ring"},
                               channel__uplink__noise_sigma=0.1))
    assert clean.records[-1]["consensus_distance"] != \
        noisy.records[-1]["consensus_distance"]
    assert not np.array_equal(flatten(clean.arrays), flatten(noisy.arrays))


def test_gossip_erasure_p1_leaves_each_node_with_its_own_model():
    grid = _sim_grid(6, LinkSpec(erasure_p=1.0))
    X = np.arange(6.0)[:, None] * np.ones((1, 3))
    W = mixing_matrix(ring(6))
    mixed, report = gossip_over_links(grid, X, W, np.ones(6, bool), 2, 1, model_nbytes=24)
    assert np.array_equal(mixed, X)
    assert report.lost == report.exchanges == 2 * 12
    assert grid.stats.bytes_down == 0 and grid.stats.bytes_up == 24 * 24


def test_gossip_without_loss_is_the_mixing_matrix():
    grid = _sim_grid(6, LinkSpec())
    X = np.arange(6.0)[:, None]
    W = mixing_matrix(ring(6))
    mixed, _ = gossip_over_links(grid, X, W, np.ones(6, bool), 3, 1, model_nbytes=8)
    assert np.allclose(mixed, np.linalg.matrix_power(W, 3) @ X, rtol=0, atol=1e-14)


def test_inactive_node_keeps_its_model_and_neighbours_renormalize():
    grid = _sim_grid(4, LinkSpec())
    X = np.array([[0.0], [4.0], [8.0], [12.0]])
    W = mixing_matrix(ring(4))  # 1/3 on edges and diagonal
    active = np.array([False, True, True, True])
    mixed, report = gossip_over_links(grid, X, W, active, 1, 1, model_nbytes=8)
    assert mixed[0, 0] == 0.0
    assert mixed[1, 0] == pytest.approx((4 + 8) / 2)  # node 0's weight dropped, renormalized
    assert mixed[2, 0] == pytest.approx((4 + 8 + 12) / 3)
    assert report.exchanges == 4  # 1<->2, 2<->3


def test_gossip_bytes_are_q_deg_model_bytes_per_node():
    G, q, nbytes = star(5), 3, 40
    grid = _sim_grid(5, LinkSpec())
    gossip_over_links(grid, np.zeros((5, 5)), mixing_matrix(G), np.ones(5, bool), q, 1, nbytes)
    for node, degree in G.degree():
        counters = grid.stats.by_node[node]
        assert [counters[COLUMN["bytes_up"]], counters[COLUMN["bytes_down"]]] \
            == [q * degree * nbytes] * 2


def test_gossip_bytes_counted_through_the_strategy():
    """Per round: Q·Σdeg model sends of gossip, plus the relay's one model up per node."""
    q, m, model_bytes = 2, 10, 8
    result = _run("exponential", rounds=2, gossip_steps=q)
    degree_sum = 2 * nx.number_of_edges(nx.Graph(
        [(i, (i + h) % m) for i in range(m) for h in (1, 2, 4, 8)]))
    record = result.records[-1]
    assert record["gossip_bytes"] == q * degree_sum * model_bytes
    assert record["bytes_up"] == q * degree_sum * model_bytes + m * model_bytes


def test_gossip_step_lasts_as_long_as_the_slowest_link():
    slow = {"name": "slow", "share": 0.5, "uplink": {"bandwidth_mbps": 1.0, "latency_s": 0.5}}
    fast = {"name": "fast", "share": 0.5}
    grid = _sim_grid(4, LinkSpec(bandwidth_mbps=100.0), tiers=[slow, fast])
    nbytes, q = 125_000, 2  # 1 Mbit: 1 s on the slow link
    before = grid.now
    _, report = gossip_over_links(grid, np.zeros((4, 1)), mixing_matrix(ring(4)),
                                  np.ones(4, bool), q, 1, nbytes)
    assert report.duration_s == pytest.approx(q * (0.5 + 1.0))
    assert grid.now == pytest.approx(before + q * 1.5)


def _mix_step_per_node(X, W, received, on_missing, noise):
    """The per-node definition of a gossip step (fedsim.engine.links' module doc), as a loop."""
    mixed = np.array(X, dtype=np.float64, copy=True)
    for i in range(W.shape[0]):
        total, weight_sum, missing, arrived = None, 0.0, False, False
        for j in np.flatnonzero(W[i]):
            if j != i and not received[i, j]:
                missing = True
                continue
            arrived |= j != i
            value = X[j] + noise[(j, i)] if (j, i) in noise else X[j]
            total = W[i, j] * value if total is None else total + W[i, j] * value
            weight_sum += W[i, j]
        if arrived:
            if missing:
                total = (total / weight_sum if on_missing == "renormalize"
                         else total + (1.0 - weight_sum) * X[i])
            mixed[i] = total
    return mixed


@pytest.mark.parametrize("on_missing", ["renormalize", "self_weight"])
@pytest.mark.parametrize("kind", ["metropolis_hastings", "max_degree"])
def test_vectorised_gossip_step_is_bit_identical_to_the_per_node_sums(on_missing, kind):
    """Same bits as summing each closed neighbourhood in node order, with losses and noise."""
    gen = np.random.default_rng(5)
    for trial in range(20):
        m = int(gen.integers(2, 30))
        G = nx.gnp_random_graph(m, float(gen.uniform(0.05, 0.6)), seed=trial)
        W = mixing_matrix(G, kind)
        X = gen.standard_normal((m, 7)) * 10.0 ** gen.integers(-3, 4, size=(m, 1))
        received = gen.random((m, m)) < gen.uniform(0.3, 1.0)
        noise = {(int(j), int(i)): gen.standard_normal(7) for i, j in np.argwhere(W)
                 if i != j and gen.random() < 0.3}
        for nz in ({}, noise):
            ours = mix_step(X, W, received, on_missing, nz or None)
            assert ours.tobytes() == _mix_step_per_node(X, W, received, on_missing, nz).tobytes()


def test_gossip_draws_are_keyed_per_exchange():
    """Loss and noise of an exchange depend on (seed, round, step, sender, receiver) only:
    dropping one node from the round changes nothing between the others."""
    W = mixing_matrix(star(6))  # leaves talk only to the hub
    X = np.arange(18.0).reshape(6, 3)
    link = LinkSpec(erasure_p=0.3, noise_sigma=0.1)
    everyone = np.ones(6, bool)
    without_5 = everyone.copy()
    without_5[5] = False
    a, _ = gossip_over_links(_sim_grid(6, link), X, W, everyone, 1, 3, 24, seed=9)
    b, _ = gossip_over_links(_sim_grid(6, link), X, W, without_5, 1, 3, 24, seed=9)
    c, _ = gossip_over_links(_sim_grid(6, link), X, W, everyone, 1, 3, 24, seed=10)
    assert np.array_equal(a[1:5], b[1:5]) and np.array_equal(b[5], X[5])
    assert not np.array_equal(a, c)


def test_spectral_gap_of_a_fixed_topology_is_computed_once(monkeypatch):
    import strategies.decentralized as decentralized

    calls = []

    def counting(W):
        calls.append(W.shape)
        return mixing_lambda(W)

    monkeypatch.setattr(decentralized, "mixing_lambda", counting)
    result = _run("ring", rounds=4)
    assert len(calls) == 1
    assert {r["spectral_gap"] for r in result.records[1:]} == \
        {1.0 - mixing_lambda(mixing_matrix(ring(len(CENTERS))))}


# --------------------------------------------------------------- bad input (f) 5

def test_missing_topology_is_an_error_naming_topology():
    s = quadratic(CENTERS, strategy={"name": "dfedsam"})
    with pytest.raises(ScenarioError, match="topology"):
        simulate(s)


def test_disconnected_graph_is_a_topology_error(tmp_path):
    edges = tmp_path / "edges.txt"
    edges.write_text("0 1\n2 3\n")
    s = quadratic([0.0, 1.0, 2.0, 3.0], strategy={"name": "dpsgd"},
                  topology={"name": "edge_list", "path": str(edges)})
    with pytest.raises(TopologyError, match="not connected"):
        simulate(s)


def test_cli_topology_show_prints_gap_and_writes_png(tmp_path):
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text(
        "name: t\nrounds: 1\ntask: {name: quadratic, params: {centers: [0,1,2,3,4,5]}}\n"
        "clients: {count: 6}\nstrategy: {name: dfedsam_mgs}\ntopology: {name: ring}\n")
    png = tmp_path / "g.png"
    result = CliRunner().invoke(app, ["topology", "show", str(scenario_file), "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert "spectral gap" in result.output and png.stat().st_size > 0
    edges = tmp_path / "edges.txt"
    edges.write_text("0 1\n2 3\n")
    bad = CliRunner().invoke(app, ["topology", "show", str(scenario_file), "--set",
                                   f"topology={{name: edge_list, path: {edges}}}"])
    assert bad.exit_code == 2 and "not connected" in bad.output
