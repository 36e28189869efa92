"""The Kling client against the local Kling server: full pipelines, request bodies, faults, auth."""

import base64
import json
import time
from datetime import timedelta

import jwt
import pytest
import requests

import media
import providers.http
import task_query
from app import create_app
from errors import ProviderUnavailable, SubmitOutcomeUnknown
from providers.capabilities import model_from_dict
from providers.kling import MODELS, camera_control
from tasks import parse_iso, utcnow
from tests.conftest import b64, picture, run_pipeline
from tests.fakes import kling as fake_kling
from tests.fakes.kling import Server

# Kling keys are 32 characters; shorter HMAC keys make PyJWT warn (and warnings are errors here).
AK, SK = "AK" + "a" * 30, "SK" + "s" * 30

# ---- fixtures and helpers


@pytest.fixture(scope="module")
def shared_server():
    with Server.running(polls_to_finish=3, access_key=AK, secret_key=SK) as server:
        yield server


@pytest.fixture
def fake(shared_server):
    shared_server.reset()
    return shared_server


def build_app(tmp_path, monkeypatch, fake, **config):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t",
                      "KLING_API_BASE": fake.base_url, "KLING_ACCESS_KEY": AK, "KLING_SECRET_KEY": SK,
                      "HTTP_TIMEOUT_SECONDS": 1, **config})
    return app


@pytest.fixture
def app(tmp_path, monkeypatch, fake):
    return build_app(tmp_path, monkeypatch, fake)


@pytest.fixture
def client(app):
    return app.test_client()


def create(client, kind="video", **body):
    resp = client.post("/generate" if kind == "video" else "/generate_image", json={"provider": "kling", **body})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def input_b64(app, task, role):
    """Base64 of the stored input file with this role: what Kling must have received."""
    entry = next(item for item in task["inputs"] if item["role"] == role)
    with open(f"{app.config['DATA_DIR']}/{entry['path']}", "rb") as f:
        return base64.b64encode(f.read()).decode()


def saved_files_ok(app, task, kind):
    for out in task["outputs"]:
        facts = media.probe_media(f"{app.config['DATA_DIR']}/{out['path']}")
        assert facts["sha256"] == out["sha256"] and facts["bytes"] > 0
        assert out["remote_url"].startswith("http") and out["remote_expires_at"].endswith("Z")
        if kind == "video":
            assert facts["duration"] > 0 and facts["width"] == 320
        else:
            assert (facts["width"], facts["height"]) == (640, 360)


def only_submit(fake, path):
    (body,) = fake.requests_to(path)
    return body


# ---- the JWT


def test_token_is_cached_then_reminted_near_expiry(app):
    provider = app.extensions["providers"]["kling"]
    now = time.time()
    provider.clock = lambda: now
    first = provider.auth_token()
    assert provider.auth_token() == first                       # reused, not minted per call
    assert jwt.get_unverified_header(first) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(first, SK, algorithms=["HS256"], options={"verify_nbf": False})
    assert claims == {"iss": AK, "exp": int(now) + 1800, "nbf": int(now) - 5}
    provider.clock = lambda: now + 1499
    assert provider.auth_token() == first                       # still > 5 min left
    provider.clock = lambda: now + 1501
    second = provider.auth_token()
    assert second != first
    assert jwt.decode(second, SK, algorithms=["HS256"], options={"verify_nbf": False})["exp"] == int(now) + 1501 + 1800


def test_configured_only_with_both_keys(tmp_path, monkeypatch, fake):
    app = build_app(tmp_path, monkeypatch, fake, KLING_SECRET_KEY="")
    provider = app.extensions["providers"]["kling"]
    assert not provider.configured() and not provider.capabilities()["configured"]
    resp = app.test_client().post("/generate", json={"provider": "kling", "prompt": "x", "model_name": "kling-v1-6"})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "provider_not_configured"


# ---- full pipelines, bodies checked field by field


