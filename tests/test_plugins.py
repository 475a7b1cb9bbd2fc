"""The plugin framework: discovery, hook validation, configuration, and the CLI's view."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pluggy
import pytest

import topup
from core import hookspecs
from core.config import ConfigError, parse_config
from core.registry import Registry
from core.runtime import Runtime
from plugins import BUILTIN_PLUGINS
from tests.support import REPO, ServiceProcess, sandbox_config, topup_cli


class FakeSupplier(topup.Supplier):
    name = "fake"

    async def submit(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        return topup.SupplierResult.succeeded()

    async def query(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        return topup.SupplierResult.succeeded()


class FakePlugin:
    __name__ = "fake-plugin"

    @topup.hookimpl
    def register_suppliers(self, register):
        register(FakeSupplier)


@pytest.fixture
def registry() -> Registry:
    return Registry(BUILTIN_PLUGINS)


@pytest.fixture
def fake_plugin(registry: Registry) -> Iterator[FakePlugin]:
    """Registers a fake supplier plugin for the duration of one test."""
    plugin = FakePlugin()
    registry.pm.register(plugin, name="fake-plugin")
    yield plugin
    registry.unregister(plugin)


def test_builtin_sandbox_is_discovered(registry: Registry) -> None:
    assert "sandbox" in registry.supplier_classes()
    [info] = [p for p in registry.plugins() if "sandbox" in p.suppliers]
    assert info.source == "built-in"


def test_a_registered_fake_plugin_is_routed_to(registry: Registry, fake_plugin: object) -> None:
    config = parse_config(sandbox_config(enabled='["sandbox", "fake"]', route='["fake"]'))
    runtime = Runtime.build(config, registry)
    assert isinstance(runtime.suppliers["fake"], FakeSupplier)
    assert runtime.router.next_plugin("中国移动", "TP1", []) == "fake"


def test_the_fake_plugin_is_gone_after_its_test(registry: Registry) -> None:
    assert "fake" not in registry.supplier_classes()


def test_a_misspelled_hook_fails_at_start() -> None:
    class Misspelled:
        @topup.hookimpl
        def register_supplier(self, register):  # missing "s"
            pass

    with pytest.raises(pluggy.PluginValidationError, match="register_supplier"):
        Registry(BUILTIN_PLUGINS, extra=[Misspelled()])


def test_registering_something_that_is_not_a_supplier_is_refused(registry: Registry) -> None:
    class Wrong:
        @topup.hookimpl
        def register_suppliers(self, register):
            register(object)

    registry.pm.register(Wrong(), name="wrong")
    with pytest.raises(ConfigError, match="not a Supplier class"):
        registry.supplier_classes()


def test_two_suppliers_with_one_name_are_refused(registry: Registry) -> None:
    class Clash(FakeSupplier):
        name = "sandbox"

    class Clashing:
        @topup.hookimpl
        def register_suppliers(self, register):
            register(Clash)

    registry.pm.register(Clashing(), name="clashing")
    with pytest.raises(ConfigError, match="two plugins register a supplier named 'sandbox'"):
        registry.supplier_classes()


class WithoutQuery(topup.Supplier):
    name = "no-query"

    async def submit(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        return topup.SupplierResult.pending()


def test_a_supplier_without_query_is_refused_at_registration(registry: Registry) -> None:
    class Incomplete:
        @topup.hookimpl
        def register_suppliers(self, register):
            register(WithoutQuery)

    registry.pm.register(Incomplete(), name="incomplete")
    config = parse_config(sandbox_config())
    with pytest.raises(
        ConfigError, match="plugin incomplete: supplier class WithoutQuery does not implement query"
    ):
        Runtime.build(config, registry)


INCOMPLETE_PLUGIN = """
import topup

class Halfway(topup.Supplier):
    name = "halfway"

@topup.hookimpl
def register_suppliers(register):
    register(Halfway)
