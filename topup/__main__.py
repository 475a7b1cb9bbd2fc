"""``python -m topup``: the ``topup`` command, on this interpreter (as a plugin's tests run it)."""

from service.cli import main

main(prog_name="topup")