def test_image_to_video_with_tail_frame(app, client, fake):
    task_id = create(client, model_name="kling-v1-6", mode="pro", duration="5", cfg_scale=0.7,
                     image=b64(picture(seed=1)), image_tail=b64(picture(seed=2), "image/jpeg"),
                     prompt="a boat drifts", negative_prompt="blur")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    body = only_submit(fake, "/v1/videos/image2video")
    assert body == {"model_name": "kling-v1-6", "mode": "pro", "duration": "5", "cfg_scale": 0.7,
                    "prompt": "a boat drifts", "negative_prompt": "blur", "external_task_id": task_id,
                    "image": input_b64(app, task, "first"), "image_tail": input_b64(app, task, "tail")}
    assert not body["image"].startswith("data:") and not body["image_tail"].startswith("data:")
    assert fake.submissions[task_id] == 1
    gets = [path for method, path, _ in fake.received if method == "GET"]
    assert gets and all(path == f"/v1/videos/image2video/{task['provider_task_id']}" for path in gets)
    assert task["provider_status"] == "succeed" and task["cost"] == {"units": "1"}
    (out,) = task["outputs"]
    saved_files_ok(app, task, "video")
    assert out["meta"]["duration"] == "5"
    kept = parse_iso(out["remote_expires_at"]) - utcnow()        # Kling keeps results 30 days
    assert timedelta(days=29, hours=23) < kept <= timedelta(days=30)


def test_text_to_video_on_v2_master_sends_no_mode_and_no_cfg_scale(app, client, fake):
    task_id = create(client, model_name="kling-v2-master", prompt="city at night", duration="10",
                     aspect_ratio="9:16", cfg_scale=0.9)
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    body = only_submit(fake, "/v1/videos/text2video")
    assert body == {"model_name": "kling-v2-master", "prompt": "city at night", "duration": "10",
                    "aspect_ratio": "9:16", "external_task_id": task_id}
    assert fake.requests_to("/v1/videos/text2video/", "GET")
    assert task["cost"] == {"units": "2"}
    saved_files_ok(app, task, "video")


def test_v2_6_pro_with_sound(app, client, fake):
    task_id = create(client, model_name="kling-v2-6", mode="pro", duration="10", sound=True,
                     image=b64(picture()), prompt="a drummer on a rooftop")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    body = only_submit(fake, "/v1/videos/image2video")
    assert body == {"model_name": "kling-v2-6", "mode": "pro", "duration": "10", "sound": "on",
                    "prompt": "a drummer on a rooftop", "external_task_id": task_id,
                    "image": input_b64(app, task, "first")}
    saved_files_ok(app, task, "video")


def test_v2_6_tail_frame_is_sent_silent(app, client, fake):
    task_id = create(client, model_name="kling-v2-6", mode="pro", duration="5", image=b64(picture(seed=1)),
                     image_tail=b64(picture(seed=2)), prompt="a door opens")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    body = only_submit(fake, "/v1/videos/image2video")
    assert body["sound"] == "off" and "image_tail" in body and task["params"]["sound"] is False


def test_v3_text_to_video_for_seven_seconds(app, client, fake):
    task_id = create(client, model_name="kling-v3", mode="std", duration="7", prompt="rain on a tin roof",
                     sound=True, aspect_ratio="1:1")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    body = only_submit(fake, "/v1/videos/text2video")
    assert body == {"model_name": "kling-v3", "mode": "std", "duration": "7", "sound": "on",
                    "prompt": "rain on a tin roof", "aspect_ratio": "1:1", "external_task_id": task_id}


def test_v2_5_turbo_is_pro_only_and_says_why():
    (turbo,) = [m for m in MODELS if m["id"] == "kling-v2-5-turbo"]
    assert turbo["modes"] == ["pro"] and {c["mode"] for c in turbo["combos"]} == {"pro"}
    assert "pro only" in turbo["note"]
    # Left out, the new options read as their documented defaults.
    silent = model_from_dict(next(m for m in MODELS if m["id"] == "kling-v1-6"))
    assert silent.option("sound_combos") == [] and silent.option("seed") is False and silent.option("note") is None


