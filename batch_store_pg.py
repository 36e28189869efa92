"""Batch records in PostgreSQL: batch_store.BatchStore's interface over the `batches` table
(migration 007), chosen by batches.init_app when the tasks are in PostgreSQL, so every node sees
every batch.

A row holds the JSON file's record unchanged beside the owner, name and creation columns it is
looked up by. `update` is one transaction that locks the row (SELECT ... FOR UPDATE) while the
change is applied, so two nodes changing one batch never lose each other's change. `adding` holds
a session-level advisory lock keyed on (owner, name) on a connection of its own: batches.submit
holds it across a whole upload, during which it needs pooled connections itself, and a turn held
on a connection of the pool could leave the uploads waiting for one another's connections.
Closing that connection ends the turn even when the node dies mid-upload.
"""

import hashlib

import psycopg
from psycopg.types.json import Jsonb

from batch_store import BATCH_ID
from task_store_pg import CONNECT_TIMEOUT, StoreUnavailable

# The first key of the two-key advisory locks of named batches (the single-key locks of the
# migrations and the cluster leader live in another key space).
ADDING_LOCK_CLASS = 72_116


def adding_key(owner, name):
    """The second advisory-lock key of (owner, name): 32 bits of their SHA-256. Two names that share
    it only take turns when they need not."""
    digest = hashlib.sha256(f"{owner}\0{name}".encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


class PgBatchStore:
    """Batch records in PostgreSQL, sharing the task store's connection pool."""

    def __init__(self, store):
        self.store = store

    def _one(self, sql, args):
        row = self.store.run(lambda c: c.execute(sql, args).fetchone())
        return row[0] if row else None

    def get(self, batch_id):
        """The record, or None (also for an id that could not be a batch's)."""
        if not BATCH_ID.fullmatch(batch_id or ""):
            return None
        return self._one("SELECT record FROM batches WHERE id = %s", (batch_id,))

    @staticmethod
    def _write(conn, record):
        conn.execute("INSERT INTO batches (id, owner, name, created_at, record) VALUES (%s, %s, %s, %s, %s) "
                     "ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, name = EXCLUDED.name, "
                     "created_at = EXCLUDED.created_at, record = EXCLUDED.record",
                     (record["id"], record.get("owner"), record.get("name"), record.get("created_at") or "",
                      Jsonb(record)))

    def create(self, record):
        if not BATCH_ID.fullmatch(record.get("id") or ""):
            raise ValueError(f"not a batch id: {record.get('id')!r}")
        self.store.run(lambda conn: self._write(conn, record))
        return record

    def update(self, batch_id, change):
        """Apply `change(record)` (a function that edits it in place) to the locked row; the new record."""
        def work(conn):
            with conn.transaction():
                row = conn.execute("SELECT record FROM batches WHERE id = %s FOR UPDATE", (batch_id,)).fetchone()
                if row is None:
                    raise KeyError(batch_id)
                record = row[0]
                change(record)
                self._write(conn, record)
                return record
        return self.store.run(work)

    def list(self, owner=None):
        """Every record (of `owner` when given), newest first."""
        rows = self.store.run(lambda c: c.execute(
            "SELECT record FROM batches WHERE %(owner)s::text IS NULL OR owner = %(owner)s ORDER BY id DESC",
            {"owner": owner}).fetchall())
        return [row[0] for row in rows]

    def find(self, owner, name):
        """The owner's newest batch of this name, or None."""
        return self._one("SELECT record FROM batches WHERE owner = %s AND name = %s ORDER BY id DESC LIMIT 1",
                         (owner, name))

    def adding(self, owner, name):
        """Held while items are added to the owner's batch `name` (see BatchStore.adding), by every
        node: the turn is an advisory lock in the database."""
        return _Turn(self.store.conninfo, owner, name)

    # ---- `flask store copy`

    def export(self):
        """{id: record} of every batch."""
        rows = self.store.run(lambda c: c.execute("SELECT id, record FROM batches ORDER BY id").fetchall())
        return dict(rows)

    def replace_all(self, records):
        """Make the table hold exactly `records` ({id: record})."""
        def work(conn):
            with conn.transaction():
                conn.execute("DELETE FROM batches")
                for record in records.values():
                    self._write(conn, record)
        self.store.run(work)


class _Turn:
    """The advisory lock of one named batch, on a connection of its own while it is held."""

    def __init__(self, conninfo, owner, name):
        self.conninfo, self.key = conninfo, (adding_key(owner, name) if name else None)
        self._conn = None

    def __enter__(self):
        if self.key is None:        # a batch without a name is always new and needs no turn
            return self
        try:
            self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                         application_name="studio-batch-adding")
            self._conn.execute("SELECT pg_advisory_lock(%s, %s)", (ADDING_LOCK_CLASS, self.key))
        except psycopg.Error as exc:
            self._close()
            raise StoreUnavailable(exc) from exc
        return self

    def __exit__(self, *exc_info):
        self._close()               # ending the session releases the lock
        return False

    def _close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
