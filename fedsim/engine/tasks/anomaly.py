"""Subspace anomaly detection on IoT-like traffic: the FedPCA task.

Nguyen et al., "Federated PCA on Grassmann Manifold for IoT Anomaly Detection", IEEE/ACM ToN
2024 (arXiv 2407.07421); official code ``dual-grp/FedPCA_AnomalyDetection``.

Each client holds **normal** traffic only, as X_i ∈ R^{d×n_i} (columns are samples), and
the federation learns a k-dimensional principal subspace Z. A test sample x is scored by its
reconstruction error s(x) = ‖x − Z_oZ_oᵀx‖² (Z_o an orthonormal basis of Z); scores are
min–max normalised over the test set and flagged anomalous above ``threshold``
(positive class = attack). `evaluate` reports precision, recall, F1, accuracy, FNR, AUC and
the projection distance ‖P_Z − P*‖₂ to the centralised top-k subspace of Σ_i S_i/n_i.

Sources (``task.params.source``):

- ``synthetic`` (default; a small problem with a known answer, not from the paper): d = 10,
  shared random eigenbasis, client i's covariance has eigenvalues ``eigenvalues`` ×
  U(0.5, 1.5) each; the test set is normal samples plus anomalies = normal samples + an
  out-of-subspace component of norm ``anomaly_norm`` (orthogonal to the top-k eigenvectors).
- ``unsw_nb15`` / ``ton_iot``: the public CSVs at ``path`` (users download them; nothing is
  fetched). Numeric feature columns are kept (identifiers, addresses, free text and the label
  columns are dropped, categorical strings are dropped). Following the official code
  (``dual-grp/FedPCA_AnomalyDetection``): normal training rows are sorted by one feature
  (UNSW: ``ct_srv_src``; TON: ``src_port``) and cut into M contiguous chunks (non-IID), each
  client standardises its own chunk; the test set is the first ``test_normal`` normal rows plus
  every attack row, standardised with a scaler fit on all normal training rows. With
  ``test_path`` the test rows come from that file instead (UNSW ships train and test CSVs).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from fedsim.core.errors import ScenarioError
from fedsim.core.seeding import rng
from fedsim.core.task import Dataset, Task, TaskParams

DEFAULT_EIGENVALUES = (10.0, 8.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1)

# Column layouts of the public CSVs: the label column and what is not a feature.
UNSW_NB15_LABEL = "label"
UNSW_NB15_DROP = ("id", "proto", "service", "state", "attack_cat", "label")
UNSW_NB15_SORT = "ct_srv_src"
TON_IOT_LABEL = "label"
TON_IOT_DROP = ("ts", "src_ip", "dst_ip", "proto", "service", "conn_state", "dns_query",
                "ssl_version", "ssl_cipher", "ssl_subject", "ssl_issuer", "http_method",
                "http_uri", "http_referrer", "http_version", "http_user_agent",
                "http_orig_mime_types", "http_resp_mime_types", "weird_name", "weird_addl",
                "weird_notice", "dns_AA", "dns_RD", "dns_RA", "dns_rejected", "ssl_resumed",
                "ssl_established", "type", "label")
TON_IOT_SORT = "src_port"
DEFAULT_THRESHOLDS = {"synthetic": 0.15, "unsw_nb15": 6e-6, "ton_iot": 3e-8}  # official code


class AnomalyParams(TaskParams):
    source: Literal["synthetic", "unsw_nb15", "ton_iot"] = "synthetic"
    rank: int = Field(default=2, ge=1, description="k, the subspace dimension")
    path: str | None = Field(default=None, description="CSV of the real dataset")
    test_path: str | None = Field(default=None, description="separate test CSV (optional)")
    test_normal: int = Field(default=500, ge=1, description="normal rows in the test set")
    threshold: float | None = Field(default=None, ge=0, le=1,
                                    description="on min-max normalised scores; None: default")
    # synthetic only
    samples_per_client: int = Field(default=200, ge=2)
    eigenvalues: list[float] = Field(default_factory=lambda: list(DEFAULT_EIGENVALUES),
                                     min_length=2)
    spectrum_low: float = Field(default=0.5, gt=0)
    spectrum_high: float = Field(default=1.5, gt=0)
    test_anomalies: int = Field(default=500, ge=1)
    anomaly_norm: float = Field(default=10.0, gt=0, description="out-of-subspace component")

    @model_validator(mode="after")
    def _consistent(self) -> AnomalyParams:
        if self.source != "synthetic" and self.path is None:
            raise ValueError(f"source {self.source!r} needs path (the dataset CSV)")
        if self.source == "synthetic" and self.rank >= len(self.eigenvalues):
            raise ValueError("rank must be below the dimension (len(eigenvalues))")
        return self


class Subspace(nn.Module):
    """The model is the d × k matrix Z (float64), initialised orthonormal."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, rank, dtype=torch.float64))
        self.z = nn.Parameter(q)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Reconstruction of each row of `inputs` from the subspace."""
        q, _ = torch.linalg.qr(self.z)
        return inputs @ q @ q.T


def orthonormal_basis(z: np.ndarray) -> np.ndarray:
    return np.linalg.qr(z)[0]


def projection_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖P_a − P_b‖₂ between the column spans of a and b."""
    qa, qb = orthonormal_basis(a), orthonormal_basis(b)
    return float(np.linalg.norm(qa @ qa.T - qb @ qb.T, 2))


