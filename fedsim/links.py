"""Node-to-node gossip over the simulated links: transfer time, noise, erasure, bytes.

Decentralized strategies (DFedSAM, D-PSGD, :mod:`strategies.decentralized`) keep one
model per node and mix them with a gossip matrix W. In a real network node j *sends*
its model to every neighbour i once per gossip step; this module plays those
exchanges on the grid's channel model, so that gossip costs what the links cost:

- **link**: an exchange j -> i uses the sender's uplink,
  ``grid.devices.uplink(j, grid.channel.uplink)`` (its tier override, else the
  scenario's uplink);
- **time**: one gossip step is one synchronous exchange; it lasts as long as its
  slowest transfer (latency + bytes/bandwidth), and the grid clock advances by the
  sum over the Q steps (``grid.advance_to``);
- **noise**: the receiver gets the sender's vector plus N(0, σ²) per float entry
  (σ = the sender's uplink ``noise_sigma``), a fresh draw per exchange;
- **erasure**: an exchange is lost with the uplink's ``erasure_p``;
- **bytes**: every exchange, lost or not, counts the model's payload bytes as ``up``
  for the sender and, if it arrived, ``down`` for the receiver
  (``grid.stats.count_bytes``). Per node and round that is Q·deg(i) models up.

**What arrives is averaged, renormalized.** Node i mixes its own vector with the
neighbours' vectors that reached it: with S_i = {i} ∪ {arrived j},
``x_i ← Σ_{j∈S_i} w_ij x_j / Σ_{j∈S_i} w_ij`` (``on_missing="renormalize"``, the
default). With nothing missing the denominator is 1 and is not applied, so the
step is exactly ``x ← W x``. Renormalizing makes the step row-stochastic only, so
the network average is no longer kept exactly. ``on_missing="self_weight"`` instead
gives the missing weight to w_ii (node i keeps more of its own model); with
symmetric misses, e.g. an inactive node, that keeps W symmetric and doubly stochastic
on the nodes that take part, and so keeps their average. Inactive nodes (not
available or not replying this round) neither send nor receive: their vector is
unchanged and, to their neighbours, they look like lost messages.

On a grid that is not a :class:`~fedsim.grid.SimGrid` (a deployed Flower grid) the
server relays the vectors: no noise, no loss, no virtual time; bytes are counted
only if the grid has a ``stats.count_bytes``.

Randomness: loss and noise of the exchange ``sender -> receiver`` in gossip step
``step`` of round ``round`` come from ``rng(seed, "gossip-loss"|"gossip-noise",
round, step, sender, receiver)``, so they do not depend on the order of evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedsim.channel import transfer_time
from fedsim.grid import SimGrid
from fedsim.scenario import LinkSpec
from fedsim.seeding import rng

OnMissing = Literal["renormalize", "self_weight"]


@dataclass(frozen=True)
class GossipReport:
    """What Q gossip steps cost on the links."""

    duration_s: float
    """Virtual seconds: the sum over steps of each step's slowest transfer."""
    exchanges: int
    """Neighbour messages sent (Q · Σ_i deg_active(i))."""
    lost: int
    """Of those, erased on the link."""
    bytes_sent: int
    """Payload bytes of all exchanges (what the senders' uplinks carried)."""


def gossip_links(grid: Any, num_nodes: int) -> list[LinkSpec] | None:
    """The sender uplinks of a SimGrid's nodes; None for a relaying (deployed) grid."""
    if not isinstance(grid, SimGrid):
        return None
    return [grid.devices.uplink(node, grid.channel.uplink) for node in range(num_nodes)]


