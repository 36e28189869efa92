"""A waiting task's place in line and its ETA (queue_info.py), in the task JSON of the pages'
API and of v1; and local tasks waiting for a worker stay `queued` instead of `submitted`."""

from datetime import timedelta

import pytest

import queue_info
import task_query
import tasks
from app import create_app
from tests.conftest import b64, picture


def make_app(tmp_path, monkeypatch, **config):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t", **config})


@pytest.fixture
def app(tmp_path, monkeypatch):
    return make_app(tmp_path, monkeypatch, LOCAL_WORKERS=1)


def create(client, **body):
    resp = client.post("/generate", json={"image": b64(picture()), "duration": "5", **body})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def finish(store, task_id, seconds, now):
    """Take a task through its legal moves: submitted `seconds` before `now`, succeeded at `now`."""
    def change(record):
        tasks.submitted(record, f"p-{task_id}", now - timedelta(seconds=seconds))
        tasks.running(record, now)
        tasks.downloading(record, [], now)
        tasks.succeeded(record, [], now)
    store.update(task_id, change)


def test_local_tasks_beyond_the_workers_stay_queued(app):
    client, store, providers = app.test_client(), app.extensions["task_store"], app.extensions["providers"]
    assert providers["local"].max_concurrency == 1      # LOCAL_WORKERS=1: one render at a time
    ids = [create(client) for _ in range(3)]
    task_query.dispatch(store, providers)
    assert [store.get(i)["status"] for i in ids] == ["submitted", "queued", "queued"]
    views = [client.get(f"/api/tasks/{i}").get_json() for i in ids]
    assert [v["queue_position"] for v in views] == [None, 1, 2]


def test_an_explicit_local_cap_still_wins(tmp_path, monkeypatch):
    app = make_app(tmp_path, monkeypatch, LOCAL_WORKERS=1, LOCAL_MAX_CONCURRENCY=3)
    assert app.extensions["providers"]["local"].max_concurrency == 3


def test_eta_is_the_median_of_recent_successes_times_the_rounds_waited(app):
    client, store, providers = app.test_client(), app.extensions["task_store"], app.extensions["providers"]
    now = tasks.utcnow()
    for seconds in (10, 20, 60):
        finish(store, create(client), seconds, now)
    running, first, second = create(client), create(client), create(client)
    task_query.dispatch(store, providers)
    assert store.get(running)["status"] == "submitted"
    info = queue_info.QueueInfo(store, providers)
    later = tasks.parse_iso(store.get(running)["submitted_at"]) + timedelta(seconds=5)
    assert info.fields(store.get(running), later) == {"queue_position": None, "eta_seconds": 15}
    # One slot, held by `running`: the first in line waits one round and runs one; the second, two.
    assert info.fields(store.get(first), later) == {"queue_position": 1, "eta_seconds": 40}
    assert info.fields(store.get(second), later) == {"queue_position": 2, "eta_seconds": 60}
    view = client.get(f"/api/tasks/{second}").get_json()
    assert view["queue_position"] == 2 and view["eta_seconds"] == 60
    listed = {t["id"]: t for t in client.get("/api/tasks").get_json()["tasks"]}
    assert listed[first]["queue_position"] == 1 and listed[first]["eta_seconds"] == 40


def test_no_history_no_eta_and_nothing_for_finished_tasks(app):
    client, store = app.test_client(), app.extensions["task_store"]
    waiting = create(client)
    view = client.get(f"/api/tasks/{waiting}").get_json()
    assert view["queue_position"] == 1 and view["eta_seconds"] is None
    finish(store, waiting, 30, tasks.utcnow())
    view = client.get(f"/api/tasks/{waiting}").get_json()
    assert view["queue_position"] is None and view["eta_seconds"] is None


def test_the_median_is_per_provider_and_model(app):
    client, store = app.test_client(), app.extensions["task_store"]
    now = tasks.utcnow()
    finish(store, create(client), 100, now)
    image = client.post("/generate_image", json={"image": b64(picture()), "n": 1}).get_json()["task_id"]
    finish(store, image, 4, now)
    video = create(client)
    assert client.get(f"/api/tasks/{video}").get_json()["eta_seconds"] == 100


def test_lines_are_per_model_where_the_provider_caps_per_model(tmp_path, monkeypatch):
    app = make_app(tmp_path, monkeypatch, DASHSCOPE_API_KEY="sk-test", DASHSCOPE_API_BASE="http://127.0.0.1:9")
    client = app.test_client()
    frame = b64(picture(640, 400), "image/png")
    body = {"provider": "dashscope", "image": frame, "mode": "480P", "duration": "5", "prompt": "waves"}
    ids = [create(client, model_name=model, **body)
           for model in ("wan2.2-i2v-flash", "wan2.2-i2v-plus", "wan2.2-i2v-flash")]
    assert [client.get(f"/api/tasks/{i}").get_json()["queue_position"] for i in ids] == [1, 1, 2]


def test_v1_shows_the_queue_fields(app):
    client = app.test_client()
    waiting = create(client)
    body = client.get(f"/api/v1/tasks/{waiting}").get_json()
    assert body["queue_position"] == 1 and "eta_seconds" in body


def test_the_lines_follow_the_store_without_a_wait(app):
    """The cache is keyed on the task log: a new task is in line at the next look."""
    client, store, providers = app.test_client(), app.extensions["task_store"], app.extensions["providers"]
    info = queue_info.QueueInfo(store, providers)
    first = create(client)
    assert info.fields(store.get(first), tasks.utcnow())["queue_position"] == 1
    second = create(client)
    assert info.fields(store.get(second), tasks.utcnow())["queue_position"] == 2


def test_a_listing_looks_at_the_queue_once(app, monkeypatch):
    """However many tasks a page shows, the store is asked for its log's length once (a count on PostgreSQL)."""
    client, store = app.test_client(), app.extensions["task_store"]
    ids = [create(client) for _ in range(5)]
    looks = []
    real = store.line_count
    monkeypatch.setattr(store, "line_count", lambda: looks.append(1) or real())
    listed = client.get("/api/tasks").get_json()["tasks"]
    assert sorted(t["queue_position"] for t in listed if t["id"] in ids) == [1, 2, 3, 4, 5]
    assert len(looks) == 1
