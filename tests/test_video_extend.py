"""POST /generate: every validation rule with a good and a bad case; nothing left behind on errors."""

import os

import pytest

from tests.conftest import b64, picture
from video_extend import VideoRequest


def post(client, **body):
    return client.post("/generate", json=body)


def assert_error(resp, status, field=None, code=None):
    assert resp.status_code == status, resp.get_json()
    err = resp.get_json()["error"]
    assert err["message"]
    if field:
        assert err["field"] == field
    if code:
        assert err["code"] == code


def nothing_stored(app):
    store = app.extensions["task_store"]
    inputs = os.path.join(app.config["DATA_DIR"], "inputs")
    return len(store) == 0 and (not os.path.isdir(inputs) or not os.listdir(inputs))


def test_raw_base64_is_accepted_and_stored_as_a_file(app, client, png_b64):
    resp = post(client, image=png_b64, prompt="a cat", provider="local", model_name="local-motion")
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["status"] == "queued"
    task = app.extensions["task_store"].get(body["task_id"])
    (first,) = task["inputs"]
    assert first["role"] == "first" and first["path"] == f"inputs/{task['id']}/first.png"
    assert (first["width"], first["height"]) == (640, 400)
    assert os.path.getsize(os.path.join(app.config["DATA_DIR"], first["path"])) > 0
    assert "base64" not in str(task) and png_b64[:40] not in str(task)


def test_data_uri_is_accepted(client):
    assert post(client, image=b64(picture(), "image/png")).status_code == 202


def test_format_is_decided_by_content_not_by_declared_type(app, client):
    resp = post(client, image=b64(picture(fmt="JPEG"), "image/png"))
    assert resp.status_code == 202
    task = app.extensions["task_store"].get(resp.get_json()["task_id"])
    assert task["inputs"][0]["path"].endswith("first.jpg")


def test_gif_is_refused(app, client):
    assert_error(post(client, image=b64(picture(fmt="GIF"))), 400, "image", "unsupported_image_format")
    assert nothing_stored(app)


def test_bad_base64_is_refused(app, client):
    assert_error(post(client, image="not base64 at all!!"), 400, "image")
    assert nothing_stored(app)


def test_picture_over_10_mb_is_refused(app, client):
    big = os.urandom(10 * 1024 * 1024 + 1)
    assert_error(post(client, image=b64(big)), 413, "image")
    assert nothing_stored(app)


@pytest.mark.parametrize("size,status", [((300, 300), 202), ((299, 400), 422), ((400, 299), 422)])
def test_each_side_at_least_300px(app, client, size, status):
    resp = post(client, image=b64(picture(*size)))
    assert resp.status_code == status
    if status == 422:
        assert_error(resp, 422, "image", "image_too_small")
        assert nothing_stored(app)


@pytest.mark.parametrize("size,status", [((750, 300), 202), ((300, 750), 202), ((760, 300), 422), ((300, 760), 422)])
def test_aspect_ratio_between_1_to_2_5_and_2_5_to_1(client, size, status):
    resp = post(client, image=b64(picture(*size)))
    assert resp.status_code == status
    if status == 422:
        assert_error(resp, 422, "image", "image_bad_aspect_ratio")


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_prompts_at_most_2500_characters(app, client, png_b64, field):
    assert post(client, image=png_b64, **{field: "x" * 2500}).status_code == 202
    assert_error(post(client, image=png_b64, **{field: "x" * 2501}), 422, field)


def test_mode(client, png_b64):
    assert post(client, image=png_b64, mode="std").status_code == 202
    assert_error(post(client, image=png_b64, mode="turbo"), 422, "mode")


@pytest.mark.parametrize("duration", ["5", "10", 5, 10])
def test_duration_5_or_10(app, client, png_b64, duration):
    resp = post(client, image=png_b64, duration=duration)
    assert resp.status_code == 202
    assert app.extensions["task_store"].get(resp.get_json()["task_id"])["params"]["duration"] == str(duration)


@pytest.mark.parametrize("duration", ["7", 0, "five"])
def test_other_durations_are_refused(client, png_b64, duration):
    assert_error(post(client, image=png_b64, duration=duration), 422, "duration")


def test_cfg_scale_range(client, png_b64):
    assert post(client, image=png_b64, cfg_scale=0).status_code == 202
    assert post(client, image=png_b64, cfg_scale=1).status_code == 202
    assert_error(post(client, image=png_b64, cfg_scale=1.01), 422, "cfg_scale")
    assert_error(post(client, image=png_b64, cfg_scale=-0.1), 422, "cfg_scale")
    assert_error(post(client, image=png_b64, cfg_scale="lots"), 400, "cfg_scale")


