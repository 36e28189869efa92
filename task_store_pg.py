"""The PostgreSQL task store: task_store.TaskStore's interface over one `tasks` table.

Chosen by app.py when `DATABASE_URL` is set. Each record is kept whole as JSONB, beside the
columns the listings filter on (status, kind, provider, owner, the lower-cased prompt under a
trigram index, created_at); the store writes those columns from the record on every change, with
the same rules as the JSON store's index, so both backends answer every listing alike. Nothing is
cached in the process: every call asks the database, so any number of processes and nodes share
one store and a process's memory does not grow with the tasks.

`update` is one transaction: `SELECT ... FOR UPDATE` locks the row, the change runs on the fresh
record, the result is written and committed — so read-modify-writes from any process never lose
one another's changes, and a change that raises writes nothing. `snapshot` reads every record in
one REPEATABLE READ transaction, the same consistent moment the JSON store's lock gives.

There is no log to compact here (PostgreSQL reclaims dead rows itself with autovacuum): `compact`
and `garbage_ratio` report nothing to do. The schema is brought up to date (migrations/) when the
store opens. Connections come from a pool opened on first use in each process; a forked child
opens its own and never touches the parent's sockets.
"""

import errno
import json
import logging
import os
import threading
from pathlib import Path

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

import migrations
from clock import iso, utcnow

log = logging.getLogger(__name__)

FILTER_FIELDS = ("status", "kind", "provider", "owner")
POOL_MAX = 8
CONNECT_TIMEOUT = 10            # seconds; a database that is down fails the call, never hangs it
READY_TIMEOUT = 2               # seconds /readyz waits for a connection: probes give up after a few
_inherited = []                 # pools a forked child must keep referenced: closing them would close the parent's


class StoreUnavailable(OSError):
    """The database cannot be reached or refused the call. An OSError, so the checks that treat
    an unreadable JSON store as "not ready" (health.readyz) treat this one the same."""

    def __init__(self, exc):
        super().__init__(errno.ECONNREFUSED, f"database unavailable: {exc}".strip())


def _text(value):
    return value if isinstance(value, str) else ""


def _columns(record):
    """The filter columns of a record, by the JSON store's rules (task_store._entry)."""
    params = record.get("params")
    prompt = params.get("prompt") if isinstance(params, dict) else None
    owner = record.get("owner")
    return (_text(record.get("status")), _text(record.get("kind")), _text(record.get("provider")),
            owner if isinstance(owner, str) else None, _text(prompt).lower(),
            record.get("created_at") if isinstance(record.get("created_at"), str) else None)


def _line(record):
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def _like(needle):
    """`needle` as a LIKE pattern matching it anywhere, its wildcards taken literally."""
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(status, kind, provider, owner, text, since, favourite=None):
    """(SQL condition, parameters) for the listing filters; every given filter must hold."""
    terms, args = [], []
    statuses = [status] if isinstance(status, str) else list(status or ())
    if statuses:
        terms.append("status = ANY(%s)")
        args.append(statuses)
    for column, value in (("kind", kind), ("provider", provider), ("owner", owner)):
        if value is not None:
            terms.append(f"{column} = %s")
            args.append(value)
    if text:
        terms.append("prompt LIKE %s")
        args.append(_like(text.lower()))
    if since:
        terms.append("id >= %s")
        args.append(since)
    if favourite:           # starred tasks are few: read from the record, no column of its own
        terms.append("(record->>'favourite') = 'true'")
    return (" AND ".join(terms) or "TRUE"), args


_UPSERT_COLUMNS = "record, status, kind, provider, owner, prompt, created_at"

# The claim of sticky tasks (PgTaskStore.claim): renew this node's own, take the unclaimed ones
# when this node leads (it dispatched them), and those of nodes whose heartbeat is older than a lease.
_CLAIM_STICKY = (
    "UPDATE tasks SET claimed_by = %(node)s, claim_until = now() + make_interval(secs => %(lease)s) "
    "WHERE id IN (SELECT id FROM tasks WHERE status = ANY(%(statuses)s) AND provider = ANY(%(sticky)s::text[]) "
    "AND (%(since)s::text IS NULL OR id >= %(since)s) "
    "AND (claimed_by = %(node)s OR (claimed_by IS NULL AND %(leading)s) "
    "OR (claimed_by IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pipeline_nodes p WHERE p.node = tasks.claimed_by "
    "AND p.seen > now() - make_interval(secs => %(window)s)))) "
    "ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING id")


