"""`flask store copy` moves tasks, accounts, the ledger and Idempotency-Key records JSON ->
PostgreSQL -> JSON, verified by counts and checksums, and the round trip gives identical data."""

import pytest

import store_cli
from accounts import Accounts
from app import create_app
from pg_accounts import PgAccounts
from task_store_pg import PgTaskStore
from tests.conftest import b64, picture

pytest_plugins = ["tests.pg_server"]     # pg_server, pg_url: a throwaway PostgreSQL

PICTURE = b64(picture(400, 320, seed=5), "image/png")
PASSWORD = "a long enough password 1"


def _json_app(data_dir, monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    return create_app({"TESTING": True, "SECRET_KEY": "test", "DATA_DIR": str(data_dir)})


def _everything(data_dir):
    parts = {name: side.export() for name, side in store_cli.json_parts(data_dir).items()}
    parts["ledger lines"] = sorted(parts["ledger lines"], key=store_cli._canonical)
    return parts


def _fill(app):
    client = app.test_client()
    carol = client.post("/api/users", json={"username": "carol", "password": PASSWORD}).get_json()
    accounts = app.extensions["accounts"]
    key, _ = accounts.create_api_key(carol["id"], "ci", scopes=("read",), expires_in_days=30)
    accounts.create_session(carol["id"])
    accounts.create_login_link(carol["id"])
    accounts.rotate_webhook_secret(carol["id"])
    accounts.set_webhook(carol["id"], "https://example.com/hook")
    for n in range(3):
        made = client.post("/api/v1/images/generate", json={"image": PICTURE}, headers={"Idempotency-Key": f"k{n}"})
        assert made.status_code == 202, made.get_json()
    return key


def test_json_to_postgresql_and_back_gives_identical_data(tmp_path, monkeypatch, pg_url):
    source = _json_app(tmp_path / "a", monkeypatch, tmp_path)
    key = _fill(source)
    before = _everything(tmp_path / "a")
    assert len(before["ledger lines"]) == 3 and len(before["idempotency keys"]) == 3

    result = source.test_cli_runner().invoke(args=["store", "copy", "--to", pg_url])
    assert result.exit_code == 0, result.output
    for line in ("copied 3 tasks", "copied 5 account records", "copied 3 ledger lines", "copied 3 idempotency keys"):
        assert line in result.output
    pg_store = PgTaskStore(pg_url, tmp_path / "node", migrate=False)
    assert PgAccounts(pg_store).user_for_key(key)[0]["username"] == "carol"     # a PG studio signs in with it
    assert PgAccounts(pg_store).export() == before["account records"]

    target = _json_app(tmp_path / "b", monkeypatch, tmp_path)         # a new studio: only its admin
    result = target.test_cli_runner().invoke(args=["store", "copy", "--from", pg_url])
    assert result.exit_code == 0, result.output
    assert _everything(tmp_path / "b") == before
    tasks_a, tasks_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    source.extensions["task_store"].snapshot(tasks_a)
    store_cli.TaskStore(tmp_path / "b").snapshot(tasks_b)
    assert store_cli.fingerprint(tasks_a) == store_cli.fingerprint(tasks_b)
    pg_store.close()


def test_a_destination_with_users_is_refused_without_replace_and_nothing_is_written(tmp_path, monkeypatch,
                                                                                     pg_url):
    source = _json_app(tmp_path / "a", monkeypatch, tmp_path)
    source.test_client().post("/api/users", json={"username": "carol", "password": PASSWORD})
    pg_store = PgTaskStore(pg_url, tmp_path / "node", migrate=False)
    PgAccounts(pg_store).create_user("dave", PASSWORD)
    result = source.test_cli_runner().invoke(args=["store", "copy", "--to", pg_url])
    assert result.exit_code == 1 and "already holds account records" in result.output
    assert [u["username"] for u in PgAccounts(pg_store).users()] == ["dave"]
    result = source.test_cli_runner().invoke(args=["store", "copy", "--to", pg_url, "--replace"])
    assert result.exit_code == 0, result.output
    assert sorted(u["username"] for u in PgAccounts(pg_store).users()) == ["admin", "carol"]
    pg_store.close()


def test_a_part_that_reads_back_different_fails(tmp_path):
    class Lossy(Accounts):
        def replace_all(self, data):
            super().replace_all({**data, "sessions": {}})

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    source = Accounts(tmp_path / "a")
    source.ensure_admin(PASSWORD)
    source.create_session("admin")
    with pytest.raises(store_cli.CopyMismatch, match="source 2 account records"):
        store_cli.copy_parts([("account records", source, Lossy(tmp_path / "b"))])
