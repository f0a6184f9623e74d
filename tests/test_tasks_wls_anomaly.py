"""The `wls` and `anomaly` tasks: closed form, MSD, data generation, CSV loaders, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.core.errors import ScenarioError
from fedsim.engine.tasks import make_task
from fedsim.engine.tasks.anomaly import TON_IOT_DROP, UNSW_NB15_DROP, detection_metrics
from tests.conftest import scenario


def wls(**params: object):  # type: ignore[no-untyped-def]
    return make_task(scenario(task={"name": "wls", "params": params}, clients__count=5))


def anomaly(**params: object):  # type: ignore[no-untyped-def]
    return make_task(scenario(task={"name": "anomaly", "params": params}, clients__count=4))


def test_wls_closed_form_zeroes_the_weighted_gradient() -> None:
    task = wls()
    w = task.closed_form
    gradient = sum(R @ w - r for R, r in (task.local_problem(k) for k in range(5)))
    np.testing.assert_allclose(gradient, 0, atol=1e-10)
    model = task.make_model()
    with torch.no_grad():
        model.w.copy_(torch.from_numpy(w))
    metrics = task.evaluate(model, task.test_data())
    assert metrics["msd_db"] < -250 and metrics["msd_true_db"] < -20


def test_wls_loss_matches_local_problem() -> None:
    task = wls(dim=3, samples_per_client=7)
    x, y, weights = task.client_data(2)
    assert x.shape == (7, 3) and task.train_data(2).x.shape == (7, 4)
    R, r = task.local_problem(2)
    w = np.array([0.3, -1.0, 2.0])
    model = task.make_model()
    with torch.no_grad():
        model.w.copy_(torch.from_numpy(w))
    data = task.train_data(2)
    expected = (w @ R @ w - 2 * r @ w + float(weights @ y ** 2)) / 7
    assert task.loss(model, data.x, data.y).item() == pytest.approx(expected)


def test_wls_data_are_deterministic_per_seed() -> None:
    np.testing.assert_array_equal(wls().client_data(1)[0], wls().client_data(1)[0])


def test_synthetic_anomalies_lie_outside_the_normal_subspace() -> None:
    task = anomaly()
    test = task.test_data()
    assert task.local_problem(0).shape == (10, 200)
    truth = task.basis[:, :2]
    metrics = detection_metrics(
        np.sum((test.x.numpy() - test.x.numpy() @ truth @ truth.T) ** 2, axis=1),
        test.y.numpy(), 0.05)
    assert metrics["auc"] > 0.99


def test_detection_metrics_on_a_known_case() -> None:
    scores = np.array([0.0, 0.1, 0.2, 0.9, 1.0, 0.15])
    labels = np.array([0, 0, 0, 1, 1, 1])
    m = detection_metrics(scores, labels, threshold=0.5)
    assert (m["precision"], m["recall"]) == (1.0, pytest.approx(2 / 3))
    assert m["auc"] == pytest.approx(8 / 9)  # the 0.15 attack beats one of three normals


UNSW_COLUMNS = ["id", "dur", "proto", "service", "state", "spkts", "dpkts", "sbytes", "dbytes",
                "rate", "sttl", "dttl", "sload", "dload", "sloss", "dloss", "sinpkt", "dinpkt",
                "sjit", "djit", "swin", "stcpb", "dtcpb", "dwin", "tcprtt", "synack", "ackdat",
                "smean", "dmean", "trans_depth", "response_body_len", "ct_srv_src",
                "ct_state_ttl", "ct_dst_ltm", "ct_src_dport_ltm", "ct_dst_sport_ltm",
                "ct_dst_src_ltm", "is_ftp_login", "ct_ftp_cmd", "ct_flw_http_mthd", "ct_src_ltm",
                "ct_srv_dst", "is_sm_ips_ports", "attack_cat", "label"]
TON_COLUMNS = ["ts", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "service", "duration",
               "src_bytes", "dst_bytes", "conn_state", "missed_bytes", "src_pkts",
               "src_ip_bytes", "dst_pkts", "dst_ip_bytes", "dns_query", "dns_qclass",
               "dns_qtype", "dns_rcode", "dns_AA", "dns_RD", "dns_RA", "dns_rejected",
               "ssl_version", "ssl_cipher", "ssl_resumed", "ssl_established", "ssl_subject",
               "ssl_issuer", "http_trans_depth", "http_method", "http_uri", "http_version",
               "http_request_body_len", "http_response_body_len", "http_status_code",
               "http_user_agent", "http_orig_mime_types", "http_resp_mime_types", "weird_name",
               "weird_addl", "weird_notice", "label", "type"]


def write_csv(path: Path, columns: list[str], drop: tuple[str, ...], rows: int) -> None:
    """A CSV in the dataset's layout: text in the dropped columns, numbers elsewhere."""
    gen = np.random.default_rng(0)
    labels = (np.arange(rows) % 4 == 3).astype(int)
    lines = [",".join(columns)]
    for i in range(rows):
        cells = []
        for name in columns:
            if name == "label":
                cells.append(str(labels[i]))
            elif name in drop:
                cells.append("tcp" if name != "id" else str(i))
            else:
                cells.append(f"{gen.normal() + 5 * labels[i]:.4f}")
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("source", "columns", "drop"),
                         [("unsw_nb15", UNSW_COLUMNS, UNSW_NB15_DROP),
                          ("ton_iot", TON_COLUMNS, TON_IOT_DROP)])
def test_csv_loaders_read_the_public_layouts(tmp_path: Path, source: str, columns: list[str],
                                             drop: tuple[str, ...]) -> None:
    path = tmp_path / f"{source}.csv"
    write_csv(path, columns, drop, rows=200)
    task = anomaly(source=source, path=str(path), test_normal=30)
    features = len([c for c in columns if c not in drop])
    assert task.local_problem(0).shape[0] == features
    assert sum(task.local_problem(i).shape[1] for i in range(4)) == 150 - 30
    np.testing.assert_allclose(task.local_problem(1).mean(axis=1), 0, atol=1e-12)
    test = task.test_data()
    assert test.x.shape == (30 + 50, features) and int(test.y.sum()) == 50


def test_csv_source_without_path_is_a_scenario_error() -> None:
    with pytest.raises(ScenarioError, match="path"):
        anomaly(source="unsw_nb15")
