"""Commands for the studio's backends: the PostgreSQL schema, and copying between backends.

    flask db upgrade [--url URL]                 apply the missing migrations (migrations/)
    flask store copy --to postgresql://...       the JSON store in DATA_DIR -> PostgreSQL
    flask store copy --from postgresql://...     PostgreSQL -> the JSON store in DATA_DIR
                     [--replace]                 (a store that already has tasks is refused without it)

A copy reads the source from one consistent snapshot (the store's own `snapshot`), streams it into
the destination in one step (`replace_all`: one transaction, or one atomic file swap), then takes a
snapshot of the destination and compares the count and a SHA-256 over every record in canonical
JSON (sorted keys: PostgreSQL's JSONB keeps no key order). A mismatch fails the command loudly.

The other records follow the tasks the same way, each part read whole, written in one step
(one transaction, or atomic file writes under the part's lock), read back and compared by count
and SHA-256: the accounts (users, API keys, sessions, login links: accounts.json <-> the
`account_*` tables), the quota ledger (DATA_DIR/ledger/*.jsonl <-> `ledger`) and the
Idempotency-Key records (DATA_DIR/idempotency/ <-> `idempotency_keys`). A destination that already
holds tasks, users other than the admin, ledger lines or keys is refused without --replace.
"""

import hashlib
import json
import sys
import tempfile
from datetime import UTC
from pathlib import Path

import fileio
import idempotency
import migrations
import pg_idempotency
from accounts import ADMIN, Accounts
from batch_store import BatchStore
from clock import iso, parse_iso
from ledger import Ledger
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


# ---- the other records: each part has export() -> data and replace_all(data) on both backends

class JsonLedger:
    """The ledger's day files, as one list of lines."""

    def __init__(self, data_dir):
        self.ledger = Ledger(data_dir)

    def export(self):
        entries = []
        for path in sorted(self.ledger.dir.glob("*.jsonl")):
            entries += self.ledger._entries(parse_iso(path.stem + "T12:00:00Z"))
        return entries

    def replace_all(self, entries):
        days = {}
        for entry in entries:
            days.setdefault(f"{parse_iso(entry['at']).astimezone(UTC):%Y-%m-%d}", []).append(entry)
        with self.ledger.locked():
            for path in self.ledger.dir.glob("*.jsonl"):
                if path.stem not in days:
                    path.unlink()
            for day, lines in days.items():
                fileio.atomic_write(self.ledger.dir / f"{day}.jsonl", "".join(json.dumps(e) + "\n" for e in lines))


class PgLedgerRows:
    """The `ledger` table, in the day files' line shape."""

    def __init__(self, store):
        self.store = store

    def export(self):
        rows = self.store.run(lambda c: c.execute(
            "SELECT user_id, kind, count, task_id, at FROM ledger ORDER BY at, id").fetchall())
        return [{"user": u, "kind": k, "count": n, "task_id": t, "at": iso(at)} for u, k, n, t, at in rows]

    def replace_all(self, entries):
        def write(conn):
            with conn.transaction():
                conn.execute("DELETE FROM ledger")
                for e in entries:
                    at = parse_iso(e["at"])
                    conn.execute("INSERT INTO ledger (user_id, kind, count, task_id, at, day) "
                                 "VALUES (%s, %s, %s, %s, %s, %s)",
                                 (e["user"], e["kind"], e["count"], e["task_id"], at, at.astimezone(UTC).date()))
        self.store.run(write)


class JsonIdempotency:
    """DATA_DIR/idempotency/<shard>/<name>.json, as {name: record} (expired ones too, until pruned)."""

    def __init__(self, data_dir):
        self.dir = Path(data_dir) / "idempotency"

    def export(self):
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.dir.glob("*/*.json"))}

    def replace_all(self, records):
        for path in self.dir.glob("*/*.json"):
            if path.stem not in records:
                path.unlink()
        for name, record in records.items():
            shard = self.dir / f"{int(name[:8], 16) % idempotency.SHARDS:02x}"
            shard.mkdir(parents=True, exist_ok=True, mode=0o700)
            with fileio.locked(shard / ".lock"):
                fileio.atomic_write(shard / f"{name}.json", json.dumps(record))


