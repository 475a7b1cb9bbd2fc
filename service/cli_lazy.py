"""A command group whose subcommands are imported when they are run, not at start.

Every ``topup`` command would otherwise import the whole service (Litestar, SQLAlchemy,
the console) before doing anything: about a second, paid by each ``topup sign`` in a
shell script. The pattern is click's own ("Defining the lazy group", click's docs).
"""

from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    """``lazy``: command name -> "module:attribute" of a command defined elsewhere."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = self.lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        return command
