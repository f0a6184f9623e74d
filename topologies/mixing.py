"""Gossip (mixing) matrices, their spectral gap, and gossip itself (`mix_step`, the one
implementation: the simulator's links play their exchanges through it).

DFedSAM (Shi et al., "Improving the Model Consistency of Decentralized Federated Learning",
ICML 2023, arXiv 2302.04083) needs W symmetric and doubly stochastic with w_ij > 0 only on
edges and the diagonal: then one gossip step X ← W X keeps the network average
exactly, and the disagreement shrinks at least by λ = max(|λ_2(W)|, |λ_m(W)|) per step,
so Q steps (DFedSAM-MGS) act like one step of W^Q with gap 1 − λ^Q.
Rows of X are node vectors (node i's model, flattened).
"""

from __future__ import annotations

from typing import Literal

import networkx as nx
import numpy as np

from topologies.graphs import TopologyError

MixingKind = Literal["metropolis_hastings", "max_degree"]
OnMissing = Literal["renormalize", "self_weight"]


def _adjacency(G: nx.Graph) -> np.ndarray:
    """0/1 adjacency with row i for node i; edge weights are ignored."""
    num_nodes = G.number_of_nodes()
    if set(G.nodes) != set(range(num_nodes)):
        raise TopologyError("a mixing matrix needs the graph's nodes to be 0..m-1")
    if nx.number_of_selfloops(G):
        raise TopologyError("a mixing matrix needs a graph without self-loops")
    return nx.to_numpy_array(G, nodelist=range(num_nodes), weight=None)


def _with_diagonal(off_diagonal: np.ndarray) -> np.ndarray:
    """Put on the diagonal what each row lacks of 1 (w_ii = 1 − Σ_{j≠i} w_ij)."""
    W = off_diagonal.copy()
    np.fill_diagonal(W, 1.0 - off_diagonal.sum(axis=1))
    return W


def metropolis_hastings(G: nx.Graph) -> np.ndarray:
    """w_ij = 1/(1 + max(deg i, deg j)) on edges, w_ii = 1 − Σ_{j≠i} w_ij (the default).

    Symmetric and doubly stochastic on any undirected graph, using only the degrees of
    the two endpoints, so each node can compute its own row from its neighbours.
    """
    A = _adjacency(G)
    degree = A.sum(axis=1)
    return _with_diagonal(A / (1.0 + np.maximum.outer(degree, degree)))


def max_degree(G: nx.Graph) -> np.ndarray:
    """Uniform weights w_ij = 1/(1 + d_max) on edges; needs the global maximum degree."""
    A = _adjacency(G)
    return _with_diagonal(A / (1.0 + A.sum(axis=1).max(initial=0.0)))


MAX_DENSE_NODES = 16_384
"""Nodes a (dense) gossip matrix may have: m x m floats, 2 GiB at this bound."""


def mixing_matrix(G: nx.Graph, kind: MixingKind = "metropolis_hastings") -> np.ndarray:
    """The gossip matrix of `kind` on G."""
    m = G.number_of_nodes()
    if m > MAX_DENSE_NODES:
        raise TopologyError(f"a gossip matrix on {m} nodes needs {m * m * 8 / 2**30:.0f} GiB; "
                            f"decentralized strategies take at most {MAX_DENSE_NODES} clients")
    if kind == "metropolis_hastings":
        return metropolis_hastings(G)
    if kind == "max_degree":
        return max_degree(G)
    raise TopologyError(
        f"unknown mixing matrix kind {kind!r}; use 'metropolis_hastings' or 'max_degree'"
    )


def check_mixing_matrix(W: np.ndarray, atol: float = 1e-10) -> None:
    """Reject a W that would not keep the network average: not square, symmetric,
    non-negative and doubly stochastic (DFedSAM's assumption on W)."""
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise TopologyError(f"mixing matrix must be square, got shape {W.shape}")
    if W.min(initial=0.0) < -atol:
        raise TopologyError(f"mixing matrix has a negative entry {W.min():.3g}")
    if not np.allclose(W, W.T, rtol=0.0, atol=atol):
        raise TopologyError("mixing matrix is not symmetric")
    for axis, what in ((1, "row"), (0, "column")):
        sums = W.sum(axis=axis)
        if not np.allclose(sums, 1.0, rtol=0.0, atol=atol):
            worst = sums[np.argmax(np.abs(sums - 1.0))]
            raise TopologyError(
                f"mixing matrix is not doubly stochastic: a {what} sums to {worst:.6g}, not 1"
            )


def mixing_lambda(W: np.ndarray) -> float:
    """λ = max(|λ_2|, |λ_m|) of a symmetric W: the per-step contraction of disagreement.

    1 on a disconnected graph (λ_2 = 1) or a bipartite-like W with eigenvalue −1.
    """
    eigenvalues = np.linalg.eigvalsh(W)  # ascending
    if eigenvalues.size < 2:
        return 0.0
    return float(max(abs(eigenvalues[-2]), abs(eigenvalues[0])))


def spectral_gap(W: np.ndarray) -> float:
    """1 − λ: the larger, the fewer gossip steps to consensus (it enters the rates as 1/(1−λ)²)."""
    return 1.0 - mixing_lambda(W)


def gossip(X: np.ndarray, W: np.ndarray, steps: int) -> np.ndarray:
    """`steps` synchronous gossip steps X ← W X (rows of X are node vectors), every
    exchange arriving: `mix_step` repeated, as the nodes would do it.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if X.shape[0] != W.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but W is {W.shape[0]} x {W.shape[1]}")
    mixed = np.array(X, dtype=float).reshape(X.shape[0], -1)  # one row per node
    everything = np.ones(W.shape, dtype=bool)
    for _ in range(steps):
        mixed = mix_step(mixed, W, everything)
    return mixed.reshape(X.shape)


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


def consensus_distance(X: np.ndarray) -> float:
    """(1/m) Σ_i ‖x_i − x̄‖²: how far the node models are from agreeing."""
    X = np.asarray(X, dtype=float)
    rows = X.reshape(X.shape[0], -1)
    return float(np.mean(np.sum((rows - rows.mean(axis=0)) ** 2, axis=1)))


def mix_active(X: np.ndarray, W: np.ndarray, active: np.ndarray, received: np.ndarray,
                on_missing: OnMissing, noise: dict[tuple[int, int], np.ndarray] | None
                ) -> np.ndarray:
    """A gossip step in which inactive nodes keep their vectors and send nothing."""
    mixed = mix_step(X, W, received, on_missing, noise)
    np.copyto(mixed, X, where=~active[:, None])
    return mixed