class PgTaskStore:
    """Task records in PostgreSQL, with task_store.TaskStore's methods and meanings."""

    def __init__(self, conninfo, data_dir, *, pool_max=POOL_MAX, migrate=True):
        self.conninfo = conninfo
        self.dir = Path(data_dir)           # inputs, outputs and the submit journal stay files
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pool_max = pool_max
        self._pool = None
        self._pid = os.getpid()
        self._guard = threading.Lock()
        if migrate:
            try:
                migrations.upgrade(conninfo, connect_timeout=CONNECT_TIMEOUT)
            except psycopg.Error as exc:
                raise StoreUnavailable(exc) from exc

    # ---- connections ---------------------------------------------------------------------

    def _after_fork(self):
        """A forked child keeps the parent's pool referenced (its sockets are the parent's: closing
        them would end the parent's sessions) and opens its own on first use."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            if self._pool is not None:
                _inherited.append(self._pool)
            self._pool, self._guard = None, threading.Lock()

    def _connections(self):
        self._after_fork()
        with self._guard:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.conninfo, min_size=1, max_size=self.pool_max, open=True, timeout=CONNECT_TIMEOUT,
                    check=ConnectionPool.check_connection,     # a restarted server left broken ones
                    kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT, "row_factory": tuple_row},
                    name="tasks")
            return self._pool

    def _run(self, work, timeout=None):
        """`work(conn)` on a pooled connection (waiting at most `timeout` s for one, else the
        pool's CONNECT_TIMEOUT); database failures become StoreUnavailable."""
        try:
            with self._connections().connection(timeout=timeout) as conn:
                return work(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(exc) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):     # PoolTimeout: no connection to be had
                raise StoreUnavailable(exc) from exc
            raise

    def run(self, work):
        """`work(conn)` on a connection of this store's pool: for the other PostgreSQL stores
        (pg_limits.py) that share it; database failures become StoreUnavailable."""
        return self._run(work)

    def pool(self):
        """This process's connection pool (opened on first use)."""
        return self._connections()

    def close(self):
        """Close this process's pool (never the parent's)."""
        self._after_fork()
        with self._guard:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    # ---- reading -------------------------------------------------------------------------

    def get(self, task_id):
        """The current record for `task_id`, or None."""
        row = self._run(lambda c: c.execute("SELECT record FROM tasks WHERE id = %s", (task_id,)).fetchone())
        return row[0] if row else None

    def __len__(self):
        return self._run(lambda c: c.execute("SELECT count(*) FROM tasks").fetchone()[0])

    def ping(self):
        """Raise StoreUnavailable unless the database answers within READY_TIMEOUT (for /readyz)."""
        self._run(lambda c: c.execute("SELECT 1"), timeout=READY_TIMEOUT)

    def list(self, *, status=None, kind=None, provider=None, text=None, owner=None, since=None,
             favourite=None, offset=0, limit=50):
        """Newest-first page of records matching every given filter, and the total that match;
        `favourite=True` keeps the starred ones."""
        where, args = _where(status, kind, provider, owner, text, since, favourite)

        def page(conn):
            total = conn.execute(f"SELECT count(*) FROM tasks WHERE {where}", args).fetchone()[0]
            if offset >= total or limit <= 0:
                return [], total
            # The ids first (the skipped rows are read from an index, not fetched whole), then
            # only the records of the page.
            rows = conn.execute(f"SELECT record FROM tasks WHERE id IN (SELECT id FROM tasks WHERE {where} "
                                "ORDER BY id DESC OFFSET %s LIMIT %s) ORDER BY id DESC",
                                [*args, offset, limit]).fetchall()
            return [r[0] for r in rows], total
        return self._run(page)

    def ids_with_status(self, statuses, since=None):
        """Ids (oldest first) of every task in one of `statuses`, optionally only ids >= `since`."""
        statuses = list(statuses)
        if not statuses:
            return []
        where, args = _where(statuses, None, None, None, None, since)
        rows = self._run(lambda c: c.execute(f"SELECT id FROM tasks WHERE {where} ORDER BY id", args).fetchall())
        return [r[0] for r in rows]

    # ---- writing -------------------------------------------------------------------------

    def create(self, record):
        """Add a new record (it must carry a fresh `id`); KeyError if the id exists."""
        def insert(conn):
            return conn.execute(
                f"INSERT INTO tasks (id, {_UPSERT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING", (record["id"], Jsonb(record), *_columns(record))).rowcount
        if not self._run(insert):
            raise KeyError(f"task {record['id']} exists")
        return record

    def update(self, task_id, change):
        """Apply `change` (a dict of fields, or a function mutating the fresh record in place; it
        may raise to abort) to the locked row in one transaction; returns the stored record."""
        def rmw(conn):
            with conn.transaction():
                row = conn.execute("SELECT record FROM tasks WHERE id = %s FOR UPDATE", (task_id,)).fetchone()
                if row is None:
                    raise KeyError(task_id)
                record = row[0]
                if callable(change):
                    change(record)
                else:
                    record.update(change)
                record["id"] = task_id
                record["updated_at"] = iso(utcnow())
                conn.execute(f"UPDATE tasks SET ({_UPSERT_COLUMNS}) = (%s, %s, %s, %s, %s, %s, %s) WHERE id = %s",
                             (Jsonb(record), *_columns(record), task_id))
                return record
        return self._run(rmw)

    def delete(self, task_id):
        """Remove a record; returns the removed record or None."""
        row = self._run(lambda c: c.execute("DELETE FROM tasks WHERE id = %s RETURNING record",
                                            (task_id,)).fetchone())
        return row[0] if row else None

    def replace_all(self, records):
        """Make `records` the whole content of the store (restoring a backup), in one transaction."""
        def replace(conn):
            with conn.transaction():
                conn.execute("DELETE FROM tasks")
                with conn.cursor().copy(f"COPY tasks (id, {_UPSERT_COLUMNS}) FROM STDIN") as copy:
                    for record in records:
                        copy.write_row((record["id"], Jsonb(record), *_columns(record)))
        self._run(replace)

    # ---- upkeep --------------------------------------------------------------------------

    def compact(self):
        """Nothing to rewrite (autovacuum reclaims dead rows); (live records, live records)."""
        count = len(self)
        return count, count

    def garbage_ratio(self):
        """Always 0: the store has no superseded lines of its own to compact."""
        return 0.0

    def line_count(self):
        """The live records (there are no superseded ones to count)."""
        return len(self)

    def snapshot(self, dest):
        """Write every live record to `dest` as JSON lines, oldest first, from one consistent
        moment (a REPEATABLE READ transaction); returns the count."""
        def copy(conn):
            count = 0
            with conn.transaction(), open(dest, "wb") as f:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                # A server-side cursor streams the rows: a million records never sit in memory at once.
                with conn.cursor(name="snapshot") as cur:
                    cur.itersize = 2000
                    cur.execute("SELECT record FROM tasks ORDER BY id")
                    for (record,) in cur:
                        f.write(_line(record) + b"\n")
                        count += 1
                f.flush()
                os.fsync(f.fileno())
            return count
        return self._run(copy)

    # ---- claims (several nodes sharing the pipeline: pg_pipeline.py) ------------------------

    def claim(self, statuses, node, lease_seconds, limit, since=None, sticky=(), leading=False):
        """Claim for `node` (or renew) tasks in `statuses` that no other node holds an unexpired
        claim on, its own first, then the oldest; returns the claimed ids, oldest first.

        A node takes at most its fair share — the tasks in `statuses` divided by the nodes that
        claimed within a lease — and at most `limit`; what it held beyond that expires and goes
        to the others. Rows another transaction has locked are skipped, never waited for.

        Tasks of the `sticky` providers (pg_pipeline.STICKY_PROVIDERS) stay with the node that
        holds them while its row in pipeline_nodes is fresh, whatever the share or the lease; an
        unclaimed one goes only to the node `leading` (the one that dispatched it), and a dead
        node's ones to the first live node that asks."""
        args = {"statuses": list(statuses), "node": node, "lease": float(lease_seconds), "limit": limit,
                "since": since, "window": max(float(lease_seconds), 1.0), "sticky": list(sticky),
                "leading": bool(leading)}

        def claim(conn):
            with conn.transaction():
                conn.execute("INSERT INTO pipeline_nodes (node, seen) VALUES (%(node)s, now()) "
                             "ON CONFLICT (node) DO UPDATE SET seen = now()", args)
                held = conn.execute(_CLAIM_STICKY, args).fetchall() if sticky else []
                live, total = conn.execute(
                    "SELECT (SELECT count(*) FROM pipeline_nodes WHERE seen > now() - make_interval(secs => "
                    "%(window)s)), (SELECT count(*) FROM tasks WHERE status = ANY(%(statuses)s) "
                    "AND coalesce(provider, '') <> ALL(%(sticky)s::text[]) "
                    "AND (%(since)s::text IS NULL OR id >= %(since)s))", args).fetchone()
                args["limit"] = min(limit, -(-total // max(live, 1)))
                return held + conn.execute(
                    "UPDATE tasks SET claimed_by = %(node)s, claim_until = now() + make_interval(secs => %(lease)s) "
                    "WHERE id IN (SELECT id FROM tasks WHERE status = ANY(%(statuses)s) "
                    "AND coalesce(provider, '') <> ALL(%(sticky)s::text[]) "
                    "AND (%(since)s::text IS NULL OR id >= %(since)s) "
                    "AND (claimed_by IS NULL OR claimed_by = %(node)s OR claim_until < now()) "
                    "ORDER BY claimed_by IS DISTINCT FROM %(node)s, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
                    "RETURNING id", args).fetchall()
        return sorted(r[0] for r in self._run(claim))

    def release_claims(self, node):
        """Give up every claim `node` holds (a node stopping cleanly hands its tasks on at once)."""
        def release(conn):
            with conn.transaction():
                conn.execute("DELETE FROM pipeline_nodes WHERE node = %s", (node,))
                return conn.execute("UPDATE tasks SET claimed_by = NULL, claim_until = NULL WHERE claimed_by = %s",
                                    (node,)).rowcount
        return self._run(release)

    def claims(self):
        """{task id: node} of every claim that has not expired."""
        rows = self._run(lambda c: c.execute(
            "SELECT id, claimed_by FROM tasks WHERE claimed_by IS NOT NULL AND claim_until >= now()").fetchall())
        return dict(rows)
