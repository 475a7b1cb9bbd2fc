"""docs/writing-a-plugin.md runs as written, the way an integrator follows it: `topup plugin
new acme`, the guide's snippets written into the files they belong to, `pip install -e` (in
an environment of its own), the package's own tests (topup's conformance tests against the
guide's fake supplier), `topup plugins`, and real orders through a real `topup serve`.

Each python and toml block of the guide says where it goes, in an HTML comment on the line
before it:

- ``<!-- file: topup-acme/PATH -->``: a part of that file, in the guide's order;
- ``<!-- file: topup-acme/PATH, class NAME -->``: members of class NAME in that file, written
  at the top level (as ruff formats them); they go at the end of the class, indented, in the
  guide's order (the block defining the class comes first);
- ``<!-- example: NAME -->``: an optional variant, run by the extra tests below;
- ``<!-- config: plugins.toml -->``: the service's configuration (§6);
- ``<!-- output: COMMAND -->``: lines COMMAND prints.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import new_partner
from tests.plugin_venv import PluginVenv
from tests.support import REPO, ServiceProcess, eventually, fresh_order_no
from topup.testing import running_simulator

GUIDE = REPO / "docs" / "writing-a-plugin.md"
PACKAGE = "topup-acme"
API_KEY = "guide-acme-key"


@dataclass(frozen=True)
class Block:
    marker: str  # what the HTML comment before the block says; "" if none
    language: str
    text: str


def guide_blocks() -> list[Block]:
    blocks, lines = [], GUIDE.read_text(encoding="utf-8").splitlines(keepends=True)
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("```"):
            index += 1
            continue
        before = lines[index - 1].strip() if index else ""
        marker = re.fullmatch(r"<!-- (.+) -->", before)
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        text = "".join(lines[index + 1 : end])
        blocks.append(Block(marker.group(1) if marker else "", line[3:].strip(), text))
        index = end + 1
    return blocks


def marked(kind: str) -> dict[str, str]:
    """The blocks marked ``kind: NAME``, by NAME."""
    return {
        block.marker.split(": ", 1)[1]: block.text
        for block in guide_blocks()
        if block.marker.startswith(f"{kind}: ")
    }


def package_files() -> dict[str, str]:
    """The package's files as the guide writes them, by path inside the package."""
    parts: dict[str, list[str]] = {}
    members: dict[tuple[str, str], list[str]] = {}
    for block in guide_blocks():
        if not block.marker.startswith(f"file: {PACKAGE}/"):
            continue
        path, _, inside = block.marker.removeprefix(f"file: {PACKAGE}/").partition(", class ")
        if inside:
            members.setdefault((path, inside), []).append(block.text)
        else:
            parts.setdefault(path, []).append(block.text)
    for (path, cls), texts in members.items():
        [defining] = [i for i, part in enumerate(parts[path]) if f"\nclass {cls}(" in part]
        parts[path][defining] += "".join("\n" + textwrap.indent(text, "    ") for text in texts)
    return {path: "\n\n".join(texts) for path, texts in parts.items()}


def test_every_python_and_toml_block_says_where_it_goes() -> None:
    for block in guide_blocks():
        if block.language in ("python", "toml"):
            assert block.marker, f"a {block.language} block without a marker:\n{block.text}"
    # Each example has its test in EXAMPLE_TESTS.
    assert set(marked("example")) == {"balance", "lookup-carrier", "refuses-reused-reference"}
    assert set(package_files()) == {
        "pyproject.toml",
        "topup_acme.py",
        "tests/fake_acme.py",
        "tests/test_conformance.py",
    }