def test_server_refuses_what_the_map_does_not_offer(fake):
    headers = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
    refusals = [({"model_name": "kling-v2-5-turbo", "mode": "std"}, "std"),
                ({"model_name": "kling-v1-6", "sound": "off"}, "sound"),
                ({"model_name": "kling-v2-6", "mode": "std", "sound": "on"}, "sound"),
                ({"model_name": "kling-v2-6", "mode": "pro", "sound": "on", "image_tail": good_i2v()["image"]},
                 "image_tail"),
                ({"model_name": "kling-v3", "duration": "16"}, "duration"),
                ({"model_name": "kling-v3", "cfg_scale": 0.5}, "cfg_scale")]
    for changes, word in refusals:
        resp = requests.post(fake.base_url + "/v1/videos/image2video", headers=headers,
                             json=good_i2v(**changes), timeout=5)
        assert (resp.status_code, resp.json()["code"]) == (400, 1201), changes
        assert word in resp.json()["message"], (changes, resp.json()["message"])
    assert fake.tasks == {}


def test_cfg_scale_never_reaches_a_v2_model(app):
    """Even a task recorded with a cfg_scale (an old record, a retry) does not send it to v2.x."""
    provider = app.extensions["providers"]["kling"]
    task = {"id": "t1", "kind": "video", "model": "kling-v2-5-turbo", "inputs": [],
            "params": {"prompt": "x", "mode": "pro", "duration": "10", "cfg_scale": 0.5, "aspect_ratio": "1:1"}}
    path, body = provider.request_body(task)
    assert path == "/v1/videos/text2video" and "cfg_scale" not in body
    assert body == {"model_name": "kling-v2-5-turbo", "prompt": "x", "mode": "pro", "duration": "10",
                    "aspect_ratio": "1:1", "external_task_id": "t1"}
    task["model"] = "kling-v1-6"
    assert provider.request_body(task)[1]["cfg_scale"] == 0.5


def test_image_generation_n2_with_subject_reference(app, client, fake):
    task_id = create(client, "image", model_name="kling-v1-5", prompt="the same cat, as a knight", n=2,
                     aspect_ratio="1:1", image=b64(picture(seed=3), "image/png"), image_reference="subject",
                     image_fidelity=0.4, human_fidelity=0.6)
    provider = app.extensions["providers"]["kling"]
    assert provider.slots(app.extensions["task_store"].get(task_id)) == 2
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    body = only_submit(fake, "/v1/images/generations")
    assert body == {"model_name": "kling-v1-5", "prompt": "the same cat, as a knight", "n": 2,
                    "aspect_ratio": "1:1", "image": input_b64(app, task, "reference"),
                    "image_reference": "subject", "image_fidelity": 0.4, "human_fidelity": 0.6,
                    "external_task_id": task_id}
    assert len(task["outputs"]) == 2 and task["cost"] == {"units": "2"}
    saved_files_ok(app, task, "image")
    assert task["outputs"][0]["sha256"] != task["outputs"][1]["sha256"]


def test_text_to_image_sends_negative_prompt_and_defaults(app, client, fake):
    task_id = create(client, "image", model_name="kling-v2-1", prompt="a lighthouse", negative_prompt="people")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert only_submit(fake, "/v1/images/generations") == {
        "model_name": "kling-v2-1", "prompt": "a lighthouse", "negative_prompt": "people", "n": 1,
        "aspect_ratio": "16:9", "external_task_id": task_id}


def test_v1_5_reference_without_type_is_sent_as_subject(app, client, fake):
    task_id = create(client, "image", model_name="kling-v1-5", prompt="portrait", image=b64(picture()))
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    body = only_submit(fake, "/v1/images/generations")
    assert body["image_reference"] == "subject" and "human_fidelity" not in body and body["image_fidelity"] == 0.5


