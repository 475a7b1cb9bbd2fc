"""`topup plugin new NAME`: a starter package that installs, that topup loads at once, and
whose conformance tests say what is left to write."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from service.cli import main
from tests.plugin_venv import PluginVenv


@pytest.mark.slow
def test_the_starter_installs_loads_and_says_what_to_write(tmp_path: Path) -> None:
    venv = PluginVenv(tmp_path / "venv")
    # A hyphenated name: the package is topup-acme-2, the module topup_acme_2.
    made = venv.run("topup", "plugin", "new", "acme-2", "--dir", str(tmp_path), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    package = tmp_path / "topup-acme-2"
    assert (package / "topup_acme_2.py").exists() and (package / "tests/fake_acme_2.py").exists()
    venv.install_editable(package)

    listing = venv.run("topup", "plugins", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "acme-2 0.1.0  [entry point (topup-acme-2 0.1.0)]  suppliers: acme-2" in listing.stdout

    report = tmp_path / "report.xml"
    tests = venv.run("python", "-m", "pytest", f"--junitxml={report}", cwd=package)
    assert tests.returncode == 1, tests.stdout + tests.stderr
    outcomes = outcomes_in(report)
    # The structural checks: topup loads and builds the plugin, and says what is missing.
    assert outcomes.pop("test_topup_loads_the_plugin") == "passed", tests.stdout
    missing = "test_without_its_key_the_plugin_says_which_variable_is_missing"
    assert outcomes.pop(missing) == "passed", tests.stdout
    # The conformance tests: every one that runs fails, saying what to write and where.
    stub = re.compile(r"acme-2\.(submit|query): not written yet — see docs/writing-a-plugin\.md §3")
    failed = {test: why for test, why in outcomes.items() if why != "skipped"}
    assert failed, tests.stdout
    for test, why in failed.items():
        assert stub.search(why), f"{test}: {why}"


def outcomes_in(report: Path) -> dict[str, str]:
    """Each test of a pytest --junitxml report: passed, skipped, or why it failed."""
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        name = f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}"
        name = name.removeprefix("test_conformance::")
        failure = case.find("failure")
        if failure is not None:
            outcomes[name] = failure.get("message") or ""
        else:
            outcomes[name] = "skipped" if case.find("skipped") is not None else "passed"
    return outcomes


def test_the_starter_is_clean_for_ruff(tmp_path: Path) -> None:
    """What an author starts from passes ruff as it stands, with ruff's own defaults."""
    result = CliRunner().invoke(main, ["plugin", "new", "acme", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    ruff = [sys.executable, "-m", "ruff"]
    for command in (["check", "--isolated"], ["format", "--check", "--isolated"]):
        checked = subprocess.run(
            [*ruff, *command, "."], cwd=tmp_path / "topup-acme", capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("name", ["Acme", "acme.cn", "acme/2", "2acme", "acme 2", "a" * 33])
def test_an_invalid_name_is_refused_with_the_rule(tmp_path: Path, name: str) -> None:
    result = CliRunner().invoke(main, ["plugin", "new", name, "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "lower-case ASCII letters, digits, '-' and '_', starting with a letter" in result.output
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_an_existing_package_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "topup-acme").mkdir()
    (tmp_path / "topup-acme" / "topup_acme.py").write_text("# mine")
    result = CliRunner().invoke(main, ["plugin", "new", "acme", "--dir", str(tmp_path)])
    assert result.exit_code == 1 and "already exists" in result.output
    assert (tmp_path / "topup-acme" / "topup_acme.py").read_text() == "# mine"
