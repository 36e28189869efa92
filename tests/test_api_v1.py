"""The /api/v1 surface end to end: v1 creates, v1 tasks, the image-service shape (local engine and
the local Liblib server), listing, cancel, retry, delete and health."""

import pytest
from flask.testing import FlaskClient

import providers.http
from app import create_app
from tests.conftest import b64, picture, run_pipeline
from tests.fakes.liblib import ACCESS_KEY, SECRET_KEY, Server

V1_KEYS = {"task_id", "kind", "provider", "model", "status", "progress", "result", "error", "created_at",
           "updated_at", "retry_of", "callback_url", "queue_position", "eta_seconds", "storyboard_id", "scene_index",
           "scenes"}


def video_body(**fields):
    return {"image": b64(picture(640, 400, seed=3), "image/png"), "prompt": "slow pan", **fields}


def image_body(**fields):
    return {"image": b64(picture(640, 400, seed=4), "image/png"), "model_name": "local-filters", **fields}


def test_v1_video_is_queued_and_completes_with_its_result(app, client):
    resp = client.post("/api/v1/videos/generate", json=video_body(duration=5, callback_url="https://example.com/hook"))
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert set(body) == {"task_id", "status", "estimated_time", "created_at"}
    assert body["status"] == "queued" and body["estimated_time"] == 180     # nothing finished yet: the default
    task = client.get(f"/api/v1/tasks/{body['task_id']}").get_json()
    assert set(task) == V1_KEYS and task["status"] == "queued" and task["result"] is None
    assert task["callback_url"] == "https://example.com/hook"
    assert app.extensions["task_store"].get(body["task_id"])["callback_url"] == "https://example.com/hook"

    run_pipeline(app, body["task_id"])
    task = client.get(f"/api/v1/tasks/{body['task_id']}").get_json()
    assert task["status"] == "completed" and task["progress"] == 100 and task["error"] is None
    result = task["result"]
    assert result["output_path"].startswith("/media/outputs/") and result["thumbnail"].endswith(".jpg")
    assert result["outputs"][0]["kind"] == "video" and result["outputs"][0]["duration"] == pytest.approx(5, abs=0.2)
    with client.get(result["output_path"]) as media:
        assert media.status_code == 200
    # The next estimate is learned from that task.
    again = client.post("/api/v1/videos/generate", json=video_body()).get_json()
    assert 1 <= again["estimated_time"] < 180


def test_v1_statuses_map_the_studios(app, client):
    import tasks
    from api import models

    assert set(models.V1_STATUS) == set(tasks.STATUSES)
    assert {models.V1_STATUS[s] for s in (tasks.SUBMITTED, tasks.RUNNING, tasks.DOWNLOADING)} == {"processing"}
    assert models.V1_STATUS[tasks.SUCCEEDED] == "completed"


def test_width_and_height_choose_the_nearest_offered_ratio(app, client):
    resp = client.post("/api/v1/images/generate", json=image_body(width=1000, height=560))
    assert resp.status_code == 202, resp.get_json()
    assert app.extensions["task_store"].get(resp.get_json()["task_id"])["params"]["aspect_ratio"] == "16:9"
    resp = client.post("/api/v1/images/generate", json=image_body(width=700, height=1000))
    assert app.extensions["task_store"].get(resp.get_json()["task_id"])["params"]["aspect_ratio"] == "2:3"


@pytest.mark.parametrize("fields, status, code, field", [
    ({"width": 800}, 400, "invalid_field", "width"),
    ({"width": 800, "height": 600, "aspect_ratio": "1:1"}, 400, "invalid_field", "width"),
    ({"seed": 7}, 422, "unsupported_value", "seed"),                  # local-filters takes no seed
    ({"callback_url": "ftp://example.com/x"}, 400, "invalid_field", "callback_url"),
    ({"callback_url": "https://example.com/" + "x" * 2000}, 422, "invalid_field", "callback_url"),
    ({"scenes": [{"prompt": "a"}]}, 400, "unknown_field", "scenes"),     # storyboards are not a v1 create
])
def test_bad_v1_image_requests_are_refused_and_leave_nothing(app, client, fields, status, code, field):
    resp = client.post("/api/v1/images/generate", json=image_body(**fields))
    assert resp.status_code == status, resp.get_json()
    assert resp.get_json()["error"]["code"] == code and resp.get_json()["error"]["field"] == field
    assert len(app.extensions["task_store"]) == 0


