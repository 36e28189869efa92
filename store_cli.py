"""Commands for the task store's backends: the PostgreSQL schema, and copying between backends.

    flask db upgrade [--url URL]                 apply the missing migrations (migrations/)
    flask store copy --to postgresql://...       the JSON store in DATA_DIR -> PostgreSQL
    flask store copy --from postgresql://...     PostgreSQL -> the JSON store in DATA_DIR
                     [--replace]                 (a store that already has tasks is refused without it)

A copy reads the source from one consistent snapshot (the store's own `snapshot`), streams it into
the destination in one step (`replace_all`: one transaction, or one atomic file swap), then takes a
snapshot of the destination and compares the count and a SHA-256 over every record in canonical
JSON (sorted keys: PostgreSQL's JSONB keeps no key order). A mismatch fails the command loudly.
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import migrations
from task_store import TaskStore


class CopyMismatch(RuntimeError):
    """The destination does not hold exactly what the source held."""


def _canonical(record):
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def fingerprint(snapshot_path):
    """(count, sha256 hex) over the records of a JSON-lines snapshot, in its order."""
    digest, count = hashlib.sha256(), 0
    with open(snapshot_path, "rb") as f:
        for line in f:
            digest.update(_canonical(json.loads(line)) + b"\n")
            count += 1
    return count, digest.hexdigest()


def _records(snapshot_path):
    with open(snapshot_path, "rb") as f:
        for line in f:
            yield json.loads(line)


def copy_store(source, dest, *, replace=False, work_dir=None):
    """Copy every record of `source` into `dest`; returns (count, sha256). CopyMismatch when the
    destination's snapshot differs; ValueError when `dest` has tasks and `replace` is false."""
    if len(dest) and not replace:
        raise ValueError(f"the destination already holds {len(dest)} tasks (pass --replace to overwrite them)")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        taken, back = Path(tmp) / "source.jsonl", Path(tmp) / "dest.jsonl"
        source.snapshot(taken)
        want = fingerprint(taken)
        dest.replace_all(_records(taken))
        dest.snapshot(back)
        got = fingerprint(back)
    if got != want:
        raise CopyMismatch(f"copy differs: source {want[0]} tasks sha256 {want[1]}, "
                           f"destination {got[0]} tasks sha256 {got[1]}")
    return want


def init_app(app):
    """`flask db upgrade` and `flask store copy`, with the app's settings."""
    import click
    from flask import current_app

    @app.cli.group("db")
    def db_cli():
        """The PostgreSQL schema."""

    @db_cli.command("upgrade")
    @click.option("--url", help="the database (default: DATABASE_URL)")
    def upgrade_cmd(url):
        """Apply the migrations the database does not have yet."""
        url = url or current_app.config["DATABASE_URL"]
        if not url:
            raise click.UsageError("DATABASE_URL is not set (or pass --url)")
        done = migrations.upgrade(url)
        click.echo(f"applied {', '.join(done)}" if done else "the schema is up to date")

    @app.cli.group("store")
    def store_cli():
        """The task store's backends."""

    @store_cli.command("copy")
    @click.option("--to", "to_url", help="copy the JSON store in DATA_DIR into this PostgreSQL database")
    @click.option("--from", "from_url", help="copy this PostgreSQL database into the JSON store in DATA_DIR")
    @click.option("--replace", is_flag=True, help="overwrite a destination that already holds tasks")
    def copy_cmd(to_url, from_url, replace):
        """Copy the tasks between the JSON store and PostgreSQL, verified by count and checksum."""
        from task_store_pg import PgTaskStore

        if bool(to_url) == bool(from_url):
            raise click.UsageError("give exactly one of --to URL or --from URL")
        data_dir = current_app.config["DATA_DIR"]
        json_store = TaskStore(data_dir)
        pg_store = PgTaskStore(to_url or from_url, data_dir)
        source, dest = (json_store, pg_store) if to_url else (pg_store, json_store)
        try:
            count, digest = copy_store(source, dest, replace=replace, work_dir=data_dir)
        except (ValueError, CopyMismatch) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        finally:
            pg_store.close()
            json_store.close()
        click.echo(f"copied {count} tasks, sha256 {digest}")
