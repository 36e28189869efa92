"""A batch against the local Kling server: one shot fails at the provider, retry-failed re-runs it alone."""

import base64

import pytest

import providers.http
from app import create_app
from tests.conftest import run_pipeline
from tests.fakes.kling import Server
from tests.test_batches import shot_zip, upload

# Kling keys are 32 characters; shorter HMAC keys make PyJWT warn (and warnings are errors here).
AK, SK = "AK" + "a" * 30, "SK" + "s" * 30


@pytest.fixture
def fake():
    with Server.running(polls_to_finish=2, access_key=AK, secret_key=SK) as server:
        yield server


@pytest.fixture
def app(tmp_path, monkeypatch, fake):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t",
                      "KLING_API_BASE": fake.base_url, "KLING_ACCESS_KEY": AK, "KLING_SECRET_KEY": SK,
                      "HTTP_TIMEOUT_SECONDS": 1})
    yield app
    app.extensions["providers"]["kling"].close()


def finish(app, client, batch_id):
    for item in client.get(f"/api/v1/batches/{batch_id}").get_json()["items"]:
        run_pipeline(app, item["task_id"], skip_waits=True)
    return client.get(f"/api/v1/batches/{batch_id}").get_json()


def test_one_shot_failing_at_the_provider_is_retried_alone(app, fake):
    client = app.test_client()
    fake.inject("result", "failed")         # the first task to finish is refused by Kling's moderation
    made = upload(client, shot_zip(), provider="kling", model_name="kling-v1-6", mode="std", duration="5")
    assert made.status_code == 202, made.get_json()
    batch_id = made.get_json()["batch_id"]
    batch = finish(app, client, batch_id)
    assert batch["counts"]["completed"] == 2 and batch["counts"]["failed"] == 1
    assert batch["status"] == "completed_with_errors" and batch["progress"] == 100
    assert batch["cost"] == {"units": 2}
    failed = next(i for i in batch["items"] if i["status"] == "failed")
    assert failed["error"]["code"]

    store = app.extensions["task_store"]
    before = len(store)
    retried = client.post(f"/api/v1/batches/{batch_id}/retry-failed")
    assert retried.status_code == 202 and retried.get_json()["created"] == 1
    assert len(store) == before + 1
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    item = next(i for i in batch["items"] if i["name"] == failed["name"])
    assert item["task_id"] != failed["task_id"] and store.get(item["task_id"])["retry_of"] == failed["task_id"]
    assert store.get(item["task_id"])["batch_id"] == batch_id
    assert finish(app, client, batch_id)["status"] == "completed"
    # Nothing left to retry: no new task.
    assert client.post(f"/api/v1/batches/{batch_id}/retry-failed").get_json()["created"] == 0
    assert len(store) == before + 1


def test_json_items_may_give_their_pictures_as_urls(tmp_path, monkeypatch, fake):
    from tests.test_batches import png

    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d"), "SECRET_KEY": "t", "ALLOW_PRIVATE_URLS": True})
    client = app.test_client()
    url, _ = fake.publish(png(3), "image/png", ".png")
    resp = client.post("/api/v1/batches", json={"name": "by url", "provider": "local", "items": [
        {"name": "fetched", "image": url, "prompt": "zoom in"},
        {"name": "gone", "image": fake.base_url + "/files/nothing.png", "prompt": "zoom in"}]})
    assert resp.status_code == 202 and resp.get_json()["created"] == 1
    items = client.get(f"/api/v1/batches/{resp.get_json()['batch_id']}").get_json()["items"]
    assert items[0]["status"] == "queued" and items[1]["status"] == "refused"
    assert items[1]["error"]["field"] == "items.1.image"
    # The same picture again, by Base64 this time: the same item, so no new task.
    again = client.post("/api/v1/batches", json={"name": "by url", "provider": "local", "items": [
        {"name": "fetched", "image": base64.b64encode(png(3)).decode(), "prompt": "zoom in"}]})
    assert again.get_json()["created"] == 0
