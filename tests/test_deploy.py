"""The commands `fedsim deploy` prints: secure by default.

Runs on the session's real federation (tests/harness.py, secured as these commands say)
are in tests/test_deploy_strategies.py: every strategy family and the quickstart.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedsim.cli import app


def deploy_output(*args: str) -> str:
    result = CliRunner().invoke(app, ["deploy", "scenarios/quickstart.yaml", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_fedsim_deploy_prints_a_tls_and_node_authentication_setup_by_default():
    out = deploy_output()
    assert "--insecure" not in out and "insecure = true" not in out
    assert "--ssl-certfile" in out and "--ssl-keyfile" in out and "--ssl-ca-certfile" in out
    assert "--enable-supernode-auth" in out and "--root-certificates" in out
    assert "--auth-supernode-private-key" in out and "flwr supernode register" in out
    assert "--host 127.0.0.1" in out and "root-certificates =" in out
    assert "0.0.0.0" not in out


def test_fedsim_deploy_binds_the_host_the_user_names():
    out = deploy_output("--superlink", "192.168.1.10:9000")
    assert "--host 192.168.1.10 --port 9000" in out and "SERVER_SAN=\"IP:192.168.1.10\"" in out
    assert "--superlink 192.168.1.10:9000" in out and "--insecure" not in out


def test_fedsim_deploy_insecure_binds_localhost_and_warns():
    out = deploy_output("--insecure")
    assert "--insecure" in out and "--host 127.0.0.1" in out and "0.0.0.0" not in out
    assert "warning" in out.lower() and "--enable-supernode-auth" not in out


def test_fedsim_deploy_refuses_insecure_beyond_localhost():
    result = CliRunner().invoke(app, ["deploy", "scenarios/quickstart.yaml", "--insecure",
                                      "--superlink", "192.168.1.10:8000"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--insecure" in result.output and "127.0.0.1" in result.output


def test_fedsim_deploy_bind_overrides_the_listening_address():
    out = deploy_output("--superlink", "203.0.113.7:8000", "--bind", "0.0.0.0")
    assert "--host 0.0.0.0 --port 8000" in out and "--superlink 203.0.113.7:8000" in out


@pytest.mark.parametrize("superlink", ["127.0.0.1:http", "127.0.0.1:70000", "127.0.0.1",
                                       ":8000", "127.0.0.1:0"])
def test_fedsim_deploy_rejects_a_bad_superlink_address_in_one_line(superlink):
    result = CliRunner().invoke(app, ["deploy", "scenarios/quickstart.yaml",
                                      "--superlink", superlink])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "--superlink" in result.output
