"""Plug-ins come from installed distributions' entry points, one per name, each imported
only when used; what cannot be used is one line naming the entry point and its distribution.

Distributions are faked as `*.dist-info` folders on `sys.path` (what `pip install` leaves),
so nothing is installed; the example plug-in package is tested in test_plugin_example.py.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import strategies
from fedsim.cli import app
from fedsim.core.errors import ScenarioError
from fedsim.core.plugins import PluginError, topology_registry
from fedsim.engine import tasks

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def fake_distribution(where: Path, name: str, version: str, entry_points: str,
                      modules: dict[str, str] | None = None) -> None:
    """A distribution as an installer leaves it: metadata, entry points, modules."""
    info = where / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in (modules or {}).items():
        (where / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def fresh_registries() -> Iterator[None]:
    """Registries read again from what is on `sys.path` now, and again after the test."""
    caches = (strategies.registry, tasks.registry, topology_registry)

    def clear() -> None:
        importlib.invalidate_caches()
        for cache in caches:
            cache.cache_clear()

    clear()
    yield
    clear()


def test_the_projects_own_plugins_are_registered_by_entry_points(fresh_registries) -> None:
    assert {"fedavg", "fedspeed", "dpsgd"} <= set(strategies.registry().names())
    assert {"digits", "anomaly", "wls"} <= set(tasks.registry().names())
    assert {"ring", "erdos_renyi", "edge_list"} <= set(topology_registry().names())
    assert str(strategies.registry().origin("fedspeed")) == "fedsim (this project)"


def test_every_strategy_task_and_topology_module_entry_has_its_entry_point() -> None:
    """A `STRATEGIES`/`TASKS`/`TOPOLOGIES` item without an entry point in pyproject.toml
    would be silently unusable: every one of this project's is registered, by its name."""
    import pkgutil

    import fedsim.engine.tasks
    from topologies import TOPOLOGIES

    declared: dict[str, set[str]] = {"strategies": set(), "tasks": set()}
    for package, attr, kind in ((strategies, "STRATEGIES", "strategies"),
                                (fedsim.engine.tasks, "TASKS", "tasks")):
        for module in pkgutil.iter_modules(package.__path__):
            loaded = importlib.import_module(f"{package.__name__}.{module.name}")
            declared[kind] |= {item.name for item in getattr(loaded, attr, ())}
    declared["topologies"] = {spec.model_fields["name"].default for spec in TOPOLOGIES}
    for kind, registry in (("strategies", strategies.registry()), ("tasks", tasks.registry()),
                           ("topologies", topology_registry())):
        ours = {name for name in registry.names()
                if registry.origin(name).distribution == "fedsim"}
        assert ours == declared[kind], kind


def test_a_dist_info_in_the_working_directory_registers_nothing(
        tmp_path, monkeypatch, fresh_registries) -> None:
    fake_distribution(tmp_path, "planted", "1.0", """
        [fedsim.strategies]
        planted = planted_strategy:STRATEGIES
        """, {"planted_strategy": "raise SystemExit('this must never run')\n"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # where `python -m` puts the working directory
    # Python itself would register it: the filter is what keeps it out.
    assert "planted" in importlib.metadata.entry_points(group="fedsim.strategies").names
    assert "planted" not in strategies.registry().names()
    with pytest.raises(ScenarioError, match=r"^strategy\.name: unknown strategy 'planted'"):
        strategies.strategy_info("planted")
    assert "planted_strategy" not in sys.modules


def test_two_distributions_with_one_name_is_one_line_naming_both(
        tmp_path, monkeypatch, fresh_registries) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "pkg-a", "1.0", "[fedsim.topologies]\ntwin = a_mod:TOPOLOGIES\n")
    fake_distribution(site, "pkg-b", "2.0", "[fedsim.topologies]\ntwin = b_mod:TOPOLOGIES\n"
                                            "ring = b_mod:TOPOLOGIES\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(PluginError) as error:
        topology_registry().get("twin", "topology.name")
    message = str(error.value)
    assert message == ("topology 'twin' is registered by two distributions: pkg-a 1.0 (twin = "
                       "a_mod:TOPOLOGIES) and pkg-b 2.0 (twin = b_mod:TOPOLOGIES); uninstall "
                       "one of them")
    with pytest.raises(PluginError, match=r"'ring' is registered by two distributions: "
                                          r"(fedsim \(this project\)|pkg-b 2.0)"):
        topology_registry().get("ring", "topology.name")
    assert topology_registry().get("star", "topology.name").summary  # the others still work


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch, fresh_registries) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "broken-plugin", "0.3", """
        [fedsim.strategies]
        broken = broken_strategy:STRATEGIES
        """, {"broken_strategy": "import torchvision_that_is_not_installed\n"})
    monkeypatch.syspath_prepend(str(site))


