"""Plugin discovery and the supplier instances built from ``plugins.toml``.

Plugins come from three places, in this order: the built-in modules the service
passes in, installed packages in the ``topup`` entry-point group, and modules named
in ``TOPUP_PLUGINS`` (comma-separated, like ``PYTEST_PLUGINS``) for local work.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import msgspec
import pluggy

from core import hookspecs
from core.config import Config, ConfigError
from core.suppliers import Supplier, SupplierConfigError

ENTRY_POINT_GROUP = "topup"
EXTRA_PLUGINS_ENV = "TOPUP_PLUGINS"

# A supplier's name is a key of plugins.toml (`enabled`, `[plugin.NAME]`, routes), a path
# segment (/callback/NAME), a metrics label and a command-line argument: lower-case ASCII,
# so that it needs no quoting or escaping anywhere and two names never differ by case only;
# starting with a letter, so that it never reads as an option (-x) or a number.
SUPPLIER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
SUPPLIER_NAME_RULE = (
    "1 to 32 characters: lower-case ASCII letters, digits, '-' and '_', starting with a letter"
)


def supplier_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a supplier, or None if it can."""
    if isinstance(name, str) and SUPPLIER_NAME.fullmatch(name):
        return None
    return f"{name!r} is not a valid supplier name ({SUPPLIER_NAME_RULE})"


class PluginInfo(msgspec.Struct, frozen=True):
    name: str
    source: str
    version: str | None
    suppliers: list[str]


class Registry:
    """A pluggy manager with every discovered plugin registered."""

    def __init__(self, builtins: Iterable[str] = (), extra: Iterable[object] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._sources: dict[str, str] = {}
        for module_name in builtins:
            self._register(importlib.import_module(module_name), module_name, "built-in")
        self._load_entry_points()
        for module_name in _env_modules():
            self._register(importlib.import_module(module_name), module_name, EXTRA_PLUGINS_ENV)
        for plugin in extra:
            self._register(plugin, getattr(plugin, "__name__", repr(plugin)), "in-process")
        # A misspelled hook name in any plugin fails here, not silently at run time.
        self.pm.check_pending()

    def _register(self, plugin: object, name: str, source: str) -> None:
        if self.pm.get_plugin(name) is None:
            self.pm.register(plugin, name=name)
            self._sources[name] = source

    def _load_entry_points(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.get_plugin(entry_point.name) is not None:
                continue
            self._register(entry_point.load(), entry_point.name, "entry point")
            dist = entry_point.dist
            if dist is not None:
                self._sources[entry_point.name] = f"entry point ({dist.name} {dist.version})"

    def unregister(self, plugin: object) -> None:
        name = self.pm.get_name(plugin)
        self.pm.unregister(plugin)
        self._sources.pop(name or "", None)

    def supplier_classes(self) -> dict[str, type[Supplier]]:
        return {cls.name: cls for cls, _ in self._collect().values()}

    def plugins(self) -> list[PluginInfo]:
        return self._infos(self._collect())

    def survey(self) -> tuple[list[PluginInfo], list[str]]:
        """Every plugin with the suppliers it registers, and what is wrong with them (a
        class refused at registration), without raising: what ``topup plugins`` lists."""
        problems: list[str] = []
        infos = self._infos(self._collect(problems))
        return infos, problems

    def supplier_problems(self, config: Config) -> dict[str, str]:
        """Each supplier ``config`` enables that cannot be built, and why: not installed,
        settings refused, a credential missing from the environment."""
        classes = {cls.name: cls for cls, _ in self._collect([]).values()}
        problems: dict[str, str] = {}
        for name in config.enabled:
            try:
                _build(name, classes, config)
            except ConfigError as exc:
                problems[name] = str(exc)
        return problems

    def _infos(self, collected: dict[str, tuple[type[Supplier], str]]) -> list[PluginInfo]:
        owners: dict[str, list[str]] = {}
        for supplier_name, (_, plugin_name) in collected.items():
            owners.setdefault(plugin_name, []).append(supplier_name)
        infos = []
        for plugin_name, plugin in self.pm.list_name_plugin():
            version = _version_of(plugin)
            source = self._sources.get(plugin_name, "registered")
            infos.append(PluginInfo(plugin_name, source, version, owners.get(plugin_name, [])))
        return infos

    def _collect(self, problems: list[str] | None = None) -> dict[str, tuple[type[Supplier], str]]:
        """Every registered supplier class by name, with its plugin's name. A class that is
        refused raises ConfigError, or, given ``problems``, is left out and said there."""
        found: dict[str, tuple[type[Supplier], str]] = {}
        for impl in self.pm.hook.register_suppliers.get_hookimpls():

            def register(cls: type[Supplier], plugin_name: str = impl.plugin_name) -> None:
                try:
                    _check_supplier_class(cls, plugin_name)
                    if cls.name in found and found[cls.name][0] is not cls:
                        raise ConfigError(
                            f"two plugins register a supplier named {cls.name!r}: "
                            f"{found[cls.name][1]} and {plugin_name}"
                        )
                except ConfigError as exc:
                    if problems is None:
                        raise
                    problems.append(str(exc))
                    return
                found[cls.name] = (cls, plugin_name)

            kwargs = {"register": register}
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        return found

    def build_suppliers(self, config: Config) -> dict[str, Supplier]:
        """Instantiate every enabled supplier with its ``[plugin.NAME]`` settings."""
        classes = self.supplier_classes()
        return {name: _build(name, classes, config) for name in config.enabled}


def _build(name: str, classes: dict[str, type[Supplier]], config: Config) -> Supplier:
    cls = classes.get(name)
    if cls is None:
        installed = ", ".join(sorted(classes)) or "none"
        raise ConfigError(
            f"`enabled` names {name!r}, but no installed plugin provides it "
            f"(installed suppliers: {installed})"
        )
    return _instantiate(cls, config.plugin.get(name, {}))


def _instantiate(cls: type[Supplier], raw: dict[str, Any]) -> Supplier:
    try:
        return cls.from_config(raw)
    except (msgspec.ValidationError, SupplierConfigError) as exc:
        raise ConfigError(f"[plugin.{cls.name}]: {exc}") from exc


def _check_supplier_class(cls: object, plugin_name: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Supplier)):
        raise ConfigError(f"plugin {plugin_name} registered {cls!r}, which is not a Supplier class")
    if not getattr(cls, "name", ""):
        raise ConfigError(f"plugin {plugin_name}: supplier class {cls.__name__} has no name")
    wrong_name = supplier_name_problem(cls.name)
    if wrong_name:
        raise ConfigError(f"plugin {plugin_name}: supplier class {cls.__name__}: {wrong_name}")
    if inspect.isabstract(cls):
        # Refused here, at start, rather than as orders drifting into review one by one.
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ConfigError(
            f"plugin {plugin_name}: supplier class {cls.__name__} does not implement {missing}"
        )


def _env_modules() -> list[str]:
    return [
        name.strip() for name in os.environ.get(EXTRA_PLUGINS_ENV, "").split(",") if name.strip()
    ]


def _version_of(plugin: object) -> str | None:
    if isinstance(plugin, ModuleType):
        top = plugin.__name__.split(".")[0]
        try:
            return importlib.metadata.version(top)
        except importlib.metadata.PackageNotFoundError:
            return None
    return None