def reconstruction_scores(z: np.ndarray, x: np.ndarray) -> np.ndarray:
    """s(x) = ‖x − Z_oZ_oᵀx‖² for each row x."""
    q = orthonormal_basis(z)
    residual = x - (x @ q) @ q.T
    return np.sum(residual ** 2, axis=1)


def detection_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float
                      ) -> dict[str, float]:
    """Precision, recall, F1, accuracy, FNR at the threshold (min-max normalised), and AUC."""
    span = scores.max() - scores.min()
    normalised = (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)
    flagged, positive = normalised > threshold, labels == 1
    tp = float(np.sum(flagged & positive))
    fp = float(np.sum(flagged & ~positive))
    fn = float(np.sum(~flagged & positive))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    # AUC = P(score of an attack > score of a normal sample), ties count half (Mann-Whitney).
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average rank of each tie group
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    auc = ((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
           if n_pos and n_neg else float("nan"))
    return {"precision": precision, "recall": recall, "f1": f1,
            "accuracy": float(np.mean(flagged == positive)), "fnr": 1 - recall, "auc": auc}


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (x - mean) / np.where(std > 0, std, 1.0)


def load_csv_features(path: str, label: str, drop: tuple[str, ...]
                      ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(feature names, float rows, 0/1 labels) of a dataset CSV; non-numeric columns dropped."""
    import pandas as pd

    if not Path(path).is_file():
        raise ScenarioError(f"task.params.path: {path} not found (download the dataset CSV)")
    frame = pd.read_csv(path, low_memory=False)
    frame.columns = [str(c).strip() for c in frame.columns]
    if label not in frame.columns:
        raise ScenarioError(f"task.params.path: {path} has no {label!r} column")
    labels = pd.to_numeric(frame[label], errors="coerce").fillna(0).to_numpy() != 0
    features = frame.drop(columns=[c for c in drop if c in frame.columns])
    numeric = features.apply(pd.to_numeric, errors="coerce")
    numeric = numeric.loc[:, numeric.notna().all()]  # a column with text is not a feature
    return list(numeric.columns), numeric.to_numpy(np.float64), labels.astype(np.int64)


class AnomalyTask(Task):
    name = "anomaly"
    summary = "IoT anomaly detection by a learned principal subspace (FedPCA); synthetic or CSV"
    models = ("subspace",)
    Params = AnomalyParams
    params: AnomalyParams

    # ------------------------------------------------------------ data

    @functools.cached_property
    def _data(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(client matrices X_i as n_i × d rows, test rows, test labels)."""
        if self.params.source == "synthetic":
            return self._synthetic()
        return self._from_csv()

    @functools.cached_property
    def basis(self) -> np.ndarray:
        """The synthetic problem's shared eigenbasis (columns by decreasing eigenvalue)."""
        d = len(self.params.eigenvalues)
        return np.linalg.qr(rng(self.seed, "anomaly-basis").standard_normal((d, d)))[0]

    def _synthetic(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        p = self.params
        base = np.sort(np.asarray(p.eigenvalues))[::-1]
        clients = []
        for i in range(self.num_clients):
            gen = rng(self.seed, "anomaly-client", i)
            spectrum = base * gen.uniform(p.spectrum_low, p.spectrum_high, base.size)
            g = gen.standard_normal((p.samples_per_client, base.size))
            clients.append((g * np.sqrt(spectrum)) @ self.basis.T)
        gen = rng(self.seed, "anomaly-test")
        normal = (gen.standard_normal((p.test_normal + p.test_anomalies, base.size))
                  * np.sqrt(base)) @ self.basis.T
        outside = self.basis[:, p.rank:]
        direction = gen.standard_normal((p.test_anomalies, outside.shape[1])) @ outside.T
        direction *= p.anomaly_norm / np.linalg.norm(direction, axis=1, keepdims=True)
        normal[p.test_normal:] += direction
        labels = np.r_[np.zeros(p.test_normal), np.ones(p.test_anomalies)].astype(np.int64)
        return clients, normal, labels

    def _from_csv(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        p = self.params
        label, drop, sort = ((UNSW_NB15_LABEL, UNSW_NB15_DROP, UNSW_NB15_SORT)
                             if p.source == "unsw_nb15" else
                             (TON_IOT_LABEL, TON_IOT_DROP, TON_IOT_SORT))
        assert p.path is not None
        names, rows, labels = load_csv_features(p.path, label, drop)
        normal = rows[labels == 0]
        if p.test_path is not None:
            test_names, test_rows, test_labels = load_csv_features(p.test_path, label, drop)
            keep = [test_names.index(n) for n in names]
            test_rows = test_rows[:, keep]
            train = normal
        else:
            train = normal[p.test_normal:]
            test_rows = np.vstack([normal[:p.test_normal], rows[labels == 1]])
            test_labels = np.r_[np.zeros(min(p.test_normal, len(normal))),
                                np.ones(int(labels.sum()))].astype(np.int64)
        if len(train) < self.num_clients:
            raise ScenarioError(f"task.params.path: {len(train)} normal training rows for "
                                f"{self.num_clients} clients")
        mean, std = train.mean(axis=0), train.std(axis=0)
        if sort in names:
            train = train[np.argsort(train[:, names.index(sort)], kind="stable")]
        clients = [_standardise(c, c.mean(axis=0), c.std(axis=0))
                   for c in np.array_split(train, self.num_clients)]
        return clients, _standardise(test_rows, mean, std), test_labels

    def local_problem(self, partition_id: int) -> np.ndarray:
        """X_i ∈ R^{d×n_i}: client i's normal samples as columns."""
        return self._data[0][partition_id].T

    @functools.cached_property
    def central_subspace(self) -> np.ndarray:
        """Top-k eigenvectors of Σ_i S_i/n_i (the minimiser of Σ_i f_i), d × k."""
        cov = sum(x.T @ x / len(x) for x in self._data[0])
        values, vectors = np.linalg.eigh(cov)
        return vectors[:, np.argsort(values)[::-1][: self.params.rank]]

    # ------------------------------------------------------------ Task API

    @property
    def dim(self) -> int:
        return int(self._data[1].shape[1])

    def make_model(self) -> nn.Module:
        return Subspace(self.dim, self.params.rank)

    def train_data(self, partition_id: int) -> Dataset:
        x = torch.from_numpy(self._data[0][partition_id])
        return Dataset(x, torch.zeros(len(x), dtype=torch.int64))

    def test_data(self, partition_id: int | None = None) -> Dataset:
        if partition_id is not None:
            return self.train_data(partition_id)
        _, rows, labels = self._data
        return Dataset(torch.from_numpy(rows), torch.from_numpy(labels))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean reconstruction error."""
        return ((x - model(x)) ** 2).sum(dim=1).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """Detection metrics of the reconstruction-error scores and subspace distance."""
        z = model.z.detach().numpy()
        x, labels = data.x.numpy(), data.y.numpy()
        scores = reconstruction_scores(z, x)
        threshold = self.params.threshold
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS[self.params.source]
        metrics = {"loss": float(scores[labels == 0].mean()) if (labels == 0).any() else 0.0,
                   "subspace_distance": projection_distance(z, self.central_subspace)}
        if (labels == 1).any():
            metrics.update(detection_metrics(scores, labels, threshold))
        return metrics


TASKS = (AnomalyTask,)
