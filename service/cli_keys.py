"""``topup keys``: the master key that seals secrets at rest, and its rotation."""

from __future__ import annotations

import os

import click
from sqlalchemy import Connection, select

from core.apps import reseal_secrets
from core.db import Database, apps, server_keys
from core.sealing import (
    MASTER_KEY_ENV,
    Sealer,
    SealingError,
    key_file_path,
    load_sealer,
    new_master_key,
    replace_key_file,
)
from service.cli_support import run_with_db


@click.group()
def keys() -> None:
    """The master key that seals app secrets and the token key in the database."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Seal every stored secret with a new master key.

    With a key file (the default): a new key is generated, every secret is sealed
    again with it, and the old key is removed from the file. Running instances pick up
    the new key from the file by themselves.

    With TOPUP_MASTER_KEY: put the new key first, keep the old one after it
    (NEW,OLD), restart the instances with that, then run this; it seals everything with
    NEW and says when OLD may be removed.
    """
    if os.environ.get(MASTER_KEY_ENV, "").strip():
        sealer = _load()
        count = run_with_db(lambda db: reseal_secrets(db, sealer))
        click.echo(f"{count} secrets sealed again with key {sealer.current_id}")
        retired = [key for key in sealer.key_ids if key != sealer.current_id]
        if retired:
            click.echo(
                f"keys {', '.join(retired)} seal nothing now: remove them from {MASTER_KEY_ENV}"
            )
        return
    path = key_file_path()
    old_keys = [line for line in path.read_text().splitlines() if line.strip()]
    new_key = new_master_key()
    # Old keys stay in the file until every row is sealed with the new one, so a crash
    # half-way leaves nothing that cannot be opened; running instances re-read the file.
    replace_key_file(path, [new_key, *old_keys])
    sealer = _load()
    count = run_with_db(lambda db: reseal_secrets(db, sealer))
    replace_key_file(path, [new_key])
    click.echo(f"{count} secrets sealed again with the new key {sealer.current_id} ({path})")


@keys.command("status")
def keys_status() -> None:
    """Which master keys this process holds and which one seals new secrets."""
    sealer = _load()
    source = MASTER_KEY_ENV if sealer.key_file is None else str(sealer.key_file)
    click.echo(f"source:  {source}")
    click.echo(f"current: {sealer.current_id}")
    click.echo(f"held:    {', '.join(sealer.key_ids)}")
    usage = run_with_db(lambda db: _key_usage(db, sealer))
    for key, count in sorted(usage.items()):
        click.echo(f"  {key}: {count} sealed values")


def _load() -> Sealer:
    try:
        return load_sealer()
    except SealingError as exc:
        raise click.ClickException(str(exc)) from exc


async def _key_usage(db: Database, sealer: Sealer) -> dict[str, int]:
    def count(conn: Connection) -> dict[str, int]:
        usage: dict[str, int] = {}
        rows = [
            *conn.execute(select(apps.c.secret)),
            *conn.execute(select(apps.c.previous_secret)),
            *conn.execute(select(server_keys.c.value)),
        ]
        for (value,) in rows:
            if value:
                key = sealer.key_id_of(value) or "not sealed"
                usage[key] = usage.get(key, 0) + 1
        return usage

    return await db.read(count)