def mix_step(
    X: np.ndarray,
    W: np.ndarray,
    received: np.ndarray,
    on_missing: OnMissing = "renormalize",
    noise: dict[tuple[int, int], np.ndarray] | None = None,
) -> np.ndarray:
    """One synchronous gossip step with per-exchange arrival and noise.

    `received[i, j]` says whether node j's vector reached node i (the diagonal is
    ignored: a node always has its own). `noise[(j, i)]` is added to what i received
    from j. Each node sums its closed neighbourhood in increasing node order, so that
    rows with the same weights give bit-identical results (complete graph: exact
    consensus).
    """
    num_nodes = W.shape[0]
    mixed = np.array(X, dtype=np.float64, copy=True)
    for i in range(num_nodes):
        neighbours = np.flatnonzero(W[i])
        total, weight_sum, missing, arrived = None, 0.0, False, False
        for j in neighbours:
            w = float(W[i, j])
            if j != i and not received[i, j]:
                missing = True
                continue
            arrived |= j != i
            value = X[j]
            if noise is not None and (j, i) in noise:
                value = value + noise[(j, i)]
            total = w * value if total is None else total + w * value
            weight_sum += w
        if not arrived:
            continue  # nothing reached node i: it keeps its own vector exactly
        if missing:
            if on_missing == "renormalize":
                total = total / weight_sum
            else:
                total = total + (1.0 - weight_sum) * X[i]
        mixed[i] = total
    return mixed


def gossip_over_links(
    grid: Any,
    X: np.ndarray,
    W: np.ndarray,
    active: np.ndarray,
    steps: int,
    round_: int,
    model_nbytes: int,
    on_missing: OnMissing = "renormalize",
    float_mask: np.ndarray | None = None,
    seed: int | None = None,
) -> tuple[np.ndarray, GossipReport]:
    """`steps` gossip steps of the rows of `X` over `grid`'s links (see the module doc).

    `active[i]` marks the nodes that take part this round. `float_mask` marks the
    vector entries that are floats (noise is added only there, as in
    :func:`fedsim.channel.add_noise`); default all. Advances a SimGrid's clock by the
    gossip's duration and counts bytes into ``grid.stats``.
    """
    num_nodes = W.shape[0]
    links = gossip_links(grid, num_nodes)
    seed = getattr(grid, "seed", 0) if seed is None else seed
    stats = getattr(grid, "stats", None)
    count = getattr(stats, "count_bytes", None)
    adjacency = (W > 0) & ~np.eye(num_nodes, dtype=bool)
    talks = adjacency & active[:, None] & active[None, :]  # talks[i, j]: j sends to i
    senders_of = [np.flatnonzero(talks[i]) for i in range(num_nodes)]
    duration, exchanges, lost, bytes_sent = 0.0, 0, 0, 0
    mixed = np.array(X, dtype=np.float64, copy=True)
    for step in range(steps):
        received = talks.copy()
        noise: dict[tuple[int, int], np.ndarray] = {}
        slowest = 0.0
        for i in range(num_nodes):
            for j in senders_of[i]:
                exchanges += 1
                bytes_sent += model_nbytes
                if count is not None:
                    count(int(j), up=model_nbytes)
                if links is None:
                    if count is not None:
                        count(int(i), down=model_nbytes)
                    continue
                link = links[j]
                slowest = max(slowest, transfer_time(link, model_nbytes))
                if link.erasure_p > 0 and rng(seed, "gossip-loss", round_, step, j, i).random() \
                        < link.erasure_p:
                    received[i, j] = False
                    lost += 1
                    continue
                if count is not None:
                    count(int(i), down=model_nbytes)
                if link.noise_sigma > 0:
                    draw = rng(seed, "gossip-noise", round_, step, j, i).standard_normal(
                        mixed.shape[1]) * link.noise_sigma
                    noise[(int(j), int(i))] = draw if float_mask is None else draw * float_mask
        mixed = _mix_active(mixed, W, active, received, on_missing, noise or None)
        duration += slowest
    if isinstance(grid, SimGrid):
        grid.advance_to(grid.now + duration)
    return mixed, GossipReport(duration, exchanges, lost, bytes_sent)


def _mix_active(X: np.ndarray, W: np.ndarray, active: np.ndarray, received: np.ndarray,
                on_missing: OnMissing, noise: dict[tuple[int, int], np.ndarray] | None
                ) -> np.ndarray:
    """A gossip step in which inactive nodes keep their vectors and send nothing."""
    mixed = mix_step(X, W, received, on_missing, noise)
    mixed[~active] = X[~active]
    return mixed

