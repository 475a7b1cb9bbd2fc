"""``topup plugins`` (what is installed, enabled and routed) and ``topup plugin new``."""

from __future__ import annotations

from pathlib import Path

import click
import pluggy

from core.config import Catalog, Config, ConfigError, load_config
from core.registry import Registry
from core.routing import Router
from service.plugin_kit import StarterExists, write_starter
from service.settings import Settings
from service.wiring import build_registry


@click.command()
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 if anything is wrong: a plugin refused, an enabled supplier that cannot "
    "start (not installed, bad settings, a credential missing), an invalid plugins.toml.",
)
def plugins(check: bool) -> None:
    """List discovered plugins, their suppliers, the enabled ones and the Supplier routes.

    What cannot start is listed with the reason; the listing exits 0 all the same, and
    --check exits 1 on it (as `topup serve` would refuse to start).
    """
    settings = Settings.from_env()
    registry = _registry()
    found, problems = registry.survey()
    for info in found:
        version = f" {info.version}" if info.version else ""
        suppliers = ", ".join(info.suppliers) or "-"
        click.echo(f"{info.name}{version}  [{info.source}]  suppliers: {suppliers}")
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        where = str(settings.config_path)
        problems.append(str(exc) if where in str(exc) else f"{where}: {exc}")
    else:
        problems += _list_config(settings, config, registry)
    if not problems:
        return
    heading = (
        f"{len(problems)} problem{'s' if len(problems) > 1 else ''}, which `topup serve` refuses"
    )
    listed = "\n".join(f"  {problem}" for problem in problems)
    if check:
        raise click.ClickException(f"{heading}:\n{listed}")
    click.echo(f"\n{heading} (`topup plugins --check` exits 1 on them):\n{listed}")


def _registry() -> Registry:
    try:
        return build_registry()
    except (pluggy.PluginValidationError, ImportError) as exc:
        # Nothing can be listed without the registry: a plugin that does not import, or
        # implements a hook that does not exist.
        raise click.ClickException(f"cannot load the plugins: {exc}") from exc


def _list_config(settings: Settings, config: Config, registry: Registry) -> list[str]:
    """Print the enabled suppliers (with what stops each) and the routes; the problems."""
    cannot_start = registry.supplier_problems(config)
    enabled = [f"{n} (cannot start)" if n in cannot_start else n for n in config.enabled]
    click.echo(f"\nenabled ({settings.config_path}): {', '.join(enabled) or 'none'}")
    click.echo("routes:")
    catalog, router = Catalog(config), Router(config)
    for carrier in catalog.carriers:
        route = " -> ".join(router.route(carrier))
        click.echo(f"  {carrier}: {route}  ({len(catalog.products(carrier))} products)")
    return [f"{name} cannot start: {reason}" for name, reason in cannot_start.items()]


@click.group()
def plugin() -> None:
    """Write a supplier plugin."""


@plugin.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create the package directory topup-NAME.",
)
def plugin_new(name: str, parent: Path) -> None:
    """Write a starter package for supplier NAME: pyproject.toml with the entry point and
    the pytest settings, the Supplier class with its settings and stubs to fill in, a fake
    supplier and the conformance tests.

    NAME is what plugins.toml will enable and route to: lower-case ASCII letters, digits,
    '-' and '_', starting with a letter (docs/writing-a-plugin.md).
    """
    try:
        package = write_starter(name, parent)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from exc
    except StarterExists as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {package}")
    click.echo("next (docs/writing-a-plugin.md walks through each file):")
    click.echo(f"  pip install -e '{package}[test]'")
    click.echo(f"  cd {package} && pytest      # what is left to write")