@pytest.mark.parametrize(("request_body", "path", "expected"), [
    ({"model_name": "kling-v1", "mode": "std", "duration": "5", "camera": "zoom_in"}, "text2video",
     {"type": "simple", "config": {"horizontal": 0, "vertical": 0, "pan": 0, "tilt": 0, "roll": 0, "zoom": -5}}),
    ({"model_name": "kling-v1", "mode": "std", "duration": "5", "camera": "down_back"}, "text2video",
     {"type": "down_back"}),
    ({"model_name": "kling-v1-5", "mode": "pro", "duration": "5", "camera": "pan_left", "image": True}, "image2video",
     {"type": "simple", "config": {"horizontal": 0, "vertical": 0, "pan": -5, "tilt": 0, "roll": 0, "zoom": 0}}),
])
def test_camera_moves_where_the_matrix_allows_them(app, client, fake, request_body, path, expected):
    if request_body.pop("image", None):
        request_body["image"] = b64(picture())
    task_id = create(client, prompt="a road", **request_body)
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    body = only_submit(fake, f"/v1/videos/{path}")
    assert body["camera_control"] == expected and body["mode"] == request_body["mode"]


def test_simple_camera_mapping_has_exactly_one_axis():
    directions = {"zoom_in": ("zoom", -5), "zoom_out": ("zoom", 5), "pan_left": ("pan", -5),
                  "pan_right": ("pan", 5), "tilt_up": ("tilt", 5), "tilt_down": ("tilt", -5)}
    for camera, (axis, value) in directions.items():
        config = camera_control(camera)["config"]
        assert {k: v for k, v in config.items() if v} == {axis: value}


# ---- what the matrix forbids is refused before anything is sent

VIDEO_REFUSALS = [
    ({"model_name": "kling-v1-6", "mode": "std", "duration": "5", "tail": True}, 422, "tail_not_supported"),
    ({"model_name": "kling-v1", "mode": "pro", "duration": "10", "tail": True}, 422, "tail_not_supported"),
    ({"model_name": "kling-v2-master", "duration": "5", "tail": True}, 422, "tail_not_supported"),
    ({"model_name": "kling-v2-master", "mode": "pro"}, 422, "unsupported_value"),
    ({"model_name": "kling-v1-5", "text": True}, 400, "image_required"),
    ({"model_name": "kling-v2-1", "text": True}, 400, "image_required"),
    ({"model_name": "kling-v1-6", "camera": "zoom_in"}, 422, "unsupported_value"),
    ({"model_name": "kling-v1", "mode": "std", "duration": "5", "camera": "zoom_in"}, 422, "unsupported_value"),
    ({"model_name": "kling-v1", "mode": "pro", "duration": "5", "camera": "zoom_in", "text": True}, 422,
     "unsupported_value"),
    ({"model_name": "kling-v1-5", "mode": "pro", "duration": "5", "camera": "down_back"}, 422, "unsupported_value"),
    ({"model_name": "kling-v1-5", "mode": "pro", "duration": "10", "camera": "zoom_in"}, 422, "unsupported_value"),
    ({"model_name": "kling-v1-5", "mode": "pro", "duration": "5", "camera": "zoom_in", "tail": True}, 422,
     "unsupported_value"),
    ({"model_name": "kling-v1-6", "aspect_ratio": "4:3", "text": True}, 422, "unsupported_value"),
    # §9.1: v2.5 Turbo pro only (the cautious reading); v2.6 sound only in pro, never with a tail frame.
    ({"model_name": "kling-v2-5-turbo", "mode": "std"}, 422, "unsupported_value"),
    ({"model_name": "kling-v2-6", "mode": "std", "duration": "5", "sound": True}, 422, "unsupported_value"),
    ({"model_name": "kling-v2-6", "mode": "pro", "duration": "5", "sound": True, "tail": True}, 422,
     "unsupported_value"),
    ({"model_name": "kling-v1-6", "sound": True}, 422, "unsupported_value"),
    ({"model_name": "kling-v2-6", "duration": "7"}, 422, "unsupported_value"),
    ({"model_name": "kling-v3", "duration": "2"}, 422, "unsupported_value"),
    # Kling takes neither a seed nor prompt_extend: refused, not dropped.
    ({"model_name": "kling-v1-6", "seed": 7}, 422, "unsupported_value"),
    ({"model_name": "kling-v1-6", "prompt_extend": True}, 422, "unsupported_value"),
]


