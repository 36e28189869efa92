"""Idempotency-Key records in PostgreSQL, for a studio whose tasks are there (idempotency.py's rules).

The claim is one atomic step: `INSERT ... ON CONFLICT DO NOTHING` of the (user, key) row, in a
transaction that stays open while the create runs and commits together with its answer. A second
request with the key, on any node, runs the same INSERT and PostgreSQL makes it wait for the first
transaction: when that commits, the INSERT does nothing and the second request replays the answer
it finds; when it rolls back (the create was refused, or the worker died and its connection
closed), the second request's INSERT succeeds and it makes the task itself. So two nodes receiving
the same key at once make one task, with no lock files and no polling.

The claim's transaction has a connection of its own, not one from the store's pool: the create
itself uses the pool, and requests holding pooled connections while waiting for more could run it
dry. Expired rows (older than idempotency.LIFETIME) are removed by the next claim of their key and
by every recorded answer's sweep.
"""

import psycopg
from psycopg.types.json import Jsonb

from clock import iso
from task_store_pg import CONNECT_TIMEOUT, StoreUnavailable


def once(store, name, user_id, request_hash, now, replay, answer, lifetime):
    """The remembered answer for `name` (`replay(kept)`), or the answer of a create run now.

    `answer()` runs the create: (response, the record to keep, or None when nothing was made)."""
    cutoff = iso(now - lifetime)
    try:
        conn = psycopg.connect(store.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(exc) from exc
    with conn:
        with conn.transaction():
            conn.execute("DELETE FROM idempotency_keys WHERE name = %s AND created_at <= %s", (name, cutoff))
            # Waits here while another request's claim of this key is open, anywhere.
            claimed = conn.execute(
                "INSERT INTO idempotency_keys (name, user_id, request_hash, created_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING name", (name, user_id, request_hash, iso(now))).fetchone()
            if claimed:
                response, record = answer()
                if record is None:
                    raise psycopg.Rollback()        # nothing was made: the key stays free
                conn.execute("UPDATE idempotency_keys SET status = %s, body = %s WHERE name = %s",
                             (record["status"], Jsonb(record["body"]), name))
            else:
                kept = _kept(conn, name)
        if claimed:
            if record is not None:
                conn.execute("DELETE FROM idempotency_keys WHERE created_at <= %s", (cutoff,))
            return response
    if kept is None:            # it expired and was swept between the two statements: claim again
        return once(store, name, user_id, request_hash, now, replay, answer, lifetime)
    return replay(kept)


def _kept(conn, name):
    row = conn.execute("SELECT user_id, request_hash, status, body, created_at FROM idempotency_keys "
                       "WHERE name = %s", (name,)).fetchone()
    return dict(zip(("user", "request_hash", "status", "body", "created_at"), row, strict=True)) if row else None


def export(store):
    """{name: record} of every kept answer, in the JSON files' record shape."""
    rows = store.run(lambda c: c.execute("SELECT name, user_id, request_hash, status, body, created_at "
                                         "FROM idempotency_keys WHERE status IS NOT NULL").fetchall())
    return {r[0]: dict(zip(("user", "request_hash", "status", "body", "created_at"), r[1:], strict=True))
            for r in rows}


def replace_all(store, records):
    """Replace every kept answer with `records` ({name: record}), in one transaction."""
    def write(conn):
        with conn.transaction():
            conn.execute("DELETE FROM idempotency_keys")
            for name, r in records.items():
                conn.execute("INSERT INTO idempotency_keys (name, user_id, request_hash, status, body, created_at) "
                             "VALUES (%s, %s, %s, %s, %s, %s)",
                             (name, r["user"], r["request_hash"], r["status"], Jsonb(r["body"]), r["created_at"]))
    store.run(write)
