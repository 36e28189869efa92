"""The PostgreSQL schema's versioned migrations, and applying them.

Each change to the schema is one plain-SQL file here, `NNN_name.sql`, applied once and in order
of NNN. `upgrade(conninfo)` applies the missing ones, each in its own transaction together with
its row in `schema_migrations`, while holding a session-level `pg_advisory_lock`: several nodes
starting at once queue behind one another, and the second finds nothing left to do. The studio
calls it when it opens a PostgreSQL store; `flask db upgrade` calls it by hand. A file is never
edited once released: a later change is a new file.
"""

import re
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# An arbitrary constant every studio node agrees on: the key of the migration advisory lock.
LOCK_KEY = 7_211_604_160_001


def available():
    """(version, path) of every migration file, in the order they apply."""
    found = [(int(m.group(1)), p) for p in HERE.glob("*.sql") if (m := NAME.match(p.name))]
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number in {HERE}")
    return sorted(found)


def applied(conn):
    """The versions recorded in schema_migrations (none when the table does not exist yet)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
    if exists is None:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def upgrade(conninfo, connect_timeout=10):
    """Apply every missing migration; returns the names of those applied now."""
    done = []
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         "version integer PRIMARY KEY, name text NOT NULL, "
                         "applied_at timestamptz NOT NULL DEFAULT now())")
            have = applied(conn)
            for version, path in available():
                if version in have:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                 (version, path.name))
                done.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return done