def test_video_with_a_picture_takes_its_shape_not_a_size(app, client):
    resp = client.post("/api/v1/videos/generate", json=video_body(width=1280, height=720, video_config={}))
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == "video_config"
    resp = client.post("/api/v1/videos/generate", json=video_body(width=1280, height=720))
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == "width"


def test_list_cancel_retry_delete(app, client):
    store = app.extensions["task_store"]
    first = client.post("/api/v1/images/generate", json=image_body()).get_json()["task_id"]
    run_pipeline(app, first)
    second = client.post("/api/v1/images/generate", json=image_body(n=2)).get_json()["task_id"]

    listing = client.get("/api/v1/tasks?status=completed").get_json()
    assert [t["task_id"] for t in listing["tasks"]] == [first] and listing["total"] == 1
    assert [t["task_id"] for t in client.get("/api/v1/tasks?status=queued,processing").get_json()["tasks"]] == [second]
    assert client.get("/api/v1/tasks?status=succeeded").status_code == 400     # studio words are not v1's
    assert client.get("/api/v1/tasks?limit=1&offset=1").get_json()["tasks"][0]["task_id"] == first

    cancelled = client.post(f"/api/v1/tasks/{second}/cancel")
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert client.post(f"/api/v1/tasks/{second}/cancel").status_code == 409

    retry = client.post(f"/api/v1/tasks/{second}/retry")
    assert retry.status_code == 202 and retry.get_json()["status"] == "queued"
    assert store.get(retry.get_json()["task_id"])["retry_of"] == second

    assert client.delete(f"/api/v1/tasks/{first}").status_code == 204
    assert client.get(f"/api/v1/tasks/{first}").status_code == 404
    assert client.delete(f"/api/v1/tasks/{retry.get_json()['task_id']}").status_code == 409     # still queued


def test_health_answers_without_credentials(app):
    anonymous = FlaskClient(app, app.response_class)
    resp = anonymous.get("/api/v1/health")
    # The test app runs no pipeline, so there is no heartbeat: not ready, said plainly.
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "unavailable" and body["checks"]["store"] == "ok"
    assert anonymous.get("/api/v1/tasks").status_code == 401


# ---- the image-service shape ------------------------------------------------------------------

@pytest.fixture
def liblib_app(tmp_path, monkeypatch):
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    fake = Server(polls_to_finish=2)
    fake.start()
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t",
                      "LIBLIB_API_BASE": fake.base_url, "LIBLIB_ACCESS_KEY": ACCESS_KEY,
                      "LIBLIB_SECRET_KEY": SECRET_KEY,
                      "DASHSCOPE_API_KEY": "sk-not-called", "HTTP_TIMEOUT_SECONDS": 2})
    yield app
    fake.stop()


def test_image_service_star3_task_runs_against_the_local_liblib_server(liblib_app):
    client = liblib_app.test_client()
    resp = client.post("/api/v1/tasks/", json={"model": "star-3-alpha-t2i", "provider": "liblib", "is_async": True,
                                               "parameters": {"prompt": "a red boat", "aspectRatio": "portrait",
                                                              "imgCount": 2}})
    assert resp.status_code == 202, resp.get_json()
    created = resp.get_json()
    assert created["success"] is True and created["status"] == "queued"
    task_id = created["task_id"]
    record = liblib_app.extensions["task_store"].get(task_id)
    assert (record["provider"], record["model"]) == ("liblib", "star-3-alpha-t2i")
    assert record["params"]["aspect_ratio"] == "3:4" and record["params"]["n"] == 2

    status = client.get(f"/api/v1/tasks/{task_id}/status").get_json()
    assert status["success"] is True and status["status"] == "queued"
    pending = client.get(f"/api/v1/tasks/{task_id}/result").get_json()
    assert pending["success"] is False and pending["results"]["images"] == []

    run_pipeline(liblib_app, task_id, skip_waits=True)
    assert client.get(f"/api/v1/tasks/{task_id}/status").get_json()["status"] == "completed"
    result = client.get(f"/api/v1/tasks/{task_id}/result").get_json()
    assert result["success"] is True
    images = result["results"]["images"]
    assert len(images) == 2 and {image["seed"] for image in images} == {1000, 1001}
    for image in images:
        assert image["original_url"].startswith("http://127.0.0.1") and "?" not in image["original_url"]
        assert "Signature" not in image["original_url"]
        assert image["local_url"].startswith("/media/outputs/")
        with client.get(image["local_url"]) as media:
            assert media.status_code == 200
        assert image["size"] == f"{image['width']}*{image['height']}"


