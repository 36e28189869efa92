"""The self-hosted Wan server client against its local protocol server, with the studio really served
on a port so the server fetches the first frame through the signed input URL."""

import socket
import threading
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

import providers.http
import signed_inputs
import task_query
from app import create_app
from tests.conftest import b64, picture, run_pipeline
from tests.fakes.wan_server import API_KEY, Server

MODEL = "Wan2.1-I2V-14B-480P"
PROMPT = "the lighthouse beam sweeps across the waves"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def studio(tmp_path, monkeypatch):
    """make(config=..., **server options) -> (app, fake), the app served on a real local port."""
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    running = []

    def make(config=None, **server_options):
        server_options.setdefault("polls_to_finish", 2)
        fake = Server(**server_options)
        fake.start()
        port = free_port()
        app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "BACKUP_DIR": str(tmp_path / "bk"),
                          "SECRET_KEY": "wan-test-secret", "WAN_SERVER_BASE": fake.base_url,
                          "WAN_SERVER_API_KEY": API_KEY, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                          "HTTP_TIMEOUT_SECONDS": 10, **(config or {})})
        studio_server = make_server("127.0.0.1", port, app, threaded=True)
        thread = threading.Thread(target=studio_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((fake, studio_server, thread))
        return app, fake

    yield make
    for fake, studio_server, thread in running:
        studio_server.shutdown()
        studio_server.server_close()
        thread.join(5)
        fake.stop()


def create(app, status=202, **body):
    body = {"provider": "wan_server", "model_name": MODEL, "prompt": PROMPT, "image": b64(picture(832, 480)), **body}
    resp = app.test_client().post("/generate", json=body)
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()["task_id"] if status == 202 else resp.get_json()["error"]


def stored_input(app, task_id, role="first"):
    task = app.extensions["task_store"].get(task_id)
    entry = next(item for item in task["inputs"] if item["role"] == role)
    return (Path(app.config["DATA_DIR"]) / entry["path"]).read_bytes()


def test_capability_table(studio):
    app, _ = studio()
    (table,) = [p for p in app.test_client().get("/api/capabilities").get_json()["providers"]
                if p["name"] == "wan_server"]
    (model,) = table["models"]
    assert table["configured"] is True and model["id"] == MODEL
    assert (model["image_to_video"], model["text_to_video"], model["tail_combos"]) == (True, False, [])
    advanced = model["advanced"]
    assert advanced["image_size"] == ["auto", "480x832", "832x480"]
    assert (advanced["num_frames"]["min"], advanced["num_frames"]["max"]) == (24, 120)
    assert (advanced["guidance_scale"]["min"], advanced["guidance_scale"]["max"]) == (1.0, 20.0)
    assert (advanced["infer_steps"]["min"], advanced["infer_steps"]["max"]) == (20, 100)


def test_submit_status_result_with_the_first_frame_fetched_through_the_signed_url(studio):
    app, fake = studio()
    task_id = create(app, image_size="832x480", num_frames=97, guidance_scale=6.5, infer_steps=30, seed=7)
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    (body,) = fake.requests_to("/video/submit")
    image_url = body.pop("image_url")
    assert body == {"model": MODEL, "prompt": PROMPT, "image_size": "832x480", "num_frames": 97,
                    "guidance_scale": 6.5, "infer_steps": 30, "seed": 7}
    assert image_url.startswith(app.config["PUBLIC_BASE_URL"] + "/signed-input/")
    ((url, status, data),) = fake.fetches
    assert (url, status) == (image_url, 200) and data == stored_input(app, task_id)
    (out,) = task["outputs"]
    assert out["kind"] == "video" and out["path"].endswith(".mp4") and out["meta"]["seed"] == 7
    assert task["params"]["duration"] == "6"        # 97 frames at 16 fps
    statuses = [body for _, path, body in fake.received if path == "/video/status"]
    assert statuses == [{"requestId": task["provider_task_id"]}] * 3     # InProgress, InProgress, Succeed


def test_defaults_are_sent_when_the_settings_are_left_out(studio):
    app, fake = studio()
    task = run_pipeline(app, create(app), skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    (body,) = fake.requests_to("/video/submit")
    assert (body["image_size"], body["num_frames"], body["guidance_scale"], body["infer_steps"]) == ("auto", 81, 5.0,
                                                                                                      40)
    assert "seed" not in body


def test_cancel_is_a_real_call(studio):
    app, fake = studio()
    task_id = create(app)
    store, registry = app.extensions["task_store"], app.extensions["providers"]
    task_query.dispatch(store, registry)
    assert store.get(task_id)["status"] == "submitted"
    assert app.test_client().post(f"/api/tasks/{task_id}/cancel").status_code == 200
    task_query.poll(store, registry)
    task = store.get(task_id)
    assert task["status"] == "cancelled" and not task["cancel_requested"] and task["cancel_note"] is None
    assert [remote["status"] for remote in fake.tasks.values()] == ["Cancelled"]
    assert fake.requests_to("/video/cancel") == [{"requestId": task["provider_task_id"]}]


def test_at_most_two_in_parallel(studio):
    app, fake = studio()
    ids = [create(app, prompt=f"{PROMPT} {i}") for i in range(3)]
    store = app.extensions["task_store"]
    task_query.dispatch(store, app.extensions["providers"])
    assert [store.get(i)["status"] for i in ids] == ["submitted", "submitted", "queued"]
    for task_id in ids:
        assert run_pipeline(app, task_id, skip_waits=True)["status"] == "succeeded"
    assert fake.max_running == 2


def test_a_failed_run_keeps_the_servers_reason(studio):
    app, fake = studio()
    fake.inject("outcome", "fail")
    task = run_pipeline(app, create(app), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "generation_failed"
    assert "CUDA out of memory" in task["error"]["message"]


def test_wrong_key_fails_with_an_auth_message(studio):
    app, fake = studio(config={"WAN_SERVER_API_KEY": "wrong"})
    task = run_pipeline(app, create(app), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "provider_auth"
    assert "WAN_SERVER_API_KEY" in task["error"]["message"] and fake.submissions == {}


def test_an_unreachable_public_base_url_is_named(studio):
    app, fake = studio(config={"PUBLIC_BASE_URL": f"http://127.0.0.1:{free_port()}"})
    task = run_pipeline(app, create(app), skip_waits=True)
    assert task["status"] == "failed" and "PUBLIC_BASE_URL" in task["error"]["message"]
    assert "image download failed" in task["error"]["message"] and fake.submissions == {}


# ---- the signed input URL ----

def test_the_signed_url_opens_that_input_and_nothing_else(studio, monkeypatch):
    app, _ = studio()
    task_id = create(app)
    anonymous = requests.Session()          # no session, no key: the server's view of the studio
    url = signed_inputs.signed_url(app.config, task_id, "first")
    with anonymous.get(url, timeout=5) as resp:
        assert resp.status_code == 200 and resp.content == stored_input(app, task_id)
        assert resp.headers["Content-Type"] == "image/png" and "no-store" in resp.headers["Cache-Control"]
    token = url.rsplit("/", 1)[1]
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    other_secret = signed_inputs.signed_url({**app.config, "SECRET_KEY": "someone else"}, task_id, "first")
    refused = [f"{app.config['PUBLIC_BASE_URL']}/signed-input/{forged}", other_secret,
               signed_inputs.signed_url(app.config, task_id, "tail"),             # no such input
               signed_inputs.signed_url(app.config, "20261201T000000000Z-abcdef", "first")]
    for bad in refused:
        with anonymous.get(bad, timeout=5) as resp:
            assert resp.status_code == 404, bad
    # Any other path is not this view's: the studio's usual answer to a caller without a login.
    base = app.config["PUBLIC_BASE_URL"]
    for elsewhere in (f"{url}/first.png", f"{base}/signed-input/{token}%2F..%2Foutputs",
                      f"{base}/media/inputs/{task_id}/first.png"):
        with anonymous.get(elsewhere, timeout=5, allow_redirects=False) as resp:
            assert resp.status_code in (302, 401, 404) and resp.content != stored_input(app, task_id), elsewhere
    later = signed_inputs.now() + signed_inputs.LIFETIME_SECONDS + 1
    monkeypatch.setattr(signed_inputs, "now", lambda: later)
    with anonymous.get(url, timeout=5) as resp:
        assert resp.status_code == 404                                          # expired


# ---- what the table refuses before anything is sent ----

@pytest.mark.parametrize("body,field,status", [
    ({"num_frames": 23}, "num_frames", 422), ({"num_frames": 121}, "num_frames", 422),
    ({"guidance_scale": 0.5}, "guidance_scale", 422), ({"guidance_scale": 20.5}, "guidance_scale", 422),
    ({"infer_steps": 19}, "infer_steps", 422), ({"infer_steps": 101}, "infer_steps", 422),
    ({"image_size": "720x1280"}, "image_size", 422), ({"seed": -1}, "seed", 422), ({"seed": 2 ** 31}, "seed", 422),
    ({"seed": 1.5}, "seed", 400), ({"num_frames": "81"}, "num_frames", 400),
    ({"prompt": "too short"}, "prompt", 422), ({"prompt": "x" * 501}, "prompt", 422),
    ({"image_tail": "TAIL"}, "image_tail", 422), ({"image": None}, "image", 400),
])
def test_settings_are_checked_against_the_table(studio, body, field, status):
    app, fake = studio()
    body = {k: b64(picture(832, 480, seed=1)) if v == "TAIL" else v for k, v in body.items()}
    error = create(app, status=status, **body)
    assert error["field"] == field, error
    assert fake.received == [] and len(app.extensions["task_store"]) == 0


@pytest.mark.parametrize("name,value", [("num_frames", 81), ("image_size", "auto"), ("guidance_scale", 5.0),
                                        ("infer_steps", 40), ("seed", 3)])
def test_the_settings_are_refused_for_other_models(studio, name, value):
    app, _ = studio()
    resp = app.test_client().post("/generate", json={"provider": "local", "prompt": "a wave", "image": b64(picture()),
                                                     name: value})
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == name


def test_a_500_to_the_submit_is_never_sent_again(studio):
    app, fake = studio()
    fake.inject("submit", "500")
    task = run_pipeline(app, create(app), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "submit_outcome_unknown"
    assert task["late_check_until"] and fake.submissions == {PROMPT: 1}


def test_a_failed_status_query_is_asked_again(studio):
    app, fake = studio()
    fake.inject("status", "500", "500", "500", "500")     # every try of one query (the helper retries 3 times)
    task = run_pipeline(app, create(app), skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert fake.submissions == {PROMPT: 1}