@pytest.mark.parametrize(("request_body", "status", "code"), VIDEO_REFUSALS)
def test_video_matrix_refusals(client, fake, request_body, status, code):
    body = {"provider": "kling", "prompt": "x", **request_body}
    if not body.pop("text", False):
        body["image"] = b64(picture())
    if body.pop("tail", False):
        body["image_tail"] = b64(picture(seed=5))
    resp = client.post("/generate", json=body)
    assert resp.status_code == status, resp.get_json()
    assert resp.get_json()["error"]["code"] == code
    assert fake.received == []


IMAGE_REFUSALS = [
    ({"model_name": "kling-v1", "aspect_ratio": "21:9"}, 422, "unsupported_value"),
    ({"model_name": "kling-v2-new"}, 400, "image_required"),
    ({"model_name": "kling-v2-1", "image": True}, 422, "image_not_supported"),
    ({"model_name": "kling-v1", "image": True, "image_reference": "face"}, 422, "unsupported_value"),
    ({"model_name": "kling-v1-5", "image": True, "negative_prompt": "dark"}, 422, "unsupported_value"),
    ({"model_name": "kling-v1-5", "n": 10}, 422, "invalid_field"),
]


@pytest.mark.parametrize(("request_body", "status", "code"), IMAGE_REFUSALS)
def test_image_matrix_refusals(client, fake, request_body, status, code):
    body = {"provider": "kling", "prompt": "x", **request_body}
    if body.pop("image", False):
        body["image"] = b64(picture())
    resp = client.post("/generate_image", json=body)
    assert resp.status_code == status, resp.get_json()
    assert resp.get_json()["error"]["code"] == code
    assert fake.received == []


def test_capability_table_matches_the_servers_matrix():
    """Both were written from PROVIDERS.md §1.7/§1.9 separately; they must agree cell by cell."""
    as_set = lambda combos: {(c["mode"], c["duration"]) for c in combos}  # noqa: E731
    videos = {m["id"]: m for m in MODELS if m["kind"] == "video"}
    assert set(videos) == set(fake_kling.VIDEO_MODELS)
    for model_id, spec in fake_kling.VIDEO_MODELS.items():
        model = videos[model_id]
        assert as_set(model["combos"]) == spec["image2video"]
        assert model["text_to_video"] == bool(spec["text2video"])
        assert as_set(model["tail_combos"]) == spec["tail"]
        assert model["cfg_scale"] == spec["cfg"]
        assert as_set(model.get("sound_combos", [])) == spec.get("sound", set())
        assert model.get("sound_with_tail", True) is ("sound" not in spec)
        cameras = spec.get("camera", {})
        assert bool(model["cameras"]) == bool(cameras)
        if cameras:
            ((kind, combos),) = cameras.items()
            assert as_set(model["camera_combos"]) == combos and model["camera_with_tail"] is False
            assert model["camera_for"] == [{"text2video": "text_to_video", "image2video": "image_to_video"}[kind]]
    images = {m["id"]: m for m in MODELS if m["kind"] == "image"}
    assert set(images) == set(fake_kling.IMAGE_MODELS)
    for model_id, spec in fake_kling.IMAGE_MODELS.items():
        assert images[model_id]["text_to_image"] == spec["t2i"]
        assert set(images[model_id]["image_reference"]) == spec["references"]
        assert images[model_id]["negative_prompt_with_image"] is False
        assert (images[model_id]["n_min"], images[model_id]["n_max"]) == (1, 9)
    assert "21:9" not in images["kling-v1"]["aspect_ratios"] and "21:9" in images["kling-v1-5"]["aspect_ratios"]


# ---- faults


