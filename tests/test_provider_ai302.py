"""302.ai: Kling and Wan through one key, against the local 302 gateway with both protocols behind it."""

import base64
from pathlib import Path

import pytest

import media
import providers.http
import task_query
from app import create_app
from tests.conftest import b64, picture, run_pipeline
from tests.fakes.ai302 import API_KEY, Server


@pytest.fixture
def fake():
    with Server.running(polls_to_finish=2) as server:
        yield server


@pytest.fixture
def app(tmp_path, monkeypatch, fake):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t",
                       "AI302_API_BASE": fake.base_url, "AI302_API_KEY": API_KEY, "HTTP_TIMEOUT_SECONDS": 1})


def create(app, kind="video", **body):
    url = "/generate" if kind == "video" else "/generate_image"
    resp = app.test_client().post(url, json={"provider": "ai302", **body})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def stored_bytes(app, task, role):
    entry = next(i for i in task["inputs"] if i["role"] == role)
    return (Path(app.config["DATA_DIR"]) / entry["path"]).read_bytes()


def verified(app, task):
    assert task["status"] == "succeeded", task["error"]
    for out in task["outputs"]:
        facts = media.probe_media(Path(app.config["DATA_DIR"]) / out["path"])
        assert facts["sha256"] == out["sha256"]
    return task


def test_capabilities_offer_both_families(app):
    body = app.test_client().get("/api/capabilities").get_json()
    ai302 = next(p for p in body["providers"] if p["name"] == "ai302")
    ids = {m["id"] for m in ai302["models"]}
    assert ai302["configured"] is True
    assert {"kling-v1-6", "kling-v2-master", "wan2.2-i2v-flash", "wanx2.1-t2i-turbo"} <= ids


def test_not_configured_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    monkeypatch.delenv("AI302_API_KEY", raising=False)
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d")})
    resp = app.test_client().post("/generate", json={"provider": "ai302", "image": b64(picture())})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "provider_not_configured"


def test_kling_image_to_video_through_klingai(app, fake):
    task_id = create(app, image=b64(picture()), prompt="a slow dolly", model_name="kling-v1-6",
                     mode="std", duration="5", cfg_scale=0.4)
    task = verified(app, run_pipeline(app, task_id, skip_waits=True))
    (body,) = fake.kling.requests_to("/v1/videos/image2video")
    assert body["model_name"] == "kling-v1-6" and body["duration"] == "5" and body["mode"] == "std"
    assert body["image"] == base64.b64encode(stored_bytes(app, task, "first")).decode()   # raw, no data: prefix
    assert body["external_task_id"] == task_id and body["cfg_scale"] == 0.4
    assert fake.kling.submissions == {task_id: 1}


def test_kling_image_task_id_read_from_data_task_id(app, fake):
    fake.kling.create_shape = "official_nested"
    task_id = create(app, "image", prompt="a lighthouse", model_name="kling-v1", n=2, aspect_ratio="1:1")
    task = verified(app, run_pipeline(app, task_id, skip_waits=True))
    assert len(task["outputs"]) == 2 and task["provider_task_id"].startswith("kt")
    lookups = [path for method, path, _ in fake.kling.received if method == "GET" and path.endswith(task_id)]
    assert lookups == []            # read from the answer, not recovered by a lookup


def test_wan_image_to_video_through_aliyun(app, fake):
    task_id = create(app, image=b64(picture()), prompt="waves", model_name="wan2.2-i2v-flash", mode="720P",
                     duration="5")
    verified(app, run_pipeline(app, task_id, skip_waits=True))
    (body,) = fake.wan.requests_to("/services/aigc/video-generation/video-synthesis")
    assert body["model"] == "wan2.2-i2v-flash" and body["input"]["img_url"].startswith("data:image/png;base64,")
    assert body["parameters"]["resolution"] == "720P" and body["parameters"]["duration"] == 5
    assert fake.client_async_headers == [None]          # like 302's own SDK: the gateway adds it


def test_wan_text_to_image_sends_n(app, fake):
    task_id = create(app, "image", prompt="a red kite", model_name="wanx2.1-t2i-turbo", n=1, aspect_ratio="16:9")
    verified(app, run_pipeline(app, task_id, skip_waits=True))
    (body,) = fake.wan.requests_to("/services/aigc/text2image/image-synthesis")
    assert body["parameters"]["n"] == 1 and body["parameters"]["size"] == "1280*720"


