"""The studio on PostgreSQL: backend choice at start-up, refusal when the database is down,
migrations under their lock, `flask db upgrade`, and `flask store copy` both ways."""

import threading
import time

import psycopg
import pytest

import migrations
import store_cli
import task_store_pg
from app import StartupRefused, create_app
from task_store import TaskStore
from task_store_pg import PgTaskStore
from tests.test_task_store import _task

pytest_plugins = ["tests.pg_server"]     # pg_server, pg_url: a throwaway PostgreSQL

DOWN = "postgresql://postgres@/nowhere?host=/nonexistent-socket-dir&port=1"


def _app(tmp_path, monkeypatch, url):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    config = {"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test"}
    if url:
        config["DATABASE_URL"] = url
    return create_app(config)


def test_database_url_picks_postgresql_and_the_pages_use_it(tmp_path, monkeypatch, pg_url):
    app = _app(tmp_path, monkeypatch, pg_url)
    store = app.extensions["task_store"]
    assert isinstance(store, PgTaskStore)
    store.create(_task(1))
    listed = app.test_client().get("/api/tasks").get_json()
    assert [t["id"] for t in listed["tasks"]] == [_task(1)["id"]]
    assert app.test_client().get("/readyz").get_json()["checks"]["store"] == "ok"
    assert not (tmp_path / "data" / "tasks.jsonl").exists()     # nothing went to the JSON files
    store.close()


def test_without_database_url_the_json_store_stays(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert isinstance(_app(tmp_path, monkeypatch, None).extensions["task_store"], TaskStore)


def test_a_database_that_is_down_refuses_the_start_and_never_falls_back(tmp_path, monkeypatch):
    with pytest.raises(StartupRefused, match="DATABASE_URL is set but database unavailable"):
        _app(tmp_path, monkeypatch, DOWN)
    assert not (tmp_path / "data" / "tasks.jsonl").exists()


def test_readyz_is_false_once_the_database_goes_away(tmp_path, monkeypatch, pg_url, pg_server):
    app = _app(tmp_path, monkeypatch, pg_url)
    name = pg_url.split("/")[3].split("?")[0]
    pg_server.admin(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
    pg_server.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    started = time.monotonic()
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert "database unavailable" in response.get_json()["checks"]["store"]
    # A probe gives up after a few seconds: the answer comes in time to be read as "not ready".
    assert time.monotonic() - started < task_store_pg.READY_TIMEOUT + 2
    app.extensions["task_store"].close()


def test_migrations_apply_once_even_when_nodes_start_together(pg_server):
    pg_server.admin("CREATE DATABASE fresh_migrate")
    url = pg_server.url("fresh_migrate")
    results, errors = [], []

    def start():
        try:
            results.append(migrations.upgrade(url))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = [p.name for _, p in migrations.available()]
    assert errors == [] and sorted(results, key=len) == [[], [], [], names]
    with psycopg.connect(url) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version")] == names
        assert conn.execute("SELECT to_regclass('tasks')").fetchone()[0] == "tasks"


def test_flask_db_upgrade(tmp_path, monkeypatch, pg_server, pg_url):
    app = _app(tmp_path, monkeypatch, pg_url)
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0 and "up to date" in result.output
    pg_server.admin("CREATE DATABASE by_hand")
    result = app.test_cli_runner().invoke(args=["db", "upgrade", "--url", pg_server.url("by_hand")])
    assert result.exit_code == 0 and "001_tasks.sql" in result.output
    app.extensions["task_store"].close()


def test_store_copy_to_postgresql_and_back_is_verified(tmp_path, monkeypatch, pg_url, pg_server):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = _app(tmp_path, monkeypatch, None)
    json_store = app.extensions["task_store"]
    records = [_task(i) | {"n": 1.5, "nested": {"z": 1, "a": [None, True]}} for i in range(40)]
    for record in records:
        json_store.create(record)
    json_store.delete(records[3]["id"])
    runner = app.test_cli_runner()
    result = runner.invoke(args=["store", "copy", "--to", pg_url])
    assert result.exit_code == 0, result.output
    assert "copied 39 tasks" in result.output
    pg_store = PgTaskStore(pg_url, tmp_path, migrate=False)
    assert pg_store.list(limit=100) == json_store.list(limit=100)

    assert runner.invoke(args=["store", "copy", "--to", pg_url]).exit_code == 1      # not over tasks
    pg_store.update(records[0]["id"], {"status": "succeeded"})
    result = runner.invoke(args=["store", "copy", "--from", pg_url, "--replace"])
    assert result.exit_code == 0, result.output
    assert TaskStore(tmp_path / "data").get(records[0]["id"])["status"] == "succeeded"
    assert len(TaskStore(tmp_path / "data")) == 39
    pg_store.close()


def test_a_copy_that_comes_out_different_fails(tmp_path, pg_url):
    class Lossy(TaskStore):
        def replace_all(self, records):
            super().replace_all(r for i, r in enumerate(records) if i != 2)

    source = PgTaskStore(pg_url, tmp_path, migrate=False)
    for i in range(5):
        source.create(_task(i))
    with pytest.raises(store_cli.CopyMismatch, match="source 5 tasks"):
        store_cli.copy_store(source, Lossy(tmp_path / "json"), work_dir=tmp_path)
    source.close()


def test_a_postgresql_studio_keeps_its_ledger_and_rate_limits_there(tmp_path, monkeypatch, pg_url):
    from pg_limits import PgLedger, PgRateLimiter

    app = _app(tmp_path, monkeypatch, pg_url)
    assert isinstance(app.extensions["ledger"], PgLedger)
    assert isinstance(app.extensions["rate_limiter"], PgRateLimiter)
    with app.test_request_context():
        assert app.test_client().get("/api/tasks").status_code == 200
    assert not (tmp_path / "data" / "ratelimits.json").exists()
    app.extensions["task_store"].close()


def test_a_forked_child_opens_its_own_pool_and_leaves_the_parents_alone(tmp_path, pg_url):
    import os

    store = PgTaskStore(pg_url, tmp_path, migrate=False)
    store.create({"id": "t1", "n": 0})
    assert store.get("t1")["n"] == 0          # the parent's pool is open and has a connection

    def backend(conn):
        return conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    session = store.run(backend)
    pid = os.fork()
    if pid == 0:                              # the child: use the store, drop it, leave at once
        try:
            store.update("t1", {"n": 1})
            code = 0 if store.get("t1")["n"] == 1 else 1
            store.close()
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # Had the child closed the parent's connections, their sessions would have ended.
    with psycopg.connect(pg_url, autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (session,)).fetchone()[0] == 1
    assert store.get("t1")["n"] == 1
    store.update("t1", {"n": 2})
    store.close()
