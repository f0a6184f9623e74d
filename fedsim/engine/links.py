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

On a grid that is not a :class:`~fedsim.engine.grid.SimGrid` (a deployed Flower grid) the
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

from fedsim.core.schema import LinkSpec
from fedsim.core.seeding import rng
from fedsim.engine.channel import transfer_time
from fedsim.engine.grid import SimGrid

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
    consensus). Computed in float64 and vectorised over nodes: pass k adds every
    node's k-th term at once, so each row gets the operations, in the order, that a
    loop over its neighbours would do (same bits).
    """
    X = np.asarray(X, dtype=np.float64)
    num_nodes = W.shape[0]
    rows, cols = np.nonzero(W)  # row-major: each row's neighbours in increasing order
    own = rows == cols
    take = own | np.asarray(received, dtype=bool)[rows, cols]
    missing = np.zeros(num_nodes, dtype=bool)
    missing[rows[~take]] = True
    arrived = np.zeros(num_nodes, dtype=bool)  # some neighbour's vector reached the node
    arrived[rows[take & ~own]] = True
    rows, cols = rows[take], cols[take]
    weights = W[rows, cols].astype(np.float64)
    slot = np.arange(rows.size) - np.searchsorted(rows, rows)  # term's place in its row's sum
    noisy = _noise_by_slot(noise, rows, cols, slot)
    # The sums are made in `mixed` itself, with one scratch array: for a small model
    # the page faults of fresh m x d arrays cost more than the arithmetic.
    mixed, term = np.empty_like(X), np.empty_like(X)
    partial: np.ndarray | None = None
    weight_sum = np.zeros(num_nodes)
    for k in range(int(slot.max()) + 1 if slot.size else 0):
        in_slot = np.flatnonzero(slot == k)
        r, w = rows[in_slot], weights[in_slot]
        value = term[:r.size]
        np.take(X, cols[in_slot], axis=0, out=value)
        for e, draw in noisy.get(k, ()):
            n = int(np.searchsorted(in_slot, e))
            value[n] = value[n] + draw
        np.multiply(value, w[:, None], out=value)
        if k == 0:
            mixed[r] = value  # a row's sum starts at its first term
        elif r.size == num_nodes:  # every row has a k-th term: r is 0..m-1
            np.add(mixed, value, out=mixed)
        else:
            partial = np.empty_like(X) if partial is None else partial
            np.take(mixed, r, axis=0, out=partial[:r.size])
            mixed[r] = np.add(partial[:r.size], value, out=partial[:r.size])
        weight_sum[r] = weight_sum[r] + w
    patch = np.flatnonzero(arrived & missing)
    if on_missing == "renormalize":
        mixed[patch] = mixed[patch] / weight_sum[patch, None]
    else:
        mixed[patch] = mixed[patch] + (1.0 - weight_sum[patch])[:, None] * X[patch]
    np.copyto(mixed, X, where=~arrived[:, None])  # nothing reached them: kept exactly
    return mixed


def _noise_by_slot(noise: dict[tuple[int, int], np.ndarray] | None, rows: np.ndarray,
                   cols: np.ndarray, slot: np.ndarray
                   ) -> dict[int, list[tuple[int, np.ndarray]]]:
    """`noise[(j, i)]` of the summed terms, as slot -> [(term index, draw)]."""
    if not noise:
        return {}
    term_of = {(int(j), int(i)): e for e, (i, j) in enumerate(zip(rows, cols, strict=True))}
    by_slot: dict[int, list[tuple[int, np.ndarray]]] = {}
    for key, draw in noise.items():
        e = term_of.get((int(key[0]), int(key[1])))
        if e is not None:
            by_slot.setdefault(int(slot[e]), []).append((e, draw))
    return by_slot


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
    :func:`fedsim.engine.channel.add_noise`); default all. Advances a SimGrid's clock by the
    gossip's duration and counts bytes into ``grid.stats``. Exchanges are handled as
    arrays; only a link with erasure or noise costs a keyed draw per exchange.
    """
    num_nodes = W.shape[0]
    links = gossip_links(grid, num_nodes)
    seed = getattr(grid, "seed", 0) if seed is None else seed
    stats = getattr(grid, "stats", None)
    count = getattr(stats, "count_bytes", None)
    adjacency = (W > 0) & ~np.eye(num_nodes, dtype=bool)
    talks = adjacency & active[:, None] & active[None, :]  # talks[i, j]: j sends to i
    receivers, senders = np.nonzero(talks)  # receiver-major, senders increasing: as a loop
    num_exchanges = int(receivers.size)
    slowest, may_lose = 0.0, np.zeros(0, dtype=np.int64)
    erasure = sigma = np.zeros(num_nodes)
    if links is not None:
        link_time = np.array([transfer_time(link, model_nbytes) for link in links])
        erasure = np.array([link.erasure_p for link in links])
        sigma = np.array([link.noise_sigma for link in links])
        slowest = float(link_time[senders].max()) if num_exchanges else 0.0
        may_lose = np.flatnonzero(erasure[senders] > 0)
    sent_by = np.bincount(senders, minlength=num_nodes) * steps
    got_by = np.zeros(num_nodes, dtype=np.int64)
    duration, exchanges, lost, bytes_sent = 0.0, 0, 0, 0
    mixed = np.array(X, dtype=np.float64, copy=True)
    for step in range(steps):
        received = talks.copy()
        noise: dict[tuple[int, int], np.ndarray] = {}
        exchanges += num_exchanges
        bytes_sent += num_exchanges * model_nbytes
        if links is None:
            got_by += np.bincount(receivers, minlength=num_nodes)
            mixed = _mix_active(mixed, W, active, received, on_missing, None)
            continue
        arrives = np.ones(num_exchanges, dtype=bool)
        for e in may_lose:
            i, j = int(receivers[e]), int(senders[e])
            if rng(seed, "gossip-loss", round_, step, j, i).random() < erasure[j]:
                arrives[e] = False
        received[receivers[~arrives], senders[~arrives]] = False
        lost += int(num_exchanges - arrives.sum())
        got_by += np.bincount(receivers[arrives], minlength=num_nodes)
        for e in np.flatnonzero(arrives & (sigma[senders] > 0)):
            i, j = int(receivers[e]), int(senders[e])
            draw = rng(seed, "gossip-noise", round_, step, j, i).standard_normal(
                mixed.shape[1]) * links[j].noise_sigma
            noise[(j, i)] = draw if float_mask is None else draw * float_mask
        mixed = _mix_active(mixed, W, active, received, on_missing, noise or None)
        duration += slowest
    if count is not None:
        for node in np.flatnonzero(sent_by + got_by):
            count(int(node), up=int(sent_by[node]) * model_nbytes,
                  down=int(got_by[node]) * model_nbytes)
    if isinstance(grid, SimGrid):
        grid.advance_to(grid.now + duration)
    return mixed, GossipReport(duration, exchanges, lost, bytes_sent)


def _mix_active(X: np.ndarray, W: np.ndarray, active: np.ndarray, received: np.ndarray,
                on_missing: OnMissing, noise: dict[tuple[int, int], np.ndarray] | None
                ) -> np.ndarray:
    """A gossip step in which inactive nodes keep their vectors and send nothing."""
    mixed = mix_step(X, W, received, on_missing, noise)
    np.copyto(mixed, X, where=~active[:, None])
    return mixed
