"""Idempotency-Key on every create: the same answer for the same request, 409 for another, for 24 h,
across app instances over one DATA_DIR (a restart) and across two gunicorn workers."""

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import requests

import idempotency
import tasks
from app import create_app
from tests.conftest import ADMIN_KEY, b64, picture
from tests.live import LiveStudio

PICTURE = b64(picture(400, 320, seed=9), "image/png")
CREATES = [("/generate", {"image": PICTURE}), ("/generate_image", {"image": PICTURE}),
           ("/api/v1/videos/generate", {"image": PICTURE}), ("/api/v1/images/generate", {"image": PICTURE}),
           ("/api/v1/tasks/", {"model": "local-filters", "parameters": {"image": PICTURE}})]


@pytest.mark.parametrize("path, body", CREATES)
def test_the_same_key_gives_the_same_task_and_another_body_a_409(app, client, path, body):
    first = client.post(path, json=body, headers={"Idempotency-Key": "key-1"})
    assert first.status_code == 202, first.get_json()
    again = client.post(path, json=body, headers={"Idempotency-Key": "key-1"})
    assert (again.status_code, again.get_json()) == (202, first.get_json())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(app.extensions["task_store"]) == 1

    other = client.post(path, json={**body, "prompt": "something else"}, headers={"Idempotency-Key": "key-1"})
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "idempotency_conflict"
    assert other.get_json()["error"]["field"] == "Idempotency-Key"
    fresh = client.post(path, json=body, headers={"Idempotency-Key": "key-2"})
    assert fresh.status_code == 202 and fresh.get_json()["task_id"] != first.get_json()["task_id"]
    assert client.post(path, json=body).get_json()["task_id"] not in {first.get_json()["task_id"],
                                                                       fresh.get_json()["task_id"]}
    assert len(app.extensions["task_store"]) == 3


def test_the_key_is_per_path_and_spacing_does_not_matter(app, client):
    body = json.dumps({"image": PICTURE})
    first = client.post("/generate_image", data=body, content_type="application/json",
                        headers={"Idempotency-Key": "k"})
    spaced = client.post("/generate_image", data=body.replace(": ", ":   "), content_type="application/json",
                         headers={"Idempotency-Key": "k"})
    assert spaced.get_json() == first.get_json()
    elsewhere = client.post("/generate", data=body, content_type="application/json", headers={"Idempotency-Key": "k"})
    assert elsewhere.status_code == 409


def test_a_refused_request_is_not_remembered(app, client):
    bad = client.post("/generate_image", json={"image": PICTURE, "n": 99}, headers={"Idempotency-Key": "k"})
    assert bad.status_code == 422
    good = client.post("/generate_image", json={"image": PICTURE}, headers={"Idempotency-Key": "k"})
    assert good.status_code == 202


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "ключ"])
def test_a_malformed_key_is_a_400(app, client, key):
    resp = client.post("/generate_image", json={"image": PICTURE}, headers={"Idempotency-Key": key})
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == "Idempotency-Key"
    assert len(app.extensions["task_store"]) == 0


def test_keys_last_24_hours_and_survive_a_restart(app, client, monkeypatch):
    first = client.post("/generate_image", json={"image": PICTURE}, headers={"Idempotency-Key": "k"}).get_json()
    restarted = create_app({"TESTING": True, "DATA_DIR": app.config["DATA_DIR"], "SECRET_KEY": "test"})
    assert restarted.test_client().post("/generate_image", json={"image": PICTURE},
                                        headers={"Idempotency-Key": "k"}).get_json() == first
    later = tasks.utcnow() + timedelta(hours=24, seconds=1)
    monkeypatch.setattr(idempotency, "utcnow", lambda: later)
    expired = client.post("/generate_image", json={"image": PICTURE}, headers={"Idempotency-Key": "k"})
    assert expired.status_code == 202 and expired.get_json()["task_id"] != first["task_id"]
    # The expired record was replaced by the new one, and nothing else is kept.
    assert len(list((Path(app.config["DATA_DIR"]) / "idempotency").rglob("*.json"))) == 1


def test_the_same_key_sent_at_once_to_two_gunicorn_workers_makes_one_task(tmp_path):
    with LiveStudio(tmp_path, gunicorn=True) as studio:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        for round_ in range(4):
            start = threading.Barrier(2)
            answers = []

            def send(round_=round_, start=start, answers=answers):
                with requests.Session() as session:      # a connection each: the workers race
                    start.wait()
                    answers.append(session.post(studio.url("/api/v1/images/generate"), json={"image": PICTURE},
                                                headers={**headers, "Idempotency-Key": f"race-{round_}"}, timeout=30))
            threads = [threading.Thread(target=send) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
            assert answers[0].json() == answers[1].json()
        listing = requests.get(studio.url("/api/v1/tasks"), headers=headers, timeout=10).json()
        assert listing["total"] == 4


def test_keys_belong_to_their_user(app, client):
    from tests.signin import make_user

    alice = make_user(app, "alice")
    mine = client.post("/generate_image", json={"image": PICTURE}, headers={"Idempotency-Key": "k"}).get_json()
    hers = client.post("/generate_image", json={"image": PICTURE}, headers={**alice, "Idempotency-Key": "k"})
    assert hers.status_code == 202 and hers.get_json()["task_id"] != mine["task_id"]
    assert app.extensions["task_store"].get(hers.get_json()["task_id"])["owner"] != app.extensions[
        "task_store"].get(mine["task_id"])["owner"]


def test_a_retry_with_a_key_is_made_once(app, client):
    from tests.conftest import run_pipeline

    task_id = client.post("/generate_image", json={"image": PICTURE}).get_json()["task_id"]
    run_pipeline(app, task_id)
    first = client.post(f"/api/v1/tasks/{task_id}/retry", headers={"Idempotency-Key": "retry-1"})
    again = client.post(f"/api/v1/tasks/{task_id}/retry", headers={"Idempotency-Key": "retry-1"})
    assert first.status_code == again.status_code == 202 and first.get_json() == again.get_json()
    assert len(app.extensions["task_store"]) == 2
