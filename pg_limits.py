"""The quota ledger and the rate limits in PostgreSQL, for a studio whose tasks are there.

Same interfaces and meanings as ledger.Ledger and rate_limit.RateLimiter (app.py swaps them in
when DATABASE_URL is set), so every node counts one spending and one set of attempts. They share
the task store's connection pool.

Ledger: `locked()` holds a session-level advisory lock on one connection for the whole check of
spending and the spend it allows (access.create_within_limits), as the JSON ledger holds its file
lock (and, like it, is not re-entrant). Each spend is committed as it is
recorded. Rate limits: each check takes transaction-level advisory locks on its counters' keys,
forgets old events, checks and records in one transaction, so parallel requests on any node can
never pass a limit together.
"""

from contextlib import contextmanager
from datetime import UTC

from clock import utcnow
from rate_limit import FORGET_AFTER, RateLimiter, login_delay
from task_store_pg import StoreUnavailable

LEDGER_KEY = 7_211_604_160_003


class PgLedger:
    """ledger.Ledger over the `ledger` table."""

    def __init__(self, store, clock=utcnow):
        self.store, self.clock = store, clock

    @contextmanager
    def locked(self):
        """The ledger's lock: hold it around a check of spending and the spend it allows."""
        try:
            with self.store.pool().connection() as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (LEDGER_KEY,))
                try:
                    yield
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (LEDGER_KEY,))
        except OSError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith(("psycopg", "psycopg_pool")):
                raise StoreUnavailable(exc) from exc
            raise

    def spent_today(self, user_id, kind, now=None):
        """Units (videos, or images) the user spent today, refunds subtracted."""
        day = (now or self.clock()).astimezone(UTC).date()
        return self.store.run(lambda c: c.execute(
            "SELECT coalesce(sum(count), 0) FROM ledger WHERE day = %s AND user_id = %s AND kind = %s",
            (day, user_id, kind)).fetchone()[0])

    def record(self, user_id, kind, count, task_id, now=None):
        """Record one spend (or refund, with a negative count); call it under `locked()`."""
        now = now or self.clock()
        self.store.run(lambda c: c.execute(
            "INSERT INTO ledger (user_id, kind, count, task_id, at, day) VALUES (%s, %s, %s, %s, %s, %s)",
            (user_id, kind, count, task_id, now, now.astimezone(UTC).date())))

    def refund(self, user_id, kind, task_id, now=None):
        """Give back what a task spent today, once (a task cancelled before any provider saw it)."""
        now = now or self.clock()
        with self.locked():
            balance = self.store.run(lambda c: c.execute(
                "SELECT coalesce(sum(count), 0) FROM ledger WHERE day = %s AND task_id = %s",
                (now.astimezone(UTC).date(), task_id)).fetchone()[0])
            if balance > 0:
                self.record(user_id, kind, -balance, task_id, now)


class PgRateLimiter(RateLimiter):
    """rate_limit.RateLimiter over the `rate_events` table (same keyed hashes, same rules)."""

    def __init__(self, store, secret, clock=None):
        super().__init__(store.dir, secret, **({"clock": clock} if clock else {}))
        self.store = store

    def _events(self, conn, names, now):
        """{name: event times, oldest first} for `names`, locked for this transaction."""
        for name in sorted(names):      # one order everywhere: two checks never wait on each other
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))
        conn.execute("DELETE FROM rate_events WHERE name = ANY(%s) AND at <= %s", (list(names), now - FORGET_AFTER))
        rows = conn.execute("SELECT name, at FROM rate_events WHERE name = ANY(%s) ORDER BY at",
                            (list(names),)).fetchall()
        events = {name: [] for name in names}
        for name, at in rows:
            events[name].append(at)
        return events

    def _in_transaction(self, work):
        def run(conn):
            with conn.transaction():
                return work(conn)
        return self.store.run(run)

    def hit(self, key, limit, window):
        """Count one event for `key` if fewer than `limit` happened in the last `window` seconds.
        Returns None when it was allowed (and counted), else the seconds until it would be."""
        name, now = self._name(key), self.clock()

        def check(conn):
            recent = [t for t in self._events(conn, [name], now)[name] if now - t < window]
            if len(recent) >= limit:
                return max(1, int(window - (now - recent[0])) + 1)
            conn.execute("INSERT INTO rate_events (name, at) VALUES (%s, %s)", (name, now))
            return None
        return self._in_transaction(check)

    def attempt(self, keys):
        """One sign-in attempt against several counters ({key: free failures}), checked and
        recorded in one step; None when it may go ahead, else the seconds to wait."""
        names = {self._name(key): free for key, free in keys.items()}
        now = self.clock()

        def check(conn):
            events = self._events(conn, names, now)
            wait = max([e[-1] + login_delay(len(e), names[n]) - now for n, e in events.items() if e] + [0])
            if wait > 0:
                return max(1, int(wait + 0.999))
            for name in names:
                conn.execute("INSERT INTO rate_events (name, at) VALUES (%s, %s)", (name, now))
            return None
        return self._in_transaction(check)

    def forgive(self, keys):
        """A successful sign-in: forget the failures counted for these keys."""
        names = [self._name(key) for key in keys]
        self.store.run(lambda c: c.execute("DELETE FROM rate_events WHERE name = ANY(%s)", (names,)))


def install(app):
    """Put the ledger and the rate limiter of a PostgreSQL studio in place of the file-based ones."""
    store = app.extensions["task_store"]
    app.extensions["ledger"] = PgLedger(store)
    app.extensions["rate_limiter"] = PgRateLimiter(store, app.config["SECRET_KEY"])