def test_tail_frame_with_the_local_engine(app, client, png_b64):
    resp = post(client, image=png_b64, image_tail=b64(picture(seed=3)), duration="10")
    assert resp.status_code == 202
    roles = [i["role"] for i in app.extensions["task_store"].get(resp.get_json()["task_id"])["inputs"]]
    assert roles == ["first", "tail"]


def test_tail_frame_needs_a_first_frame(client):
    assert_error(post(client, image_tail=b64(picture())), 400, "image", "image_required")


def test_bad_tail_frame_leaves_nothing_behind(app, client, png_b64):
    assert_error(post(client, image=png_b64, image_tail=b64(picture(200, 200))), 422, "image_tail")
    assert nothing_stored(app)


def test_camera_move(client, png_b64):
    assert post(client, image=png_b64, camera="pan_left").status_code == 202
    assert_error(post(client, image=png_b64, camera="barrel_roll"), 422, "camera")


def test_first_frame_is_required_by_image_to_video_models(app, client):
    assert_error(post(client, prompt="a cat"), 400, "image", "image_required")
    assert nothing_stored(app)


def test_provider_and_model(client, png_b64):
    assert post(client, image=png_b64, provider="local", model_name="local-motion").status_code == 202
    assert_error(post(client, image=png_b64, provider="nope"), 422, "provider", "unknown_provider")
    assert_error(post(client, image=png_b64, model_name="kling-v9"), 422, "model_name", "unknown_model")
    assert_error(post(client, image=png_b64, model_name="local-filters"), 422, "model_name")


def test_malformed_requests(client, png_b64):
    assert_error(client.post("/generate", data="{", content_type="application/json"), 400, code="invalid_json")
    assert_error(client.post("/generate", json=["image"]), 400, code="invalid_json")
    assert_error(post(client, image=png_b64, colour="blue"), 400, "colour", "unknown_field")
    assert_error(post(client, image=12345), 400, "image")


def test_request_over_the_size_cap_is_a_json_413(client):
    resp = client.post("/generate", data=b"x" * (31 * 1024 * 1024), content_type="application/json")
    assert_error(resp, 413, code="payload_too_large")


def test_tail_rules_follow_the_model_table(app, client, png_b64):
    """A model whose table allows a tail frame only in pro 5 s (like kling-v1-6) refuses other combos."""
    local = app.extensions["providers"]["local"]
    table = local.capabilities()
    motion = next(m for m in table["models"] if m["id"] == "local-motion")
    restricted = {**motion, "id": "tail-pro-5", "modes": ["std", "pro"],
                  "combos": [{"mode": m, "duration": d} for m in ("std", "pro") for d in ("5", "10")],
                  "tail_combos": [{"mode": "pro", "duration": "5"}]}
    local.capabilities = lambda: {**table, "models": [*table["models"], restricted]}
    tail = b64(picture(seed=5))
    ok = post(client, image=png_b64, image_tail=tail, model_name="tail-pro-5", mode="pro", duration="5")
    assert ok.status_code == 202
    for mode, duration in (("std", "5"), ("pro", "10")):
        resp = post(client, image=png_b64, image_tail=tail, model_name="tail-pro-5", mode=mode, duration=duration)
        assert_error(resp, 422, "image_tail", "tail_not_supported")
    assert post(client, image=png_b64, model_name="tail-pro-5", mode="std", duration="10").status_code == 202


@pytest.mark.parametrize("field,value", [("cfg_scale", True), ("cfg_scale", "0.5"), ("duration", True),
                                         ("duration", 5.0), ("duration", ["5"]), ("mode", 1), ("prompt", False),
                                         ("camera", {"type": "pan"}), ("negative_prompt", "x\u001by"),
                                         ("prompt", "\udfff")])
def test_loose_types_are_refused(app, client, png_b64, field, value):
    # No coercion beyond the documented one (a whole-number duration is its text).
    assert_error(post(client, image=png_b64, **{field: value}), 400, field, "invalid_field")
    assert nothing_stored(app)


def test_a_whole_number_is_a_fine_cfg_scale():
    # The local engine has no cfg_scale, so the request model is asked directly.
    assert VideoRequest.model_validate({"cfg_scale": 1}).cfg_scale == 1.0


@pytest.mark.parametrize("url", ["http://[::1/", "http://[zz::1]/", "http://example.com:99999/x.png"])
def test_unparseable_picture_urls_are_a_400(app, client, url):
    assert_error(post(client, image=url), 400, "image", "invalid_url")
    assert nothing_stored(app)
