"""The deployment files parse, use the pinned Flower version, and the certificates verify."""

from __future__ import annotations

import os
import re
import shutil
import stat
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
    assert "--port=8000" in link["command"]
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


def test_compose_publishes_the_superlink_on_localhost_unless_told_otherwise():
    link = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["superlink"]
    assert link["ports"] == ["${SUPERLINK_BIND:-127.0.0.1}:8000:8000"]


def test_compose_mounts_no_private_key_but_each_containers_own():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    link = services["superlink"]
    sources = {v.split(":")[0] for v in link["volumes"]}
    assert sources == {"./certificates/ca.crt", "./certificates/server.pem",
                       "./certificates/server.key"}  # not ca.key, not the whole directory
    for name, node in services.items():
        if not name.startswith("supernode"):
            continue
        key = next(c for c in node["command"] if c.startswith("--auth-supernode-private-key="))
        key = key.split("=", 1)[1]
        assert {v.split(":")[0] for v in node["volumes"]} == {"./certificates/ca.crt",
                                                              f"./{key}"}


def test_compose_enables_supernode_authentication():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert "--enable-supernode-auth" in services["superlink"]["command"]
    keys = [next(c for c in node["command"] if c.startswith("--auth-supernode-private-key="))
            for name, node in services.items() if name.startswith("supernode")]
    assert len(set(keys)) == len(keys) >= 2


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


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_generate_certs_writes_private_keys_0600_into_the_directory_given(tmp_path):
    out = tmp_path / "out"
    owner = f"{os.getuid()}:{os.getgid()}"  # chown to oneself needs no root
    subprocess.run(["bash", str(DOCKER / "generate_certs.sh"), str(out)], check=True,
                   capture_output=True, env={**os.environ, "CERT_OWNER": owner})
    assert {p.name: mode(p) for p in out.iterdir()} == {
        "ca.key": 0o600, "server.key": 0o600, "ca.crt": 0o644, "server.pem": 0o644}


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_generate_node_keys_writes_private_keys_0600(tmp_path):
    subprocess.run(["bash", str(DOCKER / "generate_node_keys.sh"), "2", str(tmp_path)],
                   check=True, capture_output=True)
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == {
        "supernode-0": 0o600, "supernode-1": 0o600,
        "supernode-0.pub": 0o644, "supernode-1.pub": 0o644}
    assert (tmp_path / "supernode-0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