BROKEN = ("strategy 'broken' (entry point 'broken = broken_strategy:STRATEGIES' of "
          "broken-plugin 0.3) failed to load: ModuleNotFoundError: No module named "
          "'torchvision_that_is_not_installed'")


def test_a_plugin_that_fails_to_import_is_one_line_when_used(broken_plugin) -> None:
    result = CliRunner().invoke(app, ["validate", str(QUICKSTART),
                                      "--set", "strategy.name=broken"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == f"error: {QUICKSTART}: {BROKEN}"
    assert CliRunner().invoke(app, ["validate", str(QUICKSTART)]).exit_code == 0


def test_a_plugin_that_fails_to_import_is_one_line_when_listed(broken_plugin) -> None:
    listing = CliRunner().invoke(app, ["strategies"])
    assert listing.exit_code == 2 and "Traceback" not in listing.output
    lines = listing.output.splitlines()
    assert lines[-1] == f"error: {BROKEN}"
    assert any(line.startswith("fedspeed\t") for line in lines)  # the others are listed
    detail = CliRunner().invoke(app, ["strategies", "broken"])
    assert detail.exit_code == 2 and detail.output.strip() == f"error: {BROKEN}"


@pytest.mark.parametrize("command", ["strategies", "tasks", "topologies"])
def test_an_unknown_name_to_list_is_one_line_exit_2(command: str) -> None:
    result = CliRunner().invoke(app, [command, "nonesuch"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: unknown ") and "'nonesuch' (available: " in (
        result.output)


def test_listings_show_parameters_with_types_defaults_and_origin() -> None:
    detail = CliRunner().invoke(app, ["topologies", "erdos_renyi"])
    assert detail.exit_code == 0, detail.output
    rows = [line.split("\t") for line in detail.output.splitlines()]
    assert ["from", "fedsim (this project)"] in rows
    assert ["p", "float", "required", "edge probability, in (0, 1]"] in rows
    assert ["max_tries", "int", "100", "draws before giving up on connectedness"] in rows
    digits = CliRunner().invoke(app, ["tasks", "digits"]).output.splitlines()
    assert "models\tcnn, mlp, logreg" in digits and "test_fraction\tfloat\t0.2\t" in digits


def test_a_run_imports_only_the_plugins_it_names() -> None:
    """The quickstart (fedavg on digits) checked as `fedsim validate` does: no other
    strategy's or task's module is imported."""
    child = textwrap.dedent(f"""
        import json, sys
        from fedsim.checks import check_run
        from fedsim.scenario import load_scenario
        check_run(load_scenario({str(QUICKSTART)!r}))
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(
            ("strategies.", "fedsim.engine.tasks.")))))
    """)
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["fedsim.engine.tasks.arrays",  # digits' base class
                                       "fedsim.engine.tasks.digits",
                                       "fedsim.engine.tasks.partition", "strategies.flower"]


def test_the_client_app_imports_only_the_strategy_its_run_names() -> None:
    """A deployed SuperNode starts a ClientApp process per message: it adds the client
    actions of the run's strategy (here FedSpeed's `train.fedspeed`) when a message needs
    them, and imports no other strategy (nor a broken plug-in, which stays no hostage)."""
    child = textwrap.dedent(f"""
        import json, sys
        from fedsim.runner import simulate
        from fedsim.scenario import load_scenario
        scenario = load_scenario({str(QUICKSTART)!r}, ["strategy.name=fedspeed", "rounds=1",
                                 "clients.count=2", "backend.kind=inline",
                                 "training.momentum=0"])
        before = sorted(m for m in sys.modules if m.startswith("strategies."))
        simulate(scenario)
        after = sorted(m for m in sys.modules if m.startswith("strategies."))
        print(json.dumps([before, after]))
    """)
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [["strategies.fedspeed"]] * 2
