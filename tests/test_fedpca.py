"""FedPG / FedPE (Nguyen et al., IEEE/ACM ToN 2024) on a synthetic subspace problem.

d = 10, k = 2, M = 20 clients × 200 samples, shared eigenbasis, per-client spectra
(10, 8, 3, 2, 1, .5, .4, .3, .2, .1) × U(0.5, 1.5); R = 20, lr = 0.02, ρ = 1.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from fedsim.core.codec import flatten
from fedsim.runner import simulate
from strategies.fedpca import qf
from tests.conftest import scenario

PCA: dict[str, Any] = {
    "name": "fedpca", "seed": 0, "rounds": 10,
    "task": {"name": "anomaly"},
    "clients": {"count": 20},
    "strategy": {"name": "fedpg", "params": {"fraction": 1.0, "local_steps": 20, "lr": 0.02,
                                             "rho": 1.0}},
    "backend": {"kind": "inline"},
    "evaluation": {"centralized_every": 5},
}


def run(**overrides: Any) -> tuple[list[dict[str, Any]], np.ndarray]:
    result = simulate(scenario(copy.deepcopy(PCA), **overrides))
    assert result.arrays is not None
    return [r for r in result.records if "subspace_distance" in r], flatten(result.arrays)


def test_fedpg_full_participation_reaches_subspace_distance_below_1e_2() -> None:
    records, _ = run(rounds=15)
    assert records[0]["subspace_distance"] > 0.5
    assert records[-1]["subspace_distance"] < 1e-2


def test_fedpe_and_fedpg_agree_with_centralized_pca() -> None:
    # The task's synthetic clients share one eigenbasis (IID subspaces): both variants must
    # find the top-k subspace of the pooled covariance.
    for name in ("fedpg", "fedpe"):
        records, _ = run(rounds=15, strategy__name=name)
        assert records[-1]["subspace_distance"] < 2e-2, name


def test_anomaly_scores_separate_out_of_subspace_samples() -> None:
    records, _ = run(rounds=10)
    assert records[-1]["auc"] > 0.999 and records[-1]["auc"] > records[0]["auc"]
    assert records[-1]["f1"] > 0.9


def test_textbook_and_simplified_server_rules_agree_with_full_participation() -> None:
    _, textbook = run(rounds=4, strategy__params__server_rule="textbook")
    _, simplified = run(rounds=4, strategy__params__server_rule="simplified")
    np.testing.assert_allclose(textbook, simplified, atol=1e-10)


def test_client_subsampling_runs_sampled_clients_only() -> None:
    result = simulate(scenario(copy.deepcopy(PCA), rounds=6,
                               strategy__params__fraction=0.25))
    sent = [r["sent"] for r in result.records if "sent" in r]
    assert sent == [5] * 6
    assert result.records[-1]["subspace_distance"] < result.records[0]["subspace_distance"]


def test_qr_retraction_fixes_signs() -> None:
    matrix = np.random.default_rng(0).standard_normal((6, 2))
    q = qf(matrix)
    np.testing.assert_allclose(q.T @ q, np.eye(2), atol=1e-12)
    assert np.all(np.diag(q.T @ matrix) > 0)  # diag(R) > 0