# What runs the guide's optional examples, as tests of the package.
EXAMPLE_TESTS = """
import httpx
import pytest
import test_conformance
from example_balance import AcmeWithBalance
from example_lookup_carrier import AcmeWithCarrierLookup
from example_refuses_reused_reference import AcmeRefusingReuse
from fake_acme import FakeAcme

from topup_acme import AcmeSettings


@pytest.fixture(scope="module")
def fake():
    with FakeAcme(test_conformance.API_KEY) as fake:
        yield fake


class TestAcmeRefusingReuse(test_conformance.TestAcme):
    @pytest.fixture
    async def supplier(self, fake, monkeypatch):
        monkeypatch.setenv("TOPUP_ACME_API_KEY", test_conformance.API_KEY)
        settings = AcmeSettings(base_url=fake.url, callback_url="http://127.0.0.1/", timeout=1)
        supplier = AcmeRefusingReuse(settings)
        yield supplier
        await supplier.aclose()


def acme_answers(request):
    # The calls ACME has in the guide's examples, as a MockTransport answers them.
    if request.url.path == "/acme/v1/balance":
        return httpx.Response(200, json={"balance": "1234.56"})
    if request.url.path == "/acme/v1/numbers/13800138000":
        return httpx.Response(200, text="CMCC")
    if request.url.path.startswith("/acme/v1/numbers/"):
        return httpx.Response(200, text="UNKNOWN")
    return httpx.Response(404, json={"error": "NOT_FOUND"})


async def mocked(cls, monkeypatch):
    monkeypatch.setenv("TOPUP_ACME_API_KEY", "k")
    supplier = cls(AcmeSettings(base_url="http://acme.test", callback_url="x"))
    await supplier.aclose()
    supplier._http = httpx.AsyncClient(
        base_url="http://acme.test", transport=httpx.MockTransport(acme_answers)
    )
    return supplier


async def test_the_balance_comes_in_fen(monkeypatch):
    supplier = await mocked(AcmeWithBalance, monkeypatch)
    assert await supplier.balance() == 123456
    await supplier.aclose()


async def test_the_carrier_lookup_names_the_carrier_or_none(monkeypatch):
    supplier = await mocked(AcmeWithCarrierLookup, monkeypatch)
    assert await supplier.lookup_carrier("13800138000") == "中国移动"
    assert await supplier.lookup_carrier("13800138001") is None
    await supplier.aclose()
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PluginVenv]:
    """The guide's package, started with `topup plugin new acme` and installed with
    `pip install -e` in an environment of its own."""
    root = tmp_path_factory.mktemp("guide")
    venv = PluginVenv(root / "venv")
    made = venv.run("topup", "plugin", "new", "acme", "--dir", str(root), cwd=root)
    assert made.returncode == 0, made.stderr
    package = root / PACKAGE
    files = package_files()
    for path in ("pyproject.toml", "tests/test_conformance.py"):
        written = (package / path).read_text(encoding="utf-8")
        assert written == files[path], f"the guide's {path} is not what `topup plugin new` writes"
    for path, text in files.items():
        (package / path).write_text(text, encoding="utf-8")
    for name, text in marked("example").items():
        (package / "tests" / f"example_{name.replace('-', '_')}.py").write_text(text)
    (package / "tests" / "test_guide_examples.py").write_text(EXAMPLE_TESTS)
    venv.install_editable(package)
    return package, venv


@pytest.mark.slow
def test_the_guide_plugin_passes_the_conformance_tests(installed) -> None:
    package, venv = installed
    result = venv.run("python", "-m", "pytest", "-v", "-p", "no:cacheprovider", cwd=package)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = set(re.findall(r"^tests/(\S+) PASSED", result.stdout, re.M))
    assert "test_conformance.py::test_topup_loads_the_plugin" in passed
    callback_read = "test_conformance.py::TestAcme::test_callback_reports_the_outcome"
    assert any(test.startswith(callback_read) for test in passed), result.stdout
    # The variant that declares refuses_reused_reference runs the tests the plain one skips.
    for test in (
        "test_a_reference_never_sent_is_no_such_order",
        "test_a_reused_reference_is_refused_not_charged_twice[open]",
        "test_a_reused_reference_is_refused_not_charged_twice[settled]",
    ):
        assert f"test_guide_examples.py::TestAcmeRefusingReuse::{test}" in passed, test
    assert "test_guide_examples.py::test_the_balance_comes_in_fen" in passed
    assert "test_guide_examples.py::test_the_carrier_lookup_names_the_carrier_or_none" in passed


def test_topup_plugins_lists_it_as_the_guide_shows(installed, tmp_path: Path) -> None:
    _package, venv = installed
    (tmp_path / "plugins.toml").write_text(marked("config")["plugins.toml"], encoding="utf-8")
    env = {"TOPUP_CONFIG": str(tmp_path / "plugins.toml"), "TOPUP_ACME_API_KEY": API_KEY}
    listing = venv.run("topup", "plugins", "--check", cwd=tmp_path, **env)
    assert listing.returncode == 0, listing.stderr
    for line in marked("output")["topup plugins"].splitlines():
        assert line in listing.stdout.splitlines(), listing.stdout
    assert "enabled" in listing.stdout and "acme, sandbox" in listing.stdout


# The guide's plugin again, under a hyphenated name: such a name works in plugins.toml, in
# the callback URL, in the metrics (tests/test_plugins.py has the names that do not).
HYPHENATED = """
import topup
from topup_acme import Acme