"""


@pytest.mark.parametrize(
    ("command", "refused"),
    [
        (("serve",), "invalid configuration: plugin halfway_plugin: "),
        (
            ("plugins", "--check"),
            "1 problem, which `topup serve` refuses:\n  plugin halfway_plugin: ",
        ),
    ],
)
def test_a_supplier_missing_its_methods_is_refused_at_start(
    tmp_path: Path, command: tuple[str, ...], refused: str
) -> None:
    (tmp_path / "halfway_plugin.py").write_text(INCOMPLETE_PLUGIN)
    env = {"PYTHONPATH": str(tmp_path), "TOPUP_PLUGINS": "halfway_plugin"}
    service = ServiceProcess(tmp_path, sandbox_config(), env=env)
    result = service.cli(*command, check=False)
    assert result.returncode == 1
    expected = refused + "supplier class Halfway does not implement query, submit"
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("acme-2", True),
        ("acme_cn", True),
        ("a" * 32, True),
        ("Acme", False),
        ("acme.cn", False),
        ("acme/2", False),
        ("acme 2", False),
        ("2acme", False),
        ("-acme", False),
        ("ácme", False),
        ("a" * 33, False),
    ],
)
def test_supplier_names_are_checked_at_registration(
    registry: Registry, name: str, valid: bool
) -> None:
    class Named(FakeSupplier):
        pass

    Named.name = name

    class Naming:
        @topup.hookimpl
        def register_suppliers(self, register):
            register(Named)

    registry.pm.register(Naming(), name="naming")
    if valid:
        config = parse_config(sandbox_config(enabled=f'["sandbox", "{name}"]', route=f'["{name}"]'))
        runtime = Runtime.build(config, registry)
        assert runtime.router.route("中国移动") == [name]
        return
    with pytest.raises(ConfigError) as refused:
        registry.supplier_classes()
    assert str(refused.value) == (
        f"plugin naming: supplier class Named: {name!r} is not a valid supplier name (1 to 32 "
        "characters: lower-case ASCII letters, digits, '-' and '_', starting with a letter)"
    )


def test_builtin_plugins_import_only_the_public_topup_package() -> None:
    """A built-in plugin is written as a third-party one would be: what it needs from us
    comes from ``topup``, so the modules behind it (``core.*``) can move freely."""
    ours = {"core", "service", "plugins", "topup", "tests", "bench"}
    for path in sorted((REPO / "plugins").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top not in ours or top == "topup", f"{path.name} imports {module}"


def test_every_hook_is_documented() -> None:
    hooks = [
        fn
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "topup_spec")
    ]
    assert hooks, "no hookspecs found"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for hook in hooks:
        doc = inspect.getdoc(hook) or ""
        assert "Parameters:" in doc and "Returns:" in doc, hook.__name__
        assert "firstresult" in doc, f"{hook.__name__}: say whether it is firstresult"
        assert all(name in doc for name in inspect.signature(hook).parameters), hook.__name__
        assert hook.__name__ in readme, f"{hook.__name__} is not in the README"


def test_public_api_exports_what_a_plugin_needs() -> None:
    needed = ("hookimpl", "Supplier", "SupplierResult", "UpstreamOrder", "Outcome")
    for name in (*needed, "yuan_to_fen", "exchange", "unknown_answer", "FailReason"):
        assert name in topup.__all__ and hasattr(topup, name), name


def test_the_old_name_of_the_carrier_still_reads_but_warns() -> None:
    order = topup.UpstreamOrder(
        reference="T1A1",
        order_no="T1",
        attempt=1,
        phone_no="13800138000",
        carrier="中国移动",
        product_id="YD10",
        face_value=1000,
        created_at=0,
    )
    with pytest.warns(DeprecationWarning, match=r"UpstreamOrder\.carrier") as caught:
        assert order.supplier == "中国移动"
    assert caught[0].filename == __file__  # the plugin's own line, not ours


@pytest.mark.parametrize(
    "call",
    [
        lambda: topup.SupplierResult.succeeded("S-1"),
        lambda: topup.SupplierResult.pending("S-1", "0"),
        lambda: topup.SupplierResult.unknown("TIMEOUT", "read timed out"),
        lambda: topup.SupplierResult.failed("9", "撤销"),
        lambda: topup.SupplierResult.not_sent("unreachable"),
        lambda: topup.SupplierResult.never_received("NOT_FOUND"),
    ],
)
def test_result_builders_refuse_positional_arguments(call) -> None:
    """The builders once took supplier_ref first in some and last in others: a call
    written for the old order fails loudly instead of swapping a reference and a code."""
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize(
    ("entry", "failover", "transient", "reason"),
    [
        (topup.ErrorClass.DEFINITIVE, True, False, None),
        (topup.ErrorClass.TRANSIENT, True, True, None),
        (topup.ErrorClass.NO_FAILOVER, False, False, None),
        (
            (topup.ErrorClass.NO_FAILOVER, topup.FailReason.NUMBER_NOT_SUPPORTED),
            False,
            False,
            "号码不支持充值",
        ),
    ],
)
def test_each_error_class_reads_as_documented(entry, failover, transient, reason) -> None:
    result = topup.classify_error("acme", {"E1": entry}, "E1", "refused")
    assert result.outcome is topup.Outcome.FAILED
    assert (result.failover, result.transient, result.reason) == (failover, transient, reason)
    assert (result.code, result.message) == ("E1", "refused")


@pytest.mark.parametrize("code", ["BUSY", "NEVER_HEARD_OF_IT"])
def test_an_unknown_or_unlisted_code_is_unknown(code: str) -> None:
    table: topup.ErrorTable = {"BUSY": topup.ErrorClass.UNKNOWN}
    result = topup.classify_error("acme", table, code, "系统繁忙")
    assert result.outcome is topup.Outcome.UNKNOWN and not result.failover


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('enabled = ["sandbox"]\n[suppliers."中国移动"]\nroute = []', "route is empty"),
        ('enabled = []\n[suppliers."中国移动"]\nroute = ["sandbox"]', "not in `enabled`"),
        ('enabled = ["sandbox"]\nroutes = 1', "unknown field `routes`"),
        ('enabled = ["sandbox"\n', "not valid TOML"),
        (
            'enabled = ["sandbox"]\n[suppliers."中国移动"]\nroute = ["sandbox"]\n'
            'products = [{ product_id = "A", face_value = "10.005", price = "9" }]',
            "more than two decimals",
        ),
        ("[dispatch]\ncall_timeout = 90\nlease_seconds = 60", "must be shorter"),
        ("[dispatch]\nheartbeat_seconds = 2\ntakeover_seconds = 3", "at least twice"),
        ("[dispatch]\nheartbeat_seconds = 0", "at least twice"),
        ("[dispatch]\nclaim_batch = 64\nmax_claim_batch = 32", "at least as large"),
    ],
)
def test_invalid_config_is_refused_with_a_clear_message(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(toml)


def test_enabling_a_plugin_that_is_not_installed(registry: Registry) -> None:
    config = parse_config(sandbox_config(enabled='["sandbox", "juhe9"]'))
    with pytest.raises(ConfigError, match="'juhe9', but no installed plugin provides it"):
        Runtime.build(config, registry)


def test_bad_plugin_settings_name_the_plugin(registry: Registry) -> None:
    config = parse_config(sandbox_config().replace("timeout_after = 0.3", "timeout_afterr = 1"))
    with pytest.raises(ConfigError, match=r"\[plugin.sandbox\].*timeout_afterr"):
        Runtime.build(config, registry)


def test_shipped_config_routes_every_carrier_to_the_sandbox(registry: Registry) -> None:
    from core.config import load_config

    runtime = Runtime.build(load_config(REPO / "plugins.toml"), registry)
    for carrier in ("中国移动", "中国联通", "中国电信", "中国广电"):
        assert runtime.router.route(carrier) == ["sandbox"]
        assert runtime.catalog.products(carrier)


# -- the CLI ------------------------------------------------------------------------------


def test_topup_plugins_lists_plugins_and_routes(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TOPUP_CONFIG": str(REPO / "plugins.toml")}
    out = topup_cli("plugins", env=env).stdout
    assert "plugins.sandbox" in out and "built-in" in out
    for carrier in ("中国移动", "中国联通", "中国电信", "中国广电"):
        assert f"{carrier}: sandbox" in out


def test_topup_plugins_shows_a_plugin_from_topup_plugins_env(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "TOPUP_PLUGINS": "tests.fake_suppliers",
        "TOPUP_CONFIG": str(REPO / "plugins.toml"),
    }
    out = topup_cli("plugins", env=env).stdout
    assert "tests.fake_suppliers" in out and "scripted, backup" in out


def test_topup_plugins_lists_what_cannot_start_and_check_fails_on_it(tmp_path: Path) -> None:
    """The listing shows everything and what is missing, and exits 0: the operator asked
    for a list. --check exits 1 on the same, as `topup serve` would refuse to start."""
    (tmp_path / "halfway_plugin.py").write_text(INCOMPLETE_PLUGIN)
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "TOPUP_PLUGINS": "halfway_plugin"}
    config = sandbox_config(enabled='["sandbox", "juhe"]', route='["juhe", "sandbox"]')
    service = ServiceProcess(tmp_path, config, env={**env, "TOPUP_JUHE_KEY": ""})
    listing = service.cli("plugins")
    out = listing.stdout
    assert "plugins.juhe  [built-in]  suppliers: juhe" in out
    assert "halfway_plugin  [TOPUP_PLUGINS]  suppliers: -" in out
    assert f"enabled ({service.config_path}): sandbox, juhe (cannot start)" in out
    assert "中国移动: juhe -> sandbox  (2 products)" in out
    problems = [
        "  juhe cannot start: [plugin.juhe]: environment variable TOPUP_JUHE_KEY is not set",
        "  plugin halfway_plugin: supplier class Halfway does not implement query, submit",
    ]
    assert all(problem in out.splitlines() for problem in problems), out
    check = service.cli("plugins", "--check", check=False)
    assert check.returncode == 1 and out.startswith(check.stdout), check.stdout
    assert all(problem in check.stderr.splitlines() for problem in problems), check.stderr


def test_serve_refuses_an_invalid_config(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, 'enabled = ["nope"]')
    result = service.cli("serve", check=False)
    assert result.returncode != 0
    assert "invalid configuration" in result.stderr and "'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_app_add_prints_the_secret_once_and_refuses_duplicates(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, sandbox_config())
    chosen = "s3cret-chosen-by-op"
    created = service.cli("app", "add", "acme", "--company", "阿克米", "--secret", chosen)
    assert created.stdout.strip() == chosen
    again = service.cli("app", "add", "acme", "--company", "阿克米", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    listing = service.cli("app", "list").stdout
    assert "acme\t阿克米\thmac-sha256" in listing and chosen not in listing


def test_generated_secrets_are_long_and_distinct(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, sandbox_config())
    one, two = service.add_app("a1", "c"), service.add_app("a2", "c")
    assert one != two and len(one) >= 32


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TOPUP_PORT", "abc"), ("TOPUP_REQUEST_TIMEOUT", "-1"), ("TOPUP_APP_CACHE_SECONDS", "soon")],
)
def test_a_malformed_environment_variable_is_named_without_a_traceback(
    tmp_path: Path, variable: str, value: str
) -> None:
    service = ServiceProcess(tmp_path, sandbox_config(), env={variable: value})
    result = service.cli("app", "list", check=False)
    assert result.returncode != 0
    assert variable in result.stderr and "Traceback" not in result.stderr