def test_wrong_key_fails_with_the_302_message(tmp_path, monkeypatch, fake):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d"), "AI302_API_BASE": fake.base_url,
                      "AI302_API_KEY": "sk-wrong", "HTTP_TIMEOUT_SECONDS": 1})
    task = run_pipeline(app, create(app, image=b64(picture()), model_name="kling-v1-6"), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "provider_auth"
    assert "AI302_API_KEY" in task["error"]["message"] and "sk-wrong" not in task["error"]["message"]
    assert not fake.submissions


def test_gateway_rate_limit_keeps_the_task_queued_then_submits_once(app, fake):
    fake.inject("gateway", "rate_limit")
    task_id = create(app, image=b64(picture()), model_name="wan2.2-i2v-flash")
    store, registry = app.extensions["task_store"], app.extensions["providers"]
    task_query.dispatch(store, registry)
    assert store.get(task_id)["status"] == "queued"
    verified(app, run_pipeline(app, task_id, skip_waits=True))
    assert sum(fake.wan.submissions.values()) == 1


def test_empty_balance_fails_with_a_top_up_message(app, fake):
    fake.inject("gateway", "balance")
    task = run_pipeline(app, create(app, image=b64(picture()), model_name="kling-v1-6"), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "provider_quota"
    assert "top up" in task["error"]["message"]


def test_kling_hang_after_create_is_reconciled_through_302(app, fake):
    fake.kling.inject("submit", "hang")
    task_id = create(app, image=b64(picture()), model_name="kling-v1-6")
    verified(app, run_pipeline(app, task_id, skip_waits=True))
    assert fake.kling.submissions == {task_id: 1}


def test_wan_hang_after_create_fails_as_outcome_unknown(app, fake):
    fake.wan.inject("submit", "hang")
    task = run_pipeline(app, create(app, image=b64(picture()), model_name="wan2.2-i2v-flash"), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "submit_outcome_unknown"
    assert sum(fake.wan.submissions.values()) == 1


# ---- every reply shape of 302's Kling pass-through (PROVIDERS.md §9.3)

@pytest.mark.parametrize("shape", ["official", "official_nested", "codeless_nested", "codeless_flat"])
def test_kling_create_answer_shapes_are_all_created_tasks(app, fake, shape):
    fake.kling.create_shape = shape
    task_id = create(app, image=b64(picture()), prompt="a slow dolly", model_name="kling-v1-6")
    task = verified(app, run_pipeline(app, task_id, skip_waits=True))
    (remote,) = fake.kling.tasks.values()
    assert task["provider_task_id"] == remote["task_id"] and task["attempts"] == 1
    lookups = [path for method, path, _ in fake.kling.received if method == "GET" and path.endswith(task_id)]
    assert lookups == [] and fake.kling.submissions == {task_id: 1}


def test_codeless_answer_without_an_id_is_looked_up_not_failed(app, fake):
    fake.kling.create_shape = "codeless_no_id"
    task_id = create(app, "image", prompt="a lighthouse", model_name="kling-v1", n=1, aspect_ratio="1:1")
    task = verified(app, run_pipeline(app, task_id, skip_waits=True))
    (remote,) = fake.kling.tasks.values()
    assert task["provider_task_id"] == remote["task_id"]        # found by our external id, through 302
    assert fake.kling.submissions == {task_id: 1}


@pytest.mark.parametrize("fault", [None, "hang"])
def test_not_found_through_302_after_an_ambiguous_submit_is_outcome_unknown(app, fake, fault):
    fake.kling.forwards_external_lookup = False     # 302 documents no lookup by our id
    if fault:
        fake.kling.inject("submit", fault)
    else:
        fake.kling.create_shape = "codeless_no_id"
    task_id = create(app, image=b64(picture()), model_name="kling-v1-6")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "submit_outcome_unknown"
    assert "not found" in task["error"]["message"] and task["late_check_until"]
    assert fake.kling.submissions == {task_id: 1}   # created once at 302, never sent again


def test_wan_success_spelled_success_through_302(app, fake):
    fake.wan.success_spelling = "SUCCESS"
    task_id = create(app, "image", prompt="a red kite", model_name="wanx2.1-t2i-turbo", n=1)
    task = verified(app, run_pipeline(app, task_id, skip_waits=True))
    assert task["provider_status"] == "SUCCESS" and len(task["outputs"]) == 1


def test_first_and_last_frame_models_are_not_offered_through_302(app):
    body = app.test_client().get("/api/capabilities").get_json()
    ids = {m["id"] for m in next(p for p in body["providers"] if p["name"] == "ai302")["models"]}
    assert {"wan2.6-i2v-flash", "wan2.5-t2v-preview", "wan2.5-t2i-preview", "kling-v3"} <= ids
    assert not any("kf2v" in i for i in ids)
