"""The Wan I2V service protocol, served: a script's submit -> status -> result, cancel, bad input (§9.5)."""

import re
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient

from tests.conftest import ADMIN_KEY, picture, run_pipeline
from tests.servers import picture_app, serving
from wan_protocol import request_id, task_id_of

KEY = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def picture_server():
    """The first frame at a URL, as the service's callers give it."""
    with serving(picture_app({"/first.png": (picture(640, 400), "image/png")})) as server:
        yield server.base_url


@pytest.fixture
def wan_app(tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test",
                       "ALLOW_PRIVATE_URLS": True})


def script(app):
    """A client that sends only what a script for the service sends: JSON and a Bearer key."""
    client = FlaskClient(app, app.response_class, use_cookies=False)
    client.environ_base["HTTP_AUTHORIZATION"] = KEY["Authorization"]
    return client


def body(picture_server, **changes):
    return {"model": "Wan2.1-I2V-14B-480P", "prompt": "a slow zoom over the red square",
            "image_url": f"{picture_server}/first.png", "image_size": "auto", "num_frames": 81,
            "guidance_scale": 5.0, "infer_steps": 30, "seed": 123456, **changes}


def test_submit_status_result_end_to_end_with_the_local_engine(wan_app, picture_server):
    client = script(wan_app)
    submitted = client.post("/video/submit", json=body(picture_server))
    assert submitted.status_code == 202, submitted.get_json()
    rid = submitted.get_json()["requestId"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and set(submitted.get_json()) == {"requestId"}
    assert client.post("/video/status", json={"requestId": rid}).get_json() == {"status": "InQueue"}

    task = run_pipeline(wan_app, task_id_of(rid))
    assert task["status"] == "succeeded" and task["provider"] == "local" and task["model"] == "local-motion"
    assert task["params"]["duration"] == "5" and task["params"]["wan"]["infer_steps"] == 30
    answer = client.post("/video/status", json={"requestId": rid})
    assert answer.status_code == 200
    status = answer.get_json()
    assert status["status"] == "Succeed" and status["results"]["seed"] == 123456
    assert isinstance(status["results"]["timings"]["inference"], int)
    url = status["results"]["videos"][0]["url"]
    assert url.startswith("http://localhost/media/outputs/") and url.endswith(".mp4")   # absolute, the studio's own
    with client.get(urlsplit(url).path) as video:
        assert video.status_code == 200 and video.mimetype == "video/mp4" and len(video.data) > 1000


def test_the_result_url_uses_public_base_url_when_set(wan_app, picture_server):
    wan_app.config["PUBLIC_BASE_URL"] = "https://studio.example.com/"
    client = script(wan_app)
    rid = client.post("/video/submit", json=body(picture_server)).get_json()["requestId"]
    run_pipeline(wan_app, task_id_of(rid))
    url = client.post("/video/status", json={"requestId": rid}).get_json()["results"]["videos"][0]["url"]
    assert url.startswith("https://studio.example.com/media/outputs/")


def test_cancel(wan_app, picture_server):
    client = script(wan_app)
    rid = client.post("/video/submit", json=body(picture_server)).get_json()["requestId"]
    assert client.post("/video/cancel", json={"requestId": rid}).get_json() == {"status": "Succeed"}
    assert client.post("/video/status", json={"requestId": rid}).get_json()["status"] == "Cancelled"
    assert client.post("/video/cancel", json={"requestId": rid}).status_code == 200       # already cancelled
    done = client.post("/video/submit", json=body(picture_server)).get_json()["requestId"]
    run_pipeline(wan_app, task_id_of(done))
    refused = client.post("/video/cancel", json={"requestId": done})
    assert refused.status_code == 409 and "detail" in refused.get_json()


def test_a_failed_task_says_why(wan_app, picture_server):
    client = script(wan_app)
    rid = client.post("/video/submit", json=body(picture_server)).get_json()["requestId"]
    wan_app.extensions["task_store"].update(task_id_of(rid), {"model": "gone"})      # the engine refuses it
    run_pipeline(wan_app, task_id_of(rid))
    answer = client.post("/video/status", json={"requestId": rid}).get_json()
    assert answer["status"] == "Failed" and answer["reason"]


@pytest.mark.parametrize("changes, status, field", [
    ({"prompt": None}, 400, "prompt"),
    ({"prompt": "too short"}, 422, "prompt"),
    ({"prompt": "x" * 501}, 422, "prompt"),
    ({"image_url": None}, 400, "image_url"),
    ({"image_url": "ftp://example.com/a.png"}, 400, "image_url"),
    ({"image_url": "aGVsbG8gd29ybGQ="}, 400, "image_url"),          # Base64 is not this protocol's
    ({"image_url": "{server}/missing.png"}, 400, "image_url"),       # the picture could not be fetched
    ({"image_size": "1024x1024"}, 422, "image_size"),
    ({"num_frames": 23}, 422, "num_frames"),
    ({"num_frames": 121}, 422, "num_frames"),
    ({"num_frames": 81.0}, 400, "num_frames"),
    ({"guidance_scale": 0.5}, 422, "guidance_scale"),
    ({"guidance_scale": "5"}, 400, "guidance_scale"),
    ({"infer_steps": 101}, 422, "infer_steps"),
    ({"seed": -1}, 422, "seed"),
    ({"seed": 2147483648}, 422, "seed"),
    ({"steps": 30}, 400, "steps"),
])
def test_bad_input_is_refused_with_the_field_and_nothing_is_created(wan_app, picture_server, changes, status, field):
    sent = body(picture_server, **{k: v.format(server=picture_server) if isinstance(v, str) else v
                                   for k, v in changes.items()})
    sent = {k: v for k, v in sent.items() if v is not None}
    answer = script(wan_app).post("/video/submit", json=sent)
    assert answer.status_code == status, answer.get_json()
    error = answer.get_json()
    assert error["error"]["field"] == field and error["detail"] == error["error"]["message"]
    assert len(wan_app.extensions["task_store"]) == 0


def test_a_private_picture_address_is_refused(app, picture_server):
    answer = script(app).post("/video/submit", json=body(picture_server))
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "unsafe_url"
    assert len(app.extensions["task_store"]) == 0


def test_auth_and_unknown_requests(wan_app, picture_server):
    anonymous = FlaskClient(wan_app, wan_app.response_class, use_cookies=False)
    for path, sent in (("/video/submit", body(picture_server)), ("/video/status", {"requestId": "0" * 32})):
        missing = anonymous.post(path, json=sent)
        assert missing.status_code == 401 and missing.get_json()["detail"]
        wrong = anonymous.post(path, json=sent, headers={"Authorization": "Bearer sk-studio-wrong"})
        assert wrong.status_code == 401
    client = script(wan_app)
    for rid in ("0" * 32, "f" * 32, "not-an-id"):
        unknown = client.post("/video/status", json={"requestId": rid})
        assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "not_found"
    assert client.post("/video/cancel", json={"requestId": "0" * 32}).status_code == 404
    assert client.post("/video/status", json={}).status_code == 400


def test_request_ids_round_trip():
    task_id = "20261122T101500123Z-3f9c2a"
    assert request_id(task_id) == "000000000202611221015001233f9c2a"
    assert task_id_of(request_id(task_id)) == task_id