def test_image_service_maps_wanx_size_and_finds_the_provider(liblib_app):
    client = liblib_app.test_client()
    resp = client.post("/api/v1/tasks/", json={"model": "wanx2.1-t2i-turbo",
                                               "parameters": {"prompt": "a lighthouse", "size": "1024*1024",
                                                              "n": 1}})
    assert resp.status_code == 202, resp.get_json()
    record = liblib_app.extensions["task_store"].get(resp.get_json()["task_id"])
    assert (record["provider"], record["model"], record["params"]["aspect_ratio"]) == (
        "dashscope", "wanx2.1-t2i-turbo", "1:1")


@pytest.mark.parametrize("body, status, code, field", [
    ({"model": "dall-e-3", "parameters": {"prompt": "x"}}, 422, "unknown_model", "model"),
    ({"model": "wanx2.1-t2i-turbo", "provider": "liblib", "parameters": {"prompt": "x"}}, 422, "unknown_model",
     "model"),
    ({"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x", "imgCount": 5}}, 422, "unsupported_value",
     "parameters.imgCount"),
    ({"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x", "n": 1, "imgCount": 1}}, 400, "invalid_field",
     "parameters.imgCount"),
    ({"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x", "size": "1024x"}}, 400, "invalid_field",
     "parameters.size"),
    ({"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x", "steps": 30}}, 400, "unknown_field",
     "parameters.steps"),
    ({"model": "wanx2.1-t2i-turbo", "is_async": False, "parameters": {"prompt": "x"}}, 422, "invalid_field",
     "is_async"),
    ({"model": "star-3-alpha-t2i", "parameters": {"aspectRatio": "wide", "prompt": "x"}}, 422, "unsupported_value",
     "parameters.aspectRatio"),
])
def test_bad_image_service_requests_name_the_services_field(liblib_app, body, status, code, field):
    resp = liblib_app.test_client().post("/api/v1/tasks/", json=body)
    assert resp.status_code == status, resp.get_json()
    error = resp.get_json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert len(liblib_app.extensions["task_store"]) == 0


def test_v1_keeps_to_the_users_limits_and_tasks(app, client):
    from tests.signin import make_user

    alice = make_user(app, "alice", images_per_day=2)
    mine = client.post("/api/v1/images/generate", json=image_body()).get_json()["task_id"]
    hers = client.post("/api/v1/images/generate", json=image_body(n=2), headers=alice)
    assert hers.status_code == 202
    over = client.post("/api/v1/images/generate", json=image_body(), headers=alice)
    assert over.status_code == 429 and over.get_json()["error"]["code"] == "quota_exceeded"
    assert client.get(f"/api/v1/tasks/{mine}", headers=alice).status_code == 404
    assert client.get(f"/api/v1/tasks/{mine}/result", headers=alice).status_code == 404
    assert [t["task_id"] for t in client.get("/api/v1/tasks", headers=alice).get_json()["tasks"]] == [
        hers.get_json()["task_id"]]
    reader = make_user(app, "reader", scopes=("read",))
    refused = client.post("/api/v1/tasks/", json={"model": "local-filters", "parameters": {}}, headers=reader)
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "insufficient_scope"
