"""The deployment files parse, use the pinned Flower version, and the certificates verify."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def pinned_flwr() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(re.search(r"==([\d.]+)", d).group(1) for d in deps if d.startswith("flwr["))


@pytest.mark.parametrize("name", ["superlink", "supernode"])
def test_dockerfile_builds_on_flowers_image_of_the_pinned_version(name):
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={pinned_flwr()}" in text
    assert f"FROM flwr/{name}:${{FLWR_VERSION}}" in text
    assert f'ENTRYPOINT ["flower-{name}"]' in text


def test_compose_runs_a_tls_superlink_and_supernodes_on_one_port():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    link = services["superlink"]
    assert link["build"]["args"]["FLWR_VERSION"] == pinned_flwr()
    assert "--port=8000" in link["command"] and link["ports"] == ["8000:8000"]
    assert any(c.startswith("--ssl-certfile=") for c in link["command"])
    nodes = [s for name, s in services.items() if name.startswith("supernode")]
    assert len(nodes) >= 2
    partitions = set()
    for node in nodes:
        assert node["build"]["args"]["FLWR_VERSION"] == pinned_flwr()
        assert "--superlink=superlink:8000" in node["command"]
        assert "--root-certificates=certificates/ca.crt" in node["command"]
        config = next(c for c in node["command"] if c.startswith("--node-config="))
        partitions.add(re.search(r"partition-id=(\d+)", config).group(1))
    assert len(partitions) == len(nodes)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_generate_certs_makes_a_server_certificate_signed_by_the_ca(tmp_path):
    script = tmp_path / "generate_certs.sh"
    shutil.copy(DOCKER / "generate_certs.sh", script)
    subprocess.run(["bash", str(script)], check=True, capture_output=True)
    certs = tmp_path / "certificates"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", certs / "ca.crt", certs / "server.pem"],
        capture_output=True, text=True)
    assert verify.returncode == 0 and "OK" in verify.stdout
    text = subprocess.run(["openssl", "x509", "-in", certs / "server.pem", "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:superlink" in text and "DNS:localhost" in text
