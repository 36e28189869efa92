"""Webhooks: signed deliveries to a real local receiver, retries with backoff, the SSRF rule, the defaults."""

import json
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

import webhooks
from accounts import Accounts
from tasks import Task, parse_iso, utcnow
from tests.conftest import ADMIN_KEY, b64, picture, run_pipeline
from tests.live import LiveStudio
from tests.signin import csrf_of, login, make_user

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_verify():
    """The receiver check shown in the README, run as it is printed there."""
    text = README.read_text()
    section = text[text.index("## Webhooks"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)     # noqa: S102 - our own README's snippet
    return scope["verify"]


class Receiver:
    """A webhook receiver on a loopback port: answers the programmed statuses, keeps what it got."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.got = []
        self.arrived = threading.Event()

        @Request.application
        def receive(request):
            self.got.append({"headers": dict(request.headers), "body": request.get_data(), "path": request.path})
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            self.arrived.set()
            return Response("x" * 1000 if status >= 500 else "thanks", status=status)

        self.server = make_server("127.0.0.1", 0, receive)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?token=abc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.thread.join()


@pytest.fixture
def private_app(tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test",
                       "ALLOW_PRIVATE_URLS": True})


def finished_task(app, client, callback_url=None):
    answer = client.post("/generate", json={"image": b64(picture()), "prompt": "slow zoom"})
    assert answer.status_code == 202
    task_id = answer.get_json()["task_id"]
    if callback_url:
        # As the v1 create requests store it (api_v1.py).
        app.extensions["task_store"].update(task_id, {"callback_url": callback_url})
    return run_pipeline(app, task_id)


def test_delivery_is_signed_retried_after_a_500_and_recorded(private_app):
    client = private_app.test_client()
    made = client.post("/api/v1/webhooks/secret")
    assert made.status_code == 201
    secret = made.get_json()["secret"]
    assert client.post("/api/v1/webhooks/secret").get_json()["secret"] != secret       # rotated
    secret = private_app.extensions["accounts"].user("admin")["webhook_secret"]
    store = private_app.extensions["task_store"]
    with Receiver([500, 200]) as receiver:
        task = finished_task(private_app, client, receiver.url)
        assert task["status"] == "succeeded"
        now = utcnow().replace(microsecond=0)
        webhooks.deliver_due(store, lambda: now)
        hook = store.get(task["id"])["webhook"]
        assert hook["state"] == "pending" and len(receiver.got) == 1
        assert hook["attempts"][0]["status"] == 500 and hook["attempts"][0]["attempt"] == 1
        assert len(hook["attempts"][0]["answer"]) == 200            # never more of the receiver's body
        assert parse_iso(hook["next_at"]) - now == timedelta(seconds=30)
        webhooks.deliver_due(store, lambda: now + timedelta(seconds=10))    # not due yet
        assert len(receiver.got) == 1
        webhooks.deliver_due(store, lambda: now + timedelta(seconds=31))
        webhooks.deliver_due(store, lambda: now + timedelta(hours=2))       # delivered: never again
    assert len(receiver.got) == 2
    record = store.get(task["id"])
    Task.model_validate(record)
    hook = record["webhook"]
    assert hook["state"] == "delivered" and [a["status"] for a in hook["attempts"]] == [500, 200]
    assert hook["attempts"][1]["answer"] == "thanks" and hook["url"].endswith("/hook")     # no query string kept
    verify = readme_verify()
    for got in receiver.got:
        header = got["headers"]["X-Studio-Signature"]
        assert verify(secret, header, got["body"])
        assert not verify(secret, header, got["body"] + b" ")
        assert not verify("whsec_other", header, got["body"])
    body = json.loads(receiver.got[1]["body"])
    assert body["task_id"] == task["id"] and body["status"] == "completed" and body["error"] is None
    assert body["result"]["output_path"] == record["outputs"][0]["url"]
    assert set(body) >= {"task_id", "status", "progress", "result", "error", "created_at", "updated_at"}
    # The details the tasks page shows come with the task.
    assert client.get(f"/api/tasks/{task['id']}").get_json()["webhook"]["state"] == "delivered"


def test_retries_end_a_day_after_the_first_try(private_app):
    client = private_app.test_client()
    client.post("/api/v1/webhooks/secret")
    store = private_app.extensions["task_store"]
    with Receiver([503]) as receiver:
        task = finished_task(private_app, client, receiver.url)
        start = moment = utcnow()
        for _ in range(20):
            webhooks.deliver_due(store, lambda moment=moment: moment)
            hook = store.get(task["id"])["webhook"]
            if hook["state"] != "pending":
                break
            moment = parse_iso(hook["next_at"])
    assert hook["state"] == "failed"
    assert len(receiver.got) == len(hook["attempts"]) == 10
    assert moment - start <= timedelta(days=1)


def test_a_private_address_is_refused_and_recorded(app, client):
    client.post("/api/v1/webhooks/secret")
    store = app.extensions["task_store"]
    with Receiver([200]) as receiver:
        task = finished_task(app, client, receiver.url)
        webhooks.deliver_due(store)
        webhooks.deliver_due(store, lambda: utcnow() + timedelta(hours=1))      # refused: not tried again
    assert receiver.got == []
    hook = store.get(task["id"])["webhook"]
    assert hook["state"] == "refused" and len(hook["attempts"]) == 1
    assert "not a public internet address" in hook["attempts"][0]["error"]
    metadata = finished_task(app, client, "http://169.254.169.254/latest/meta-data")
    webhooks.deliver_due(store)
    assert store.get(metadata["id"])["webhook"]["state"] == "refused"


def test_without_a_secret_nothing_is_sent_until_one_is_made(private_app):
    client = private_app.test_client()
    store = private_app.extensions["task_store"]
    with Receiver([200]) as receiver:
        task = finished_task(private_app, client, receiver.url)
        now = utcnow()
        webhooks.deliver_due(store, lambda: now)
        hook = store.get(task["id"])["webhook"]
        assert receiver.got == [] and hook["state"] == "pending" and "secret" in hook["attempts"][0]["error"]
        client.post("/api/v1/webhooks/secret")
        webhooks.deliver_due(store, lambda: now + timedelta(minutes=1))
    assert len(receiver.got) == 1 and store.get(task["id"])["webhook"]["state"] == "delivered"


def test_the_default_url_is_set_on_the_account_page_and_used_for_tasks_ending_after(private_app):
    make_user(private_app, "alice")
    browser = login(private_app, "alice")
    token = csrf_of(browser)
    store = private_app.extensions["task_store"]
    with Receiver([200]) as receiver:
        before = browser.post("/generate", json={"image": b64(picture()), "prompt": "zoom"},
                              headers={"X-CSRFToken": token}).get_json()["task_id"]
        run_pipeline(private_app, before, real_time=True)     # it ended, for real, before the URL was set
        assert browser.put("/api/account/webhook", json={"url": "ftp://x"},
                           headers={"X-CSRFToken": token}).status_code == 400
        answer = browser.put("/api/account/webhook", json={"url": receiver.url}, headers={"X-CSRFToken": token})
        assert answer.status_code == 200 and answer.get_json()["url"] == receiver.url
        assert browser.post("/api/v1/webhooks/secret", headers={"X-CSRFToken": token}).status_code == 201
        after = browser.post("/generate", json={"image": b64(picture()), "prompt": "zoom"},
                             headers={"X-CSRFToken": token}).get_json()["task_id"]
        run_pipeline(private_app, after)
        webhooks.deliver_due(store)
    assert [json.loads(g["body"])["task_id"] for g in receiver.got] == [after]
    assert store.get(before).get("webhook") is None
    # The account page shows it; keys cannot change it; the secret never leaves in a listing.
    assert receiver.url in browser.get("/account").get_data(as_text=True)
    assert private_app.test_client().put("/api/account/webhook", json={"url": None}).status_code == 403
    users = private_app.test_client().get("/api/users").get_json()["users"]
    assert all("webhook_secret" not in u for u in users)


@pytest.mark.slow
def test_the_running_pipeline_delivers_under_gunicorn(tmp_path):
    """The scheduler's webhook job, in a real studio: a task ends and the receiver hears of it, signed."""
    with Receiver([200]) as receiver, LiveStudio(tmp_path, gunicorn=True, env={"ALLOW_PRIVATE_URLS": "1"}) as studio:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        secret = requests.post(studio.url("/api/v1/webhooks/secret"), headers=headers, timeout=10).json()["secret"]
        Accounts(studio.data_dir).set_webhook("admin", receiver.url)     # what the account page's form does
        answer = requests.post(studio.url("/generate"), json={"image": b64(picture()), "prompt": "pan left"},
                               headers=headers, timeout=30)
        assert answer.status_code == 202, answer.text
        assert receiver.arrived.wait(90), "no webhook arrived"
        got = receiver.got[0]
        assert readme_verify()(secret, got["headers"]["X-Studio-Signature"], got["body"])
        assert json.loads(got["body"])["task_id"] == answer.json()["task_id"]
        assert json.loads(got["body"])["status"] == "completed"