class HyphenatedAcme(Acme):
    name = "acme-2"


@topup.hookimpl
def register_suppliers(register):
    register(HyphenatedAcme)
"""
HYPHENATED_CONFIG = """
[plugin.acme-2]
base_url = "http://127.0.0.1:9000"
callback_url = "http://127.0.0.1:8000/callback/acme-2"

[suppliers."中国联通"]
route = ["acme-2"]
products = [{ product_id = "LT10", face_value = "10", price = "9.95" }]

[dispatch]
# Long enough that only a callback can settle an order within the test.
query_delays = [30]
"""


@pytest.fixture(scope="module")
def service(installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """`topup serve` from the plugin's environment, with the guide's plugins.toml (and the
    hyphenated plugin), and `topup simulate` as ACME."""
    _package, venv = installed
    workdir = tmp_path_factory.mktemp("guide-service")
    (workdir / "acme_hyphenated.py").write_text(HYPHENATED)
    env = {
        "TOPUP_ACME_API_KEY": API_KEY,
        "TOPUP_PLUGINS": "acme_hyphenated",
        "PYTHONPATH": f"{workdir}:{REPO}",
    }
    with running_simulator("--settle", "0.3", env=env) as simulator:
        service = ServiceProcess(workdir, "", env=env, topup=venv.topup)
        config = marked("config")["plugins.toml"]
        assert 'enabled = ["acme", "sandbox"]' in config
        config = config.replace(
            'enabled = ["acme", "sandbox"]', 'enabled = ["acme", "sandbox", "acme-2"]'
        )
        config = (config + HYPHENATED_CONFIG).replace("http://127.0.0.1:9000", simulator)
        config = config.replace("http://127.0.0.1:8000", service.url)
        service.config_path.write_text(config, encoding="utf-8")
        service.start()
        try:
            yield service, simulator, new_partner(service)
        finally:
            service.stop()


@pytest.mark.parametrize(
    ("carrier", "product", "plugin"), [("中国移动", "YD10", "acme"), ("中国联通", "LT10", "acme-2")]
)
def test_orders_reach_the_plugin_through_a_real_service(
    service, carrier: str, product: str, plugin: str
) -> None:
    server, simulator, partner = service
    cstm = fresh_order_no()
    placed = partner.order(cstm, phone="13900012341", Supplier=carrier, productId=product)
    assert placed["code"] == "0", placed
    order_no = placed["data"]["orderNo"]

    def final() -> dict:
        data = partner.status(cstm, supplier=carrier)["data"]
        assert data["status"] in ("2", "3"), data
        return data

    assert eventually(final, 20, interval=0.1, what=f"{cstm} settled")["status"] == "2"
    transactions = httpx.get(f"{simulator}/_sim/transactions", timeout=5).json()
    [paid] = [t for t in transactions if t["reference"].startswith(order_no)]
    assert (paid["protocol"], paid["submits"], paid["paid"]) == ("acme", 1, 1)
    # Settled by its callback, at /callback/NAME: no status query was needed.
    attempts = server.sql("SELECT plugin, queries FROM attempts WHERE order_no = ?", order_no)
    assert attempts == [(plugin, 0)]
    assert f'plugin="{plugin}"' in httpx.get(f"{server.url}/metrics", timeout=5).text
