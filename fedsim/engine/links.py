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
  sum over the Q steps (``SimGrid.record_exchanges``);
- **noise**: the receiver gets the sender's vector plus N(0, σ²) per float entry
  (σ = the sender's uplink ``noise_sigma``), a fresh draw per exchange;
- **erasure**: an exchange is lost with the uplink's ``erasure_p``;
- **bytes**: every exchange, lost or not, counts the model's payload bytes as ``up``
  for the sender and, if it arrived, ``down`` for the receiver
  (``SimGrid.record_exchanges``). Per node and round that is Q·deg(i) models up.

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

On a deployed grid the server relays the vectors instead (no noise, no loss, no time:
`fedsim.core.services.DeployedServices.gossip`); the rows are mixed by the same
`topologies.mixing.mix_active`.

Randomness: loss and noise of the exchange ``sender -> receiver`` in gossip step
``step`` of round ``round`` come from ``rng(seed, "gossip-loss"|"gossip-noise",
round, step, sender, receiver)``, so they do not depend on the order of evaluation.
"""

from __future__ import annotations

import numpy as np

from fedsim.core.seeding import rng
from fedsim.core.services import GossipReport
from fedsim.engine.channel import transfer_time
from fedsim.engine.grid import SimGrid
from topologies.mixing import OnMissing, mix_active


def gossip_over_links(
    grid: SimGrid,
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
    gossip's duration and counts its bytes (``SimGrid.record_exchanges``). Exchanges are handled as
    arrays; only a link with erasure or noise costs a keyed draw per exchange.
    """
    num_nodes = W.shape[0]
    links = [grid.devices.uplink(node, grid.channel.uplink) for node in range(num_nodes)]
    seed = grid.seed if seed is None else seed
    adjacency = (W > 0) & ~np.eye(num_nodes, dtype=bool)
    talks = adjacency & active[:, None] & active[None, :]  # talks[i, j]: j sends to i
    receivers, senders = np.nonzero(talks)  # receiver-major, senders increasing: as a loop
    num_exchanges = int(receivers.size)
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
        mixed = mix_active(mixed, W, active, received, on_missing, noise or None)
        duration += slowest
    grid.record_exchanges(duration, {
        int(node): (int(sent_by[node]) * model_nbytes, int(got_by[node]) * model_nbytes)
        for node in np.flatnonzero(sent_by + got_by)})
    return mixed, GossipReport(duration, exchanges, lost, bytes_sent)
