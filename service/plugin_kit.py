"""``topup plugin new NAME``: a starter package for a supplier plugin.

The files are the templates in ``service/plugin_template`` with the names filled in
(``string.Template``: ``${module}``, ``${cls}``...). What they hold is explained in
docs/writing-a-plugin.md, which walks through the same files for acme.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

from core.registry import supplier_name_problem

TEMPLATES = Path(__file__).with_name("plugin_template")
# Template file -> where it goes in the package (itself a template).
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "module.py.tmpl": "${module}.py",
    "tests/fake.py.tmpl": "tests/fake_${ident}.py",
    "tests/test_conformance.py.tmpl": "tests/test_conformance.py",
}


@dataclass(frozen=True)
class StarterNames:
    """Everything the templates name, from the supplier's name (acme-2, say)."""

    name: str  # acme-2: the supplier's name in plugins.toml, the entry point's name
    ident: str  # acme_2: the name as a Python identifier
    module: str  # topup_acme_2
    distribution: str  # topup-acme-2
    cls: str  # Acme2: the Supplier subclass (settings: Acme2Settings, fake: FakeAcme2)
    env: str  # TOPUP_ACME_2_API_KEY: the variable the credential is read from

    @classmethod
    def of(cls, name: str) -> StarterNames:
        problem = supplier_name_problem(name)
        if problem:
            raise ValueError(problem)
        ident = name.replace("-", "_")
        return cls(
            name=name,
            ident=ident,
            module=f"topup_{ident}",
            distribution=f"topup-{name}",
            cls="".join(part.capitalize() for part in ident.split("_")),
            env=f"TOPUP_{ident.upper()}_API_KEY",
        )


class StarterExists(Exception):
    """The package directory is already there: nothing is overwritten."""


def write_starter(name: str, parent: Path) -> Path:
    """Write the starter package for supplier ``name`` into ``parent``/topup-NAME; returns
    that directory. Raises ValueError for an invalid name, StarterExists if it exists."""
    names = StarterNames.of(name)
    values = asdict(names)
    package = parent / names.distribution
    if package.exists():
        raise StarterExists(f"{package} already exists: choose another --dir or remove it")
    for template, target in FILES.items():
        path = package / Template(target).substitute(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = (TEMPLATES / template).read_text(encoding="utf-8")
        path.write_text(Template(text).substitute(values), encoding="utf-8")
    return package
