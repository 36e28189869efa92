"""Idempotency-Key behaves alike on files and in PostgreSQL (pg_idempotency.py), and the same key
sent to two nodes at once makes one task: two apps over one DATA_DIR (the JSON store's workers),
or two apps with their own DATA_DIR over one database (PostgreSQL nodes)."""

import threading
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

import idempotency
import tasks
from app import create_app
from tests.conftest import b64, picture

pytest_plugins = ["tests.pg_server"]     # pg_server, pg_url: a throwaway PostgreSQL

PICTURE = b64(picture(400, 320, seed=4), "image/png")
PATH = "/api/v1/images/generate"


@pytest.fixture(params=["json", "pg"])
def node(request, tmp_path, monkeypatch):
    """node() -> a new studio app on the shared backing, as another worker or node has."""
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    apps = []

    def build():
        config = {"TESTING": True, "SECRET_KEY": "test", "DATA_DIR": str(tmp_path / "data")}
        if request.param == "pg":
            config.update(DATABASE_URL=request.getfixturevalue("pg_url"), DATA_DIR=str(tmp_path / f"node{len(apps)}"))
        apps.append(create_app(config))
        return apps[-1]
    build.backend = request.param
    yield build
    for app in apps:
        app.extensions["task_store"].close()


def _post(app, key, body=None):
    return app.test_client().post(PATH, json=body or {"image": PICTURE}, headers={"Idempotency-Key": key})


def test_replay_conflict_and_refusal(node):
    first_node, second_node = node(), node()
    first = _post(first_node, "k1")
    assert first.status_code == 202, first.get_json()
    again = _post(second_node, "k1")
    assert (again.status_code, again.get_json()) == (202, first.get_json())
    assert again.headers["Idempotent-Replayed"] == "true"
    other = _post(second_node, "k1", {"image": PICTURE, "prompt": "something else"})
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "idempotency_conflict"
    refused = _post(first_node, "k2", {"image": PICTURE, "n": 99})
    assert refused.status_code == 422
    assert _post(second_node, "k2").status_code == 202          # a refused request left its key free
    assert len(first_node.extensions["task_store"]) == 2


def test_a_key_lasts_24_hours(node, monkeypatch):
    app = node()
    first = _post(app, "k").get_json()
    later = tasks.utcnow() + timedelta(hours=24, seconds=1)
    monkeypatch.setattr(idempotency, "utcnow", lambda: later)
    expired = _post(node(), "k")
    assert expired.status_code == 202 and expired.get_json()["task_id"] != first["task_id"]
    assert _post(app, "k").get_json() == expired.get_json()
    assert len(app.extensions["task_store"]) == 2


def test_the_same_key_sent_to_two_nodes_at_once_makes_one_task(node):
    nodes = [node(), node()]
    for round_ in range(5):
        start, answers = threading.Barrier(2), []

        def send(app, round_=round_, start=start, answers=answers):
            client = app.test_client()
            start.wait()
            answers.append(client.post(PATH, json={"image": PICTURE}, headers={"Idempotency-Key": f"race-{round_}"}))
        threads = [threading.Thread(target=send, args=(app,)) for app in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [a.status_code for a in answers] == [202, 202], [a.get_json() for a in answers]
        assert answers[0].get_json() == answers[1].get_json()
    assert len(nodes[0].extensions["task_store"]) == 5


def test_postgresql_keeps_the_records_in_its_table(tmp_path, monkeypatch, pg_url):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "SECRET_KEY": "test", "DATA_DIR": str(tmp_path / "data"),
                      "DATABASE_URL": pg_url})
    task_id = _post(app, "k").get_json()["task_id"]
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT status, body->>'task_id' FROM idempotency_keys").fetchall()
    assert rows == [(202, task_id)]
    assert not (Path(app.config["DATA_DIR"]) / "idempotency").exists()
    app.extensions["task_store"].close()
