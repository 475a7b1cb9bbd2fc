"""A throwaway virtual environment to `pip install -e` a plugin package into, as its author
would: it sees everything the test environment has installed (topup, pytest, httpx...)
without changing it, so that no other test ever sees the plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path


class PluginVenv:
    def __init__(self, path: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
        self.path = path
        self.python = str(path / "bin" / "python")
        site_packages = self._run_python(
            "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        )
        # Processed after the venv's own .pth files (an editable install's come first), so a
        # plugin installed here wins over one of the same name in the test environment.
        parents = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
        lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in sorted(parents))
        (Path(site_packages) / "zz_test_environment.pth").write_text(lines)
        # The `topup` command of this environment, as its console script would be.
        self.topup = str(path / "bin" / "topup")
        Path(self.topup).write_text(
            f"#!{self.python}\nfrom service.cli import main\n\nmain(prog_name='topup')\n"
        )
        os.chmod(self.topup, 0o755)

    def _run_python(self, code: str) -> str:
        return subprocess.run(
            [self.python, "-c", code], check=True, capture_output=True, text=True
        ).stdout.strip()

    def install_editable(self, package: Path) -> None:
        """``pip install -e PACKAGE``: with the test environment's pip and build backend,
        offline (the dependencies are the test environment's)."""
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                self.python,
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "-e",
                str(package),
            ],
            check=True,
            capture_output=True,
        )

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a command of this venv runs in: its bin first on PATH."""
        path = f"{self.path / 'bin'}:{os.environ['PATH']}"
        return {**os.environ, "PATH": path, **extra}

    def run(self, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
        """A command (``topup``, ``python``...) of this venv, in ``cwd``; never raises."""
        command = {"topup": self.topup, "python": self.python}.get(args[0], args[0])
        return subprocess.run(
            [command, *args[1:]],
            cwd=cwd,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )
