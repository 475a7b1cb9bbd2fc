"""The hooks a topup plugin can implement.

A plugin is a module (or object) with functions decorated ``@topup.hookimpl``
whose names are hooks below. Built-in plugins live in ``plugins/``; third-party
ones are installed packages that declare an entry point in the ``topup`` group::

    [project.entry-points.topup]
    acme = "topup_acme"

An implementation may accept any subset of a hook's parameters, and hooks only
ever gain parameters, so a plugin written today keeps working.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from core.suppliers import Supplier

PROJECT_NAME = "topup"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_suppliers(register: Callable[[type[Supplier]], None]) -> None:
    """Register the supplier implementations this plugin provides.

    Parameters:
        register: call it once per ``topup.Supplier`` subclass (the class, not an
            instance). The class's ``name`` is what ``plugins.toml`` enables and
            routes to; two classes with one name are refused at start-up.

    Returns:
        Nothing; the result is ignored. Not firstresult: every plugin is called.

    Called once at start-up and again on every configuration reload. Do no I/O
    here: the core instantiates only the enabled suppliers, with their settings,
    and their methods are where network calls belong.

    What those methods answer is the contract of ``topup.Supplier`` (core/suppliers.py):
    above all, only ``submit``'s refusal before acceptance may allow failover; the core
    reads a failover from ``query`` or a callback as unknown. ``topup.testing`` checks a
    plugin against it.
    """