def test_hang_after_create_is_reconciled_not_resent(app, client, fake):
    fake.inject("submit", "hang")
    task_id = create(client, model_name="kling-v1-6", image=b64(picture()), prompt="waves")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to("/v1/videos/image2video")) == 1 and fake.submissions[task_id] == 1
    assert f"/v1/videos/image2video/{task_id}" in [p for m, p, _ in fake.received if m == "GET"]
    (server_task,) = fake.tasks.values()
    assert task["provider_task_id"] == server_task["task_id"]


def test_5xx_before_create_is_reconciled_then_submitted(app, client, fake):
    fake.inject("submit", "error_500")
    task_id = create(client, model_name="kling-v1-6", prompt="rain", aspect_ratio="1:1")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert fake.answered[5000] == 1 and fake.answered[1203] == 1       # refused, then looked up: absent
    assert len(fake.requests_to("/v1/videos/text2video")) == 2 and fake.submissions[task_id] == 1


def test_5xx_after_create_is_reconciled(app, client, fake):
    fake.inject("submit", "error_500_after_create")
    task_id = create(client, model_name="kling-v1-6", prompt="rain")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to("/v1/videos/text2video")) == 1 and fake.submissions[task_id] == 1


def test_billing_429_fails_with_top_up_message(app, client, fake):
    fake.inject("submit", "billing")
    task_id = create(client, model_name="kling-v1-6", prompt="x")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "failed"
    assert task["error"]["code"] == "provider_quota" and "top up" in task["error"]["message"]
    assert len(fake.requests_to("/v1/videos/text2video")) == 1 and not fake.submissions


@pytest.mark.parametrize("fault", ["rate_limit", "concurrency"])
def test_rate_limit_429_keeps_the_task_queued_then_succeeds(app, client, fake, fault):
    fake.inject("submit", fault)
    task_id = create(client, model_name="kling-v1-6", prompt="x")
    store, providers_ = app.extensions["task_store"], app.extensions["providers"]
    task_query.dispatch(store, providers_)
    task = store.get(task_id)
    assert task["status"] == "queued" and task["next_check_at"] and "busy" in task["last_error"]
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to("/v1/videos/text2video")) == 2 and fake.submissions[task_id] == 1


def test_expired_token_at_the_server_is_reminted_and_resent(app, client, fake):
    provider = app.extensions["providers"]["kling"]
    stale = jwt.encode({"iss": AK, "exp": int(time.time()) - 10, "nbf": int(time.time()) - 1900}, SK,
                       algorithm="HS256", headers={"alg": "HS256", "typ": "JWT"})
    provider._token, provider._token_renew_at = stale, time.time() + 1000   # the cache believes it is fine
    task_id = create(client, model_name="kling-v1-6", prompt="x")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert fake.answered[1004] == 1 and provider.auth_token() != stale
    assert len(fake.requests_to("/v1/videos/text2video")) == 2 and fake.submissions[task_id] == 1


def test_wrong_secret_fails_with_auth_message(tmp_path, monkeypatch, fake):
    app = build_app(tmp_path, monkeypatch, fake, KLING_SECRET_KEY="SK" + "x" * 30)
    task_id = create(app.test_client(), model_name="kling-v1-6", prompt="x")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "provider_auth"
    assert "KLING_SECRET_KEY" in task["error"]["message"]
    assert fake.answered[1000] == 1 and not fake.submissions


def test_expired_result_url_fails_result_expired(app, client, fake):
    fake.inject("result", "expired")
    task_id = create(client, "image", model_name="kling-v1", prompt="x")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "result_expired"
    assert sum(fake.file_hits.values()) == 0          # the signed expiry was known before fetching


def test_truncated_download_is_retried(app, client, fake):
    fake.inject("download", "truncate")
    task_id = create(client, model_name="kling-v1-6", prompt="x")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert list(fake.file_hits.values()) == [2]
    saved_files_ok(app, task, "video")


def test_malformed_query_answer_is_retried(app, client, fake):
    fake.inject("query", "malformed", "error_500")
    task_id = create(client, model_name="kling-v1-6", prompt="x")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert fake.submissions[task_id] == 1