class PgIdempotency:
    def __init__(self, store):
        self.store = store

    def export(self):
        return pg_idempotency.export(self.store)

    def replace_all(self, records):
        pg_idempotency.replace_all(self.store, records)


def json_parts(data_dir):
    """{name: the JSON side} of every record kind copied besides the tasks."""
    return {"account records": Accounts(data_dir), "ledger lines": JsonLedger(data_dir),
            "idempotency keys": JsonIdempotency(data_dir), "batches": BatchStore(data_dir)}


def pg_parts(pg_store):
    """{name: the PostgreSQL side}, the same kinds as json_parts."""
    from batch_store_pg import PgBatchStore
    from pg_accounts import PgAccounts

    return {"account records": PgAccounts(pg_store), "ledger lines": PgLedgerRows(pg_store),
            "idempotency keys": PgIdempotency(pg_store), "batches": PgBatchStore(pg_store)}


def _size(name, data):
    """How many records a part's data holds (accounts: users, keys, sessions and links)."""
    if name == "account records":
        return sum(len(data.get(k) or ()) for k in ("users", "api_keys", "sessions", "login_links"))
    return len(data)


def _holds(name, data):
    """Whether a destination part has something a copy would overwrite (the admin made at start-up is not)."""
    if name == "account records":
        return any(u != ADMIN for u in data.get("users", {})) or bool(data.get("api_keys"))
    return bool(data)


def data_fingerprint(name, data):
    """(count, sha256) of a part's data in canonical JSON (a set of ledger lines: their order is not kept)."""
    if name == "ledger lines":
        data = sorted(data, key=lambda e: _canonical(e))
    return _size(name, data), hashlib.sha256(_canonical(data)).hexdigest()


def copy_parts(pairs):
    """Copy each (name, source, dest) over what dest holds; returns {name: (count, sha256)}.
    CopyMismatch when a destination reads back different."""
    taken = [(name, source.export(), dest) for name, source, dest in pairs]
    done = {}
    for name, data, dest in taken:
        want = data_fingerprint(name, data)
        dest.replace_all(data)
        got = data_fingerprint(name, dest.export())
        if got != want:
            raise CopyMismatch(f"copy differs: source {want[0]} {name} sha256 {want[1]}, "
                               f"destination {got[0]} {name} sha256 {got[1]}")
        done[name] = want
    return done


def copy_all(data_dir, pg_store, *, to_pg, replace=False):
    """The tasks and every other part, JSON -> PostgreSQL (`to_pg`) or back; the lines to print."""
    json_store = TaskStore(data_dir)
    try:
        source, dest = (json_store, pg_store) if to_pg else (pg_store, json_store)
        json_side, pg_side = json_parts(data_dir), pg_parts(pg_store)
        pairs = [(name, json_side[name], pg_side[name]) if to_pg else (name, pg_side[name], json_side[name])
                 for name in json_side]
        if not replace:         # refuse before anything is written
            for name, _, target in pairs:
                if _holds(name, target.export()):
                    raise ValueError(f"the destination already holds {name} (pass --replace to overwrite them)")
        count, digest = copy_store(source, dest, replace=replace, work_dir=data_dir)
        others = copy_parts(pairs)
    finally:
        json_store.close()
    return [f"copied {count} tasks, sha256 {digest}"] + [f"copied {n} {name}, sha256 {d}"
                                                        for name, (n, d) in others.items()]


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
        """Copy tasks, accounts, ledger, idempotency keys and batches between the JSON files and PostgreSQL,
        verified by counts and checksums."""
        from task_store_pg import PgTaskStore

        if bool(to_url) == bool(from_url):
            raise click.UsageError("give exactly one of --to URL or --from URL")
        data_dir = current_app.config["DATA_DIR"]
        pg_store = PgTaskStore(to_url or from_url, data_dir)
        try:
            lines = copy_all(data_dir, pg_store, to_pg=bool(to_url), replace=replace)
        except (ValueError, CopyMismatch) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        finally:
            pg_store.close()
        click.echo("\n".join(lines))
