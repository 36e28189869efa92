"""Tasks that cannot reach their provider say so, and end: the local Kling server with faults."""

from datetime import timedelta

import pytest

import providers.http
import task_query
from app import create_app
from tasks import iso, utcnow
from tests.fakes.kling import Server

AK, SK = "AK" + "a" * 30, "SK" + "s" * 30
LABEL = "Kling (official API)"


@pytest.fixture(scope="module")
def shared_server():
    with Server.running(polls_to_finish=3, access_key=AK, secret_key=SK) as server:
        yield server


@pytest.fixture
def fake(shared_server):
    shared_server.reset()
    return shared_server


def build(tmp_path, monkeypatch, base_url):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t",
                       "KLING_API_BASE": base_url, "KLING_ACCESS_KEY": AK, "KLING_SECRET_KEY": SK,
                       "HTTP_TIMEOUT_SECONDS": 1})


def create(app):
    resp = app.test_client().post("/generate", json={"provider": "kling", "model_name": "kling-v1-6",
                                                     "prompt": "rain on a tin roof", "aspect_ratio": "1:1"})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def shown(app, task_id):
    """The task as the API shows it."""
    resp = app.test_client().get(f"/api/tasks/{task_id}")
    assert resp.status_code == 200
    return resp.get_json()


def no_secrets(text, app):
    return "http" not in text and AK not in text and SK not in text and "5000" not in text


def test_a_provider_that_stops_answering_queries_shows_it_then_times_out_and_a_late_success_is_saved(
        tmp_path, monkeypatch, fake):
    app = build(tmp_path, monkeypatch, fake.base_url)
    store, pipeline = app.extensions["task_store"], app.extensions["providers"]
    task_id = create(app)
    t0 = utcnow()
    task_query.dispatch(store, pipeline, lambda: t0)
    assert store.get(task_id)["status"] == "submitted"
    fake.inject("query", *["error_500"] * 400)          # Kling answers every query with 500

    first = t0 + timedelta(seconds=10)
    task_query.poll(store, pipeline, lambda: first)
    task = shown(app, task_id)
    assert task["status"] == "submitted"
    assert task["problem"]["code"] == "provider_unreachable" and task["problem"]["since"] == iso(first)
    assert task["problem"]["message"] == f"{LABEL} has not answered since {first:%H:%M} UTC; still checking."
    assert no_secrets(task["problem"]["message"], app)

    later = t0 + timedelta(minutes=30)
    task_query.poll(store, pipeline, lambda: later)
    task = shown(app, task_id)
    assert task["status"] == "submitted" and task["problem"]["since"] == iso(first) and task["problems"] == 2

    past_limit = t0 + timedelta(minutes=61)
    task_query.poll(store, pipeline, lambda: past_limit)
    task = shown(app, task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "timeout" and task["late_check_until"]
    assert task["error"]["message"].startswith(f"{LABEL} has not given a usable answer since {first:%H:%M} UTC")
    assert task["problem"] is None and no_secrets(task["error"]["message"], app)

    fake.faults["query"].clear()                        # Kling is back, and the video was made after all
    for step in range(1, 8):
        def clock(s=step):
            return past_limit + timedelta(minutes=6 * s)
        task_query.poll(store, pipeline, clock)
        task_query.download(store, pipeline, clock)
        if store.get(task_id)["status"] == "succeeded":
            break
    task = shown(app, task_id)
    assert task["status"] == "succeeded" and task["recovered_late"] is True and task["problem"] is None


def test_a_kling_submit_answered_500_is_shown_capped_and_ends_with_a_clear_error(tmp_path, monkeypatch, fake):
    app = build(tmp_path, monkeypatch, fake.base_url)
    store, pipeline = app.extensions["task_store"], app.extensions["providers"]
    task_id = create(app)
    fake.inject("submit", *["error_500"] * 100)         # every submit: 500, nothing created
    t0 = utcnow()
    task_query.dispatch(store, pipeline, lambda: t0)
    task = shown(app, task_id)
    assert task["status"] == "queued" and task["problem"]["code"] == "submit_outcome_unknown"
    assert task["problem"]["message"].startswith(f"{LABEL} did not confirm the submit (since {t0:%H:%M} UTC)")
    rounds = 1
    while store.get(task_id)["status"] == "queued" and rounds < 30:
        rounds += 1
        task_query.dispatch(store, pipeline, lambda r=rounds: t0 + timedelta(minutes=6 * r))
        assert store.get(task_id)["status"] != "queued" or store.get(task_id)["problem"]
    task = shown(app, task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "submit_gave_up", task
    assert task["error"]["message"].startswith(f"{LABEL} kept failing since {t0:%H:%M} UTC")
    assert "A try may have reached" in task["error"]["message"] and task["late_check_until"]
    assert len(fake.requests_to("/v1/videos/text2video")) <= task_query.MAX_SUBMIT_PROBLEMS + 1
    assert not fake.submissions and rounds <= task_query.MAX_SUBMIT_PROBLEMS + 2


def test_a_provider_that_cannot_be_reached_keeps_the_task_queued_with_a_message_then_fails_it(
        tmp_path, monkeypatch):
    app = build(tmp_path, monkeypatch, "http://127.0.0.1:9")       # nothing listens: connection refused
    store, pipeline = app.extensions["task_store"], app.extensions["providers"]
    task_id = create(app)
    t0 = utcnow()
    task_query.dispatch(store, pipeline, lambda: t0)
    task = shown(app, task_id)
    assert task["status"] == "queued" and task["problem"]["code"] == "provider_unreachable"
    assert task["problem"]["message"] == f"{LABEL} has not answered since {t0:%H:%M} UTC; still checking."
    for minutes in range(5, 200, 5):
        task_query.dispatch(store, pipeline, lambda m=minutes: t0 + timedelta(minutes=m))
        if store.get(task_id)["status"] != "queued":
            break
    task = shown(app, task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "provider_unreachable"
    assert task["error"]["message"].startswith(f"{LABEL} kept failing since {t0:%H:%M} UTC")
    assert not task.get("late_check_until")            # nothing was ever sent: nothing to look for later
