"""A throwaway PostgreSQL server for the tests: a real cluster in a temp folder, never a mock.

`pg_server` (session) runs `initdb` and `pg_ctl` from Debian's packages (/usr/lib/postgresql/*/bin)
in a fresh folder, listening only on a unix socket there (no TCP port to collide with), with
durability off for speed. PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` user (`runuser`), which owns the folder. `pg_url` (per test) is a new, empty database
with the studio's migrations applied, cloned from a template so each test costs one
CREATE DATABASE. Use them from a test module with `from tests.pg_server import pg_server, pg_url`.

These tests are not optional: when the binaries are missing as root (CI installs them with
scripts/ensure-postgresql) or the server does not start, the fixture fails loudly. Only a
non-root machine without PostgreSQL skips them, and says why.
"""

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

import migrations

PORT = 5432         # only names the socket file: the server listens on no TCP address
_counter = itertools.count()


def _bin_dir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class PgServer:
    """One running cluster; `url(db)` is how to reach database `db` in it."""

    def __init__(self, folder, bin_dir):
        self.folder, self.bin_dir = Path(folder), bin_dir
        self.data, self.socket_dir = self.folder / "data", self.folder
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args):
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def start(self, durable=False):
        """initdb and start; `durable` keeps fsync on (benchmarks), tests run without it."""
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C.UTF-8")
        options = (f"-c listen_addresses='' -c unix_socket_directories={self.socket_dir} -p {PORT} "
                   "-c max_connections=200")
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"),
                  "-w", "-t", "60", "start")

    def stop(self):
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, db="postgres"):
        return f"postgresql://postgres@/{db}?host={self.socket_dir}&port={PORT}"

    def admin(self, sql):
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self):
        """A fresh database with the migrations applied (a clone of the migrated template)."""
        name = f"t{os.getpid()}_{next(_counter)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE studio_template")
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server():
    bin_dir = _bin_dir()
    if bin_dir is None:
        if os.geteuid() != 0:
            pytest.skip("PostgreSQL's binaries (initdb, pg_ctl) are not installed and this user cannot install them")
        pytest.fail("PostgreSQL's binaries are missing: run scripts/ensure-postgresql (the pg tests are required)")
    server = PgServer(tempfile.mkdtemp(prefix="pg-"), bin_dir)     # short: a socket path has ~100 bytes
    try:
        server.start()
        server.admin("CREATE DATABASE studio_template")
        migrations.upgrade(server.url("studio_template"))
    except Exception as exc:
        log = server.folder / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        server.stop()
        pytest.fail(f"could not start a throwaway PostgreSQL: {exc}\n{tail}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    return pg_server.new_database()