def test_failure_at_kling_reports_its_message(app, client, fake):
    fake.inject("result", "failed")
    task_id = create(client, model_name="kling-v1-6", prompt="x")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "failed" and task["provider_status"] == "failed"
    # Kling's own words are kept beside the studio's summary, which names Kling by its label.
    error = task["error"]
    assert error["code"] == "kling_task_failed"
    assert error["provider_message"] == "Failure to pass the risk control system"
    assert error["message"] == ("Kling (official API) reported that the task failed: Failure to pass the risk "
                                "control system")
    assert error["template"] == "%(label)s reported that the task failed: %(reason)s" and error["retryable"] is False


def run_all(app, task_ids, rounds=40):
    store, providers_ = app.extensions["task_store"], app.extensions["providers"]
    for _ in range(rounds):
        task_query.dispatch(store, providers_)
        task_query.poll(store, providers_)
        task_query.download(store, providers_)
        if all(store.get(t)["status"] in ("succeeded", "failed") for t in task_ids):
            break
        for t in task_ids:   # skip poll intervals and backoff
            store.update(t, {"next_check_at": None})
    return [store.get(t) for t in task_ids]


def test_batch_within_max_concurrency_never_trips_the_limit(tmp_path, monkeypatch):
    server = Server(polls_to_finish=2, access_key=AK, secret_key=SK, concurrency_limit=3)
    server.start()
    try:
        app = build_app(tmp_path, monkeypatch, server, KLING_MAX_CONCURRENCY=3)
        client = app.test_client()
        ids = [create(client, model_name="kling-v1-6", prompt=f"shot {i}") for i in range(10)]
        assert all(t["status"] == "succeeded" for t in run_all(app, ids))
        assert server.answered[1303] == 0 and all(server.submissions[t] == 1 for t in ids)
        # The same batch with a cap above the account's limit does trip it: the test can fail.
        app.extensions["providers"]["kling"].max_concurrency = 5
        more = [create(client, model_name="kling-v1-6", prompt=f"more {i}") for i in range(5)]
        assert all(t["status"] == "succeeded" for t in run_all(app, more))
        assert server.answered[1303] > 0
    finally:
        server.stop()


def test_image_task_holds_n_slots(tmp_path, monkeypatch):
    server = Server(polls_to_finish=2, access_key=AK, secret_key=SK, concurrency_limit=3)
    server.start()
    try:
        app = build_app(tmp_path, monkeypatch, server, KLING_MAX_CONCURRENCY=3)
        client = app.test_client()
        ids = [create(client, "image", model_name="kling-v2", prompt=f"p{i}", n=2) for i in range(3)]
        assert all(t["status"] == "succeeded" for t in run_all(app, ids))
        assert server.answered[1303] == 0
    finally:
        server.stop()


# ---- reconcile on its own


def test_reconcile_answers(app, client, fake):
    provider = app.extensions["providers"]["kling"]
    task_id = create(client, model_name="kling-v1-6", prompt="x")
    task = app.extensions["task_store"].get(task_id)
    assert provider.reconcile(task) is None                           # 404 / 1203: certainly absent
    created = provider.submit(task)
    assert provider.reconcile(task) == created
    fake.inject("query", *["error_500"] * 4)                         # down: asked again later, not failed
    with pytest.raises(ProviderUnavailable):
        provider.reconcile(task)
    fake.inject("query", "malformed")                                 # unreadable: cannot tell
    with pytest.raises(SubmitOutcomeUnknown, match="outcome unknown"):
        provider.reconcile(task)
    provider.config = {**provider.config, "KLING_SECRET_KEY": "SK" + "w" * 30}
    provider._token = None
    with pytest.raises(SubmitOutcomeUnknown, match="outcome unknown"):
        provider.reconcile(task)


# ---- the server itself speaks Kling's protocol strictly


def token(secret=SK, iss=AK, exp_delta=1800, nbf_delta=-5, headers=None):
    now = int(time.time())
    return jwt.encode({"iss": iss, "exp": now + exp_delta, "nbf": now + nbf_delta}, secret, algorithm="HS256",
                      headers=headers or {"alg": "HS256", "typ": "JWT"})


def good_i2v(**changes):
    body = {"model_name": "kling-v1-6", "image": b64(picture()), "duration": "5", "mode": "std",
            "external_task_id": "t-1"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


# Auth headers are built when the test runs (a token made at collection time would age).
def bearer(**claims):
    return lambda: {"Authorization": "Bearer " + token(**claims)}


@pytest.mark.parametrize(("headers", "body", "status", "code"), [
    (lambda: {}, good_i2v(), 401, 1001),
    (lambda: {"Authorization": "Bearer garbage"}, good_i2v(), 401, 1002),
    (lambda: {"Authorization": token()}, good_i2v(), 401, 1002),                 # no "Bearer "
    (bearer(nbf_delta=60), good_i2v(), 401, 1003),
    (bearer(exp_delta=-1), good_i2v(), 401, 1004),
    (bearer(secret="SK" + "o" * 30), good_i2v(), 401, 1000),
    (bearer(iss="AK" + "z" * 30), good_i2v(), 401, 1000),
    (bearer(), good_i2v(image=b64(picture(), "image/png")), 400, 1201),
    (bearer(), good_i2v(duration=5), 400, 1201),
    (bearer(), good_i2v(model_name="kling-v2-master", mode=None, cfg_scale=0.5), 400, 1201),
    (bearer(), good_i2v(image_tail=b64(picture())), 400, 1201),                 # v1-6 tail needs pro
    (bearer(), good_i2v(aspect_ratio="16:9"), 400, 1201),
    (bearer(), good_i2v(camera_control={"type": "simple", "config": {"zoom": 5}}), 400, 1201),
    (bearer(), good_i2v(model_name="kling-v2-master", mode="pro"), 400, 1201),
    (bearer(), good_i2v(model_name="kling-v9"), 404, 1203),
])
def test_server_refuses_like_kling(fake, headers, body, status, code):
    resp = requests.post(fake.base_url + "/v1/videos/image2video", json=body, headers=headers(), timeout=5)
    with resp:
        assert resp.status_code == status and resp.json()["code"] == code, resp.text
    assert not fake.tasks


def test_server_checks_content_type_duplicates_and_lists(fake):
    headers = {"Authorization": "Bearer " + token()}
    url = fake.base_url + "/v1/videos/image2video"
    with requests.post(url, data=json.dumps(good_i2v()), headers=headers, timeout=5) as resp:
        assert resp.json()["code"] == 1200                          # no Content-Type: application/json
    with requests.post(url, json=good_i2v(), headers=headers, timeout=5) as resp:
        assert resp.json()["code"] == 0 and resp.json()["data"]["task_status"] == "submitted"
        task_id = resp.json()["data"]["task_id"]
    with requests.post(url, json=good_i2v(), headers=headers, timeout=5) as resp:
        assert resp.json()["code"] == 1201                          # external_task_id reused
    with requests.get(url, params={"external_task_id": "t-1"}, headers=headers, timeout=5) as resp:
        assert [t["task_id"] for t in resp.json()["data"]] == [task_id]
    with requests.get(url, params={"pageSize": 501}, headers=headers, timeout=5) as resp:
        assert resp.json()["code"] == 1201
    with requests.get(fake.base_url + f"/v1/videos/text2video/{task_id}", headers=headers, timeout=5) as resp:
        assert resp.status_code == 404 and resp.json()["code"] == 1203   # query path must match the create path
    statuses = []
    for _ in range(3):
        with requests.get(f"{url}/{task_id}", headers=headers, timeout=5) as resp:
            statuses.append(resp.json()["data"]["task_status"])
    assert statuses == ["submitted", "processing", "succeed"]
    assert fake.submissions["t-1"] == 1


def test_usage_names_the_settings():
    (line, *_) = fake_kling.usage("http://127.0.0.1:9001")
    assert "KLING_API_BASE=http://127.0.0.1:9001" in line and f"KLING_ACCESS_KEY={fake_kling.FAKE_AK}" in line
