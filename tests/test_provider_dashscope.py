"""The DashScope (Wan) provider against the local DashScope server, and that server against the official SDK.

Every pipeline test goes through the studio's own API (POST /generate, /generate_image) and the
pipeline jobs, then checks what the server received field by field and how often it was asked to
create a task, so a double submit cannot hide.
"""

import base64
import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests
from PIL import Image

import providers.http
import submit_journal
import task_backup
import task_query
from app import create_app
from providers import dashscope as ds
from providers.dashscope import IMAGE_PATH, VIDEO_PATH, DashScopeProvider
from tasks import utcnow
from tests.conftest import b64, picture, run_pipeline
from tests.fakes import sample_mp4
from tests.fakes.dashscope import API_KEY, PARTIAL_FAILURE, Server, usage

PROMPT = "a red kite climbs over the harbour at dawn"
NEGATIVE = "blurry, text, watermark"


@pytest.fixture
def fake():
    with Server.running(polls_to_finish=3) as server:
        yield server


@pytest.fixture
def make_app(tmp_path, monkeypatch, fake):
    """Build the studio with the DashScope provider pointed at the local server."""
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))

    def build(**config):
        app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t",
                          "DASHSCOPE_API_BASE": fake.base_url, "DASHSCOPE_API_KEY": API_KEY,
                          "HTTP_TIMEOUT_SECONDS": 1, **config})
        return app
    return build


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def post_video(client, **body):
    body = {"provider": "dashscope", "model_name": "wan2.2-i2v-flash", "image": b64(picture(640, 400)),
            "prompt": PROMPT, **body}
    resp = client.post("/generate", json=body)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def post_image(client, **body):
    body = {"provider": "dashscope", "model_name": "wanx2.1-t2i-turbo", "prompt": PROMPT, "n": 1, **body}
    resp = client.post("/generate_image", json=body)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def finish(app, task_id, **kwargs):
    return run_pipeline(app, task_id, skip_waits=True, timeout=30, **kwargs)


def creates(fake):
    return fake.requests_to(VIDEO_PATH) + fake.requests_to(IMAGE_PATH)


def assert_never_resubmitted(fake):
    assert all(count == 1 for count in fake.submissions.values()), fake.submissions
    assert sum(fake.submissions.values()) == len(fake.tasks)


def data_uri_bytes(uri):
    header, _, data = uri.partition(",")
    return header, base64.b64decode(data)


def saved_file(app, output):
    path = app.config["DATA_DIR"] + "/" + output["path"]
    with open(path, "rb") as f:
        return f.read()


# ---- capability table

def test_capability_table(app):
    caps = app.test_client().get("/api/capabilities").get_json()
    (table,) = [p for p in caps["providers"] if p["name"] == "dashscope"]
    assert table["configured"] is True
    videos = {m["id"]: m for m in table["models"] if m["kind"] == "video"}
    five_to_fifteen = [str(n) for n in range(2, 16)]
    assert {k: (m["modes"], m["durations"]) for k, m in videos.items()} == {
        "wan2.2-i2v-flash": (["480P", "720P", "1080P"], ["5"]),
        "wan2.2-i2v-plus": (["480P", "1080P"], ["5"]),
        "wanx2.1-i2v-turbo": (["480P", "720P"], ["3", "4", "5"]),
        "wanx2.1-i2v-plus": (["720P"], ["5"]),
        "wan2.5-i2v-preview": (["480P", "720P", "1080P"], ["5", "10"]),
        "wan2.6-i2v": (["720P", "1080P"], ["5", "10", "15"]),
        "wan2.6-i2v-flash": (["720P", "1080P"], five_to_fifteen),
        "wan2.2-kf2v-flash": (["480P", "720P", "1080P"], ["5"]),
        "wanx2.1-kf2v-plus": (["720P"], ["5"]),
        "wanx2.1-t2v-turbo": (["480P", "720P"], ["5"]),
        "wanx2.1-t2v-plus": (["720P"], ["5"]),
        "wan2.2-t2v-plus": (["480P", "1080P"], ["5"]),
        "wan2.5-t2v-preview": (["480P", "720P", "1080P"], ["5", "10"]),
        "wan2.6-t2v": (["720P", "1080P"], ["5", "10", "15"]),
    }
    for model in videos.values():
        assert model["combos"] == [{"mode": m, "duration": d} for m in model["modes"] for d in model["durations"]]
        assert model["mode_label"] == "Resolution" and model["cameras"] == []
        assert model["cfg_scale"] is False and model["seed"] is True and model["prompt_extend"] is True
        assert model["max_negative_prompt"] == 500
        assert model["max_prompt"] == (1500 if model["id"].startswith(("wan2.5", "wan2.6")) else 800)
        kf2v, t2v = "kf2v" in model["id"], "t2v" in model["id"]
        assert model["image_to_video"] is not t2v and model["text_to_video"] is t2v
        assert model["aspect_ratios"] == (["16:9", "9:16", "1:1"] if t2v else [])
        # A first-and-last-frame model takes (and needs) a tail frame in every cell; no other Wan model does.
        assert model["tail_combos"] == (model["combos"] if kf2v else [])
        assert model.get("tail_required", False) is kf2v
    sounding = {k: (m.get("sound_default"), m.get("sound_switch", True)) for k, m in videos.items()
                if m.get("sound_combos")}
    assert sounding == {"wan2.5-i2v-preview": (True, False), "wan2.6-i2v": (True, False),
                        "wan2.6-i2v-flash": (True, True), "wan2.5-t2v-preview": (True, False)}
    assert "2-15 s" in videos["wan2.6-i2v"]["note"]
    images = {m["id"]: m for m in table["models"] if m["kind"] == "image"}
    assert set(images) == {"wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wanx2.0-t2i-turbo", "wan2.2-t2i-flash",
                           "wan2.2-t2i-plus", "wan2.5-t2i-preview"}
    for model in images.values():
        assert model["seed"] is True and model["prompt_extend"] is True
        assert model["text_to_image"] and not model["image_to_image"] and model["image_reference"] == []
        assert (model["n_min"], model["n_max"], model["max_prompt"], model["max_negative_prompt"]) == (1, 4, 800, 500)
        assert model["aspect_ratios"][0] == "1:1"       # DashScope's own default, 1024*1024


def test_not_configured_without_a_key(make_app):
    app = make_app(DASHSCOPE_API_KEY="")
    assert app.extensions["providers"]["dashscope"].configured() is False


@pytest.mark.parametrize("ratio", list(ds.IMAGE_SIZES))
def test_every_aspect_ratio_maps_to_a_size_dashscope_takes(ratio):
    width, height = ds.IMAGE_SIZES[ratio]
    across, down = map(int, ratio.split(":"))
    assert 512 <= width <= 1440 and 512 <= height <= 1440 and width * height <= 1440 * 1440
    assert width / height == pytest.approx(across / down, rel=0.03)


# ---- full pipelines

def test_video_pipeline_wan22_flash(app, client, fake):
    source = picture(640, 400, fmt="JPEG")
    # Labelled PNG on purpose: the data: URI sent on must name the file's real format.
    task_id = post_video(client, image=b64(source, "image/png"), mode="1080P", duration="5",
                         negative_prompt=NEGATIVE)
    task = finish(app, task_id)
    assert task["status"] == "succeeded", task["error"]

    (body,) = fake.requests_to(VIDEO_PATH)
    assert set(body) == {"model", "input", "parameters"}
    assert body["model"] == "wan2.2-i2v-flash"
    assert set(body["input"]) == {"img_url", "prompt", "negative_prompt"}
    assert body["input"]["prompt"] == PROMPT
    assert body["input"]["negative_prompt"] == NEGATIVE
    stored = (Path(app.config["DATA_DIR"]) / task["inputs"][0]["path"]).read_bytes()   # re-encoded on intake
    assert data_uri_bytes(body["input"]["img_url"]) == ("data:image/jpeg;base64", stored)
    assert body["parameters"] == {"resolution": "1080P", "duration": 5, "prompt_extend": False, "watermark": False}
    # The async header goes on the create only.
    assert [(method, header) for method, _, header in fake.calls] == [("POST", "enable")] + [("GET", None)] * 3

    (remote,) = fake.tasks.values()
    assert (remote["prompt"], remote["prompt_truncated"], remote["img_format"]) == (PROMPT, False, "JPEG")
    assert task["provider_task_id"] == remote["id"] and task["provider_status"] == "SUCCEEDED"
    assert task["cost"] == {"duration": 5, "SR": 1080, "video_count": 1}
    (out,) = task["outputs"]
    # No actual_prompt: the prompt was not rewritten (prompt_extend false).
    assert out["meta"] == {"resolution": "1080P", "duration": 5, "orig_prompt": PROMPT}
    expires = int(parse_qs(urlsplit(out["remote_url"]).query)["Expires"][0])
    assert out["remote_expires_at"] == datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert saved_file(app, out) == sample_mp4() and out["duration"] > 0 and out["thumbnail_url"]
    assert_never_resubmitted(fake)


def test_image_pipeline_wanx21_turbo_with_a_partial_failure(app, client, fake):
    fake.inject("result", "partial")
    task_id = post_image(client, aspect_ratio="16:9", n=2, negative_prompt=NEGATIVE)
    task = finish(app, task_id)
    assert task["status"] == "succeeded", task["error"]

    (body,) = fake.requests_to(IMAGE_PATH)
    assert body == {"model": "wanx2.1-t2i-turbo", "input": {"prompt": PROMPT, "negative_prompt": NEGATIVE},
                    "parameters": {"size": "1280*720", "n": 2, "prompt_extend": False, "watermark": False}}
    (out,) = task["outputs"]                # the image that was made; the failed one is reported
    assert out["meta"] == {"index": 0, "orig_prompt": PROMPT}
    with Image.open(io.BytesIO(saved_file(app, out))) as img:
        assert (img.format, img.size) == ("PNG", (1280, 720))
    code, message = PARTIAL_FAILURE
    assert task["cost"] == {"image_count": 1, "task_metrics": {"TOTAL": 2, "SUCCEEDED": 1, "FAILED": 1},
                            "partial_failures": [{"index": 1, "code": code, "message": message}]}
    status = app.extensions["providers"]["dashscope"].query(task)
    assert status.message == f"1 of 2 images failed: #2 {code}: {message}"
    assert_never_resubmitted(fake)


def test_image_n_is_always_sent(app, client, fake):
    task = finish(app, post_image(client))
    assert task["status"] == "succeeded" and len(task["outputs"]) == 1
    (remote,) = fake.tasks.values()
    assert remote["n"] == 1 and fake.requests_to(IMAGE_PATH)[0]["parameters"]["n"] == 1
    assert remote["size"] == (1024, 1024)   # 1:1, the table's first (default) ratio


def test_video_pipeline_without_prompt_and_the_other_models(app, client, fake):
    task = finish(app, post_video(client, model_name="wanx2.1-i2v-turbo", mode="480P", duration="3", prompt=""))
    assert task["status"] == "succeeded", task["error"]
    (body,) = fake.requests_to(VIDEO_PATH)
    assert set(body["input"]) == {"img_url"}
    assert body["parameters"]["resolution"] == "480P" and body["parameters"]["duration"] == 3
    assert task["cost"] == {"video_duration": 3, "video_ratio": "standard", "video_count": 1}


def test_large_picture_is_scaled_down_and_small_one_scaled_up(app, client, fake):
    task = finish(app, post_video(client, image=b64(picture(2400, 1200, fmt="JPEG"))))
    assert task["status"] == "succeeded", task["error"]
    (remote,) = fake.tasks.values()
    assert (remote["img_format"], remote["img_size"], remote["img_mime"]) == ("JPEG", (2000, 1000), "image/jpeg")

    # Under 360 px (every source's minimum) but over the newest page's 240: scaled up, ratio kept.
    small = finish(app, post_video(client, image=b64(picture(340, 500))))
    assert small["status"] == "succeeded", small["error"]
    remote = fake.tasks[small["provider_task_id"]]
    assert remote["img_size"] == (360, 529)


def test_transparent_png_is_flattened(app, client, fake):
    rgba = np.zeros((400, 640, 4), np.uint8)
    rgba[..., 0], rgba[100:300, 100:500, 3] = 200, 255
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    task = finish(app, post_video(client, image=b64(out.getvalue())))
    assert task["status"] == "succeeded", task["error"]
    header, data = data_uri_bytes(fake.requests_to(VIDEO_PATH)[0]["input"]["img_url"])
    with Image.open(io.BytesIO(data)) as img:
        assert header == "data:image/png;base64" and img.mode == "RGB"
        assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((200, 200)) == (200, 0, 0)


# ---- the capability table refuses what a model does not offer, before anything is sent

@pytest.mark.parametrize("body, field", [
    ({"model_name": "wanx2.1-i2v-plus", "mode": "480P"}, "mode"),
    ({"model_name": "wan2.2-i2v-plus", "mode": "720P"}, "mode"),
    ({"model_name": "wan2.2-i2v-flash", "duration": "10"}, "duration"),
    ({"model_name": "wan2.2-i2v-flash", "duration": "3"}, "duration"),
    ({"model_name": "wanx2.1-i2v-turbo", "duration": "10"}, "duration"),
    ({"prompt": "x" * 801}, "prompt"),
    ({"negative_prompt": "x" * 501}, "negative_prompt"),
    ({"camera": "zoom_in"}, "camera"),
    ({"image_tail": "TAIL"}, "image_tail"),
    ({"model_name": "wan2.1-i2v-turbo"}, "model_name"),         # Singapore's name, not Beijing's
    ({"model_name": "wanx2.1-t2v-plus"}, "image"),              # text only
    ({"seed": 2147483648}, "seed"),
    ({"model_name": "wan2.5-i2v-preview", "sound": False}, "sound"),   # adds audio itself, no switch
    ({"sound": True}, "sound"),                                  # wan2.2 is silent
])
def test_video_values_a_model_does_not_offer_are_refused(client, fake, body, field):
    if body.get("image_tail") == "TAIL":
        body["image_tail"] = b64(picture(640, 400, seed=1))
    resp = client.post("/generate", json={"provider": "dashscope", "model_name": "wan2.2-i2v-flash",
                                          "image": b64(picture(640, 400)), **body})
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"]["field"] == field
    assert fake.received == []


@pytest.mark.parametrize("body, field", [
    ({"n": 5}, "n"),
    ({"aspect_ratio": "5:4"}, "aspect_ratio"),
    ({"prompt": "x" * 801}, "prompt"),
    ({"negative_prompt": "x" * 501}, "negative_prompt"),
    ({"image": "REFERENCE"}, "image"),
])
def test_image_values_a_model_does_not_offer_are_refused(client, fake, body, field):
    if body.get("image") == "REFERENCE":
        body["image"] = b64(picture(640, 400))
    resp = client.post("/generate_image", json={"provider": "dashscope", "model_name": "wanx2.1-t2i-plus",
                                                "prompt": PROMPT, **body})
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"]["field"] == field
    assert fake.received == []


# ---- faults

@pytest.mark.parametrize("fault", ["rate_limit", "allocation_quota"])
def test_throttled_submit_waits_and_is_sent_again(app, client, fake, fault):
    fake.inject("submit", fault)
    task = finish(app, post_video(client))
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to(VIDEO_PATH)) == 2 and task["attempts"] == 2
    assert_never_resubmitted(fake)          # the refused create created nothing


@pytest.mark.parametrize("fault, code", [("overdue", "PrepaidBillOverdue"), ("arrearage", "Arrearage")])
def test_billing_refusal_fails_the_task(app, client, fake, fault, code):
    fake.inject("submit", fault)
    task = finish(app, post_image(client))
    assert task["status"] == "failed" and task["error"]["code"] == "provider_quota"
    assert code in task["error"]["message"] and "top up" in task["error"]["message"]
    assert len(fake.requests_to(IMAGE_PATH)) == 1 and fake.tasks == {}


def test_wrong_key_fails_clearly(make_app, fake):
    app = make_app(DASHSCOPE_API_KEY="sk-wrong")
    task = finish(app, post_video(app.test_client()))
    assert task["status"] == "failed" and task["error"]["code"] == "provider_auth"
    assert "InvalidApiKey" in task["error"]["message"] and "DASHSCOPE_API_KEY" in task["error"]["message"]
    assert "sk-wrong" not in task["error"]["message"] and fake.tasks == {}


def drive(app, task_id, step=timedelta(seconds=15), rounds=40):
    """Run the pipeline on a clock that starts now and moves `step` a round: backoff never holds
    the test up, and submit times stay close to the real ones the server stamps its tasks with."""
    store, providers = app.extensions["task_store"], app.extensions["providers"]
    for i in range(rounds):
        def clock(ahead=step * i):
            return utcnow() + ahead
        task_query.dispatch(store, providers, clock)
        task_query.poll(store, providers, clock)
        task_query.download(store, providers, clock)
        task = store.get(task_id)
        if task["status"] in ("succeeded", "failed", "cancelled") and not task.get("late_check_until"):
            return task
    return store.get(task_id)


def test_submit_refused_with_500_is_not_sent_again_and_fails_with_the_console_hint(app, client, fake):
    fake.inject("submit", "server_error")
    task = drive(app, post_video(client))
    assert task["status"] == "failed" and task["error"]["code"] == "submit_outcome_unknown"
    assert "not sent again" in task["error"]["message"] and "Model Studio console" in task["error"]["message"]
    assert len(fake.requests_to(VIDEO_PATH)) == 1 and fake.tasks == {}


@pytest.mark.parametrize("fault", ["created_then_error", "hang"])
def test_lost_submit_answer_is_reconciled_through_the_task_list(app, client, fake, fault):
    fake.inject("submit", fault)
    started = time.monotonic()
    task_id = post_video(client)
    task = drive(app, task_id)
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to(VIDEO_PATH)) == 1 and len(fake.tasks) == 1 and time.monotonic() - started < 20
    assert task["provider_task_id"] == next(iter(fake.tasks))
    assert_never_resubmitted(fake)
    (listing,) = [call for call in fake.calls if call[0] == "GET" and call[1] == "/tasks/"]
    assert listing[2] is None       # no async header on the list
    journal = submit_journal.for_dir(app.config["DATA_DIR"]).lookup(task_id)
    assert journal.provider_task_id == task["provider_task_id"] and journal.count == 1


def test_lost_submit_with_two_candidates_in_its_window_fails_with_the_hint(app, client, fake):
    other = requests.post(fake.base_url + VIDEO_PATH, headers={"Authorization": f"Bearer {API_KEY}",
                                                               "X-DashScope-Async": "enable"},
                          json={"model": "wan2.2-i2v-flash", "input": {"img_url": b64(picture(640, 400), "image/png")}},
                          timeout=5)
    assert other.status_code == 200
    fake.inject("submit", "created_then_error")
    task = drive(app, post_video(client))
    assert task["status"] == "failed" and task["error"]["code"] == "submit_outcome_unknown"
    assert "2 wan2.2-i2v-flash tasks" in task["error"]["message"]
    assert "Model Studio console" in task["error"]["message"] and task["provider_task_id"] is None
    assert len(fake.tasks) == 2 and len(fake.requests_to(VIDEO_PATH)) == 2


def test_task_list_server_checks_auth_window_and_pages(fake):
    fake.concurrency_limit = 3
    for _ in range(3):
        requests.post(fake.base_url + IMAGE_PATH, headers={"Authorization": f"Bearer {API_KEY}",
                                                           "X-DashScope-Async": "enable"},
                      json={"model": "wanx2.1-t2i-turbo", "input": {"prompt": PROMPT}, "parameters": {"n": 1}},
                      timeout=5).raise_for_status()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert requests.get(fake.base_url + "/tasks/", timeout=5).status_code == 401
    bad = requests.get(fake.base_url + "/tasks/", params={"start_time": "2025-01-01"}, headers=auth, timeout=5)
    assert bad.status_code == 400 and bad.json()["code"] == "InvalidParameter"
    now = datetime.now(ds.BEIJING)
    too_long = {"start_time": f"{now - timedelta(hours=25):%Y%m%d%H%M%S}", "end_time": f"{now:%Y%m%d%H%M%S}"}
    assert requests.get(fake.base_url + "/tasks/", params=too_long, headers=auth, timeout=5).status_code == 400
    seen = []
    for page_no in (1, 2, 3, 4):
        body = requests.get(fake.base_url + "/tasks/", params={"page_no": page_no, "page_size": 1,
                                                               "model_name": "wanx2.1-t2i-turbo"},
                            headers=auth, timeout=5).json()
        assert body["total"] == 3 and body["total_page"] == 3
        seen += [entry["task_id"] for entry in body["data"]]
    assert sorted(seen) == sorted(fake.tasks)
    other_model = requests.get(fake.base_url + "/tasks/", params={"model_name": "wan2.2-i2v-flash"}, headers=auth,
                               timeout=5).json()
    assert other_model["total"] == 0 and other_model["data"] == []


def test_restored_backup_never_submits_a_task_twice(app, client, fake, tmp_path):
    """Backup while queued, run to success, restore the backup, run again: one create, still succeeded."""
    store = app.extensions["task_store"]
    task_id = post_image(client)
    backup = task_backup.take_backup(store, tmp_path / "backups")
    assert finish(app, task_id)["status"] == "succeeded"
    task_backup.restore(app.config["DATA_DIR"], tmp_path / "backups", backup)
    assert store.get(task_id)["status"] == "queued"
    task = finish(app, task_id)
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to(IMAGE_PATH)) == 1 and sum(fake.submissions.values()) == 1
    assert task["provider_task_id"] == next(iter(fake.tasks))


@pytest.mark.parametrize("fault", ["malformed", "server_error"])
def test_bad_query_answers_are_polled_again(app, client, fake, fault):
    fake.inject("query", fault)
    task = finish(app, post_image(client))
    assert task["status"] == "succeeded", task["error"]
    assert len([c for c in fake.calls if c[0] == "GET"]) == 4
    assert_never_resubmitted(fake)


def test_truncated_download_is_fetched_again(app, client, fake):
    fake.inject("download", "truncate")
    task = finish(app, post_video(client))
    assert task["status"] == "succeeded", task["error"]
    assert list(fake.file_hits.values()) == [2]


def test_expired_result_link_fails_the_task(app, client, fake):
    fake.inject("result", "expired_url")
    task = finish(app, post_video(client))
    assert task["status"] == "failed" and task["error"]["code"] == "result_expired"
    assert fake.file_hits == {}


def test_failed_task_reports_the_provider_code(app, client, fake):
    fake.inject("result", "moderation")
    task = finish(app, post_image(client))
    assert task["status"] == "failed" and task["error"]["code"] == "DataInspectionFailed"
    assert task["provider_status"] == "FAILED"


def test_unknown_task_id_fails_the_task(app, client, fake):
    task_id = post_video(client)
    finish(app, task_id, until=("submitted",))
    for remote in fake.tasks.values():
        remote["created"] -= 25 * 3600      # DashScope forgets tasks after 24 h
    task = finish(app, task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "task_unknown"
    assert "24 h" in task["error"]["message"]


def test_in_flight_tasks_are_capped_per_model_as_documented(make_app, fake):
    app = make_app()
    client = app.test_client()
    store, registry = app.extensions["task_store"], app.extensions["providers"]
    turbo = [post_image(client, prompt=f"{PROMPT} #{i}") for i in range(3)]           # cap 2
    preview = [post_image(client, model_name="wan2.5-t2i-preview", prompt=f"{PROMPT} #{i}") for i in range(3)]
    task_query.dispatch(store, registry)
    statuses = [store.get(task_id)["status"] for task_id in turbo + preview]
    # Two of wanx2.1-t2i-turbo (its cap) and all three of wan2.5-t2i-preview (cap 5): the third turbo
    # waits in the studio instead of meeting DashScope's 429, and does not hold back the other model.
    assert statuses == ["submitted", "submitted", "queued"] + ["submitted"] * 3
    for task_id in turbo + preview:
        assert finish(app, task_id)["status"] == "succeeded"
    assert len(creates(fake)) == 6 and len(fake.tasks) == 6
    assert_never_resubmitted(fake)


def test_third_task_in_flight_is_throttled_then_sent(make_app, fake):
    fake.concurrency_limit = 1      # an account below the documented cap meets DashScope's 429
    app = make_app()
    client = app.test_client()
    ids = [post_image(client, prompt=f"{PROMPT} #{i}") for i in range(2)]
    for task_id in ids:
        assert finish(app, task_id)["status"] == "succeeded"
    # The second create was refused (429 Throttling.RateQuota) until a slot freed up, creating nothing.
    assert len(fake.requests_to(IMAGE_PATH)) > 2 and len(fake.tasks) == 2
    assert_never_resubmitted(fake)


# ---- cancel

def test_cancel_while_pending_stops_the_task_at_dashscope(app, client, fake):
    task_id = post_video(client)
    assert finish(app, task_id, until=("submitted",))["provider_status"] == "PENDING"
    assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 200
    task_query.poll(app.extensions["task_store"], app.extensions["providers"])
    task = app.extensions["task_store"].get(task_id)
    assert task["status"] == "cancelled" and not task["cancel_requested"] and task["cancel_note"] is None
    assert [remote["status"] for remote in fake.tasks.values()] == ["CANCELED"]


def test_cancel_while_running_is_refused_honestly(app, client, fake):
    task_id = post_video(client)
    finish(app, task_id, until=("running",))
    assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 200
    task_query.poll(app.extensions["task_store"], app.extensions["providers"])
    task = app.extensions["task_store"].get(task_id)
    assert task["status"] == "cancelled" and "could not stop" in task["cancel_note"]
    assert [remote["status"] for remote in fake.tasks.values()] == ["RUNNING"]
    assert len(fake.requests_to("/cancel")) == 1
    # The refusal is an answer, not an error: cancel() says False and raises nothing.
    assert app.extensions["providers"]["dashscope"].cancel(task) is False


# ---- reuse by a proxy of the same protocol (the later ai302 provider)

class ProxyProvider(DashScopeProvider):
    name = "proxy"

    def api_key(self):
        return self.config.get("PROXY_KEY")

    def api_base(self):
        return self.config["PROXY_BASE"] + "/aliyun/api/v1"


def test_protocol_reused_under_another_base_and_key(make_app):
    proxy = Server(api_key="sk-302", prefix="/aliyun/api/v1")
    proxy.start()
    try:
        app = make_app(PROXY_KEY="sk-302", PROXY_BASE=proxy.base_url)
        app.extensions["providers"]["proxy"] = ProxyProvider(app.config)
        task = finish(app, post_image(app.test_client(), provider="proxy"))
        assert task["status"] == "succeeded", task["error"]
        assert proxy.requests_to("/aliyun/api/v1" + IMAGE_PATH)[0]["parameters"]["n"] == 1
    finally:
        proxy.stop()


# ---- the local server itself, held to the protocol

def api(fake, method, path, key=API_KEY, asynchronous=True, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if asynchronous:
        headers["X-DashScope-Async"] = "enable"
    resp = requests.request(method, fake.base_url + path, headers=headers, timeout=5, **kwargs)
    return resp.status_code, resp.json()


def image_create(fake, **parameters):
    return api(fake, "POST", IMAGE_PATH, json={"model": "wanx2.1-t2i-turbo", "input": {"prompt": "a kite"},
                                               "parameters": parameters})


def test_server_protocol_rules(fake):
    status, body = api(fake, "POST", IMAGE_PATH, asynchronous=False, json={"model": "wanx2.1-t2i-turbo"})
    assert (status, body["code"], body["message"]) == (
        403, "AccessDenied", "current user api does not support synchronous calls")
    assert {"code", "message", "request_id"} <= set(body)
    assert api(fake, "GET", "/tasks/x", key=None)[1]["message"] == "No API-key provided."
    assert image_create(fake, size="1024x1024")[0] == 400
    assert image_create(fake, size="400*400")[1]["code"] == "InvalidParameter"
    raw = base64.b64encode(picture(640, 400)).decode()
    status, body = api(fake, "POST", VIDEO_PATH, json={"model": "wan2.2-i2v-flash", "input": {"img_url": raw}})
    assert (status, body["code"]) == (400, "InvalidParameter")
    assert api(fake, "GET", "/tasks/no-such-task")[1]["output"]["task_status"] == "UNKNOWN"
    assert api(fake, "POST", "/tasks/no-such-task/cancel")[1]["code"] == "UnsupportedOperation"
    assert fake.tasks == {}


def test_server_makes_four_images_when_n_is_left_out(fake):
    status, body = image_create(fake)
    assert status == 200
    for _ in range(3):
        status, answer = api(fake, "GET", f"/tasks/{body['output']['task_id']}", asynchronous=False)
    assert answer["output"]["task_status"] == "SUCCEEDED" and answer["usage"] == {"image_count": 4}
    assert len(answer["output"]["results"]) == 4


def test_usage_lines():
    assert usage("http://127.0.0.1:9001") == [
        f"DASHSCOPE_API_BASE=http://127.0.0.1:9001 DASHSCOPE_API_KEY={API_KEY}"]


# ---- the official SDK against the local server: same protocol both ways

@pytest.fixture
def sdk(fake):
    import dashscope
    from dashscope.api_entities.http_request import close_shared_sync_session

    saved = dashscope.base_http_api_url, dashscope.api_key
    dashscope.base_http_api_url, dashscope.api_key = fake.base_url, API_KEY
    yield dashscope
    dashscope.base_http_api_url, dashscope.api_key = saved
    close_shared_sync_session()


def sdk_wait(fetch, task_id):
    for _ in range(5):
        resp = fetch(task_id)
        assert resp.status_code == 200, resp.message
        if resp.output.task_status not in ("PENDING", "RUNNING"):
            return resp
    raise AssertionError("the task did not finish")


def test_official_sdk_video_matches_our_client(app, client, fake, sdk):
    source = picture(640, 400)
    ours = finish(app, post_video(client, image=b64(source), mode="720P", negative_prompt=NEGATIVE))
    assert ours["status"] == "succeeded"

    created = sdk.VideoSynthesis.async_call(
        model="wan2.2-i2v-flash", prompt=PROMPT, negative_prompt=NEGATIVE, resolution="720P", duration=5,
        img_url="data:image/png;base64," + base64.b64encode(source).decode(), prompt_extend=False,
        watermark=False)
    assert created.status_code == 200 and created.output.task_status == "PENDING"
    done = sdk_wait(sdk.VideoSynthesis.fetch, created.output.task_id)
    assert done.output.task_status == "SUCCEEDED" and done.output.video_url.startswith(fake.base_url)
    assert done.usage.video_count == 1 and done.usage["SR"] == 720

    mine, theirs = fake.requests_to(VIDEO_PATH)
    assert set(mine) == set(theirs) == {"model", "input", "parameters"}
    assert mine["model"] == theirs["model"] and mine["parameters"] == theirs["parameters"]
    # The SDK adds two input fields of its own (a deprecated `extend_prompt` and `function`).
    assert mine["input"] == {k: v for k, v in theirs["input"].items() if k not in ("extend_prompt", "function")}
    assert [header for method, _, header in fake.calls if method == "POST"] == ["enable", "enable"]


def test_official_sdk_image_matches_our_client(app, client, fake, sdk):
    ours = finish(app, post_image(client, aspect_ratio="9:16", n=2, negative_prompt=NEGATIVE))
    assert ours["status"] == "succeeded" and len(ours["outputs"]) == 2

    created = sdk.ImageSynthesis.async_call(model="wanx2.1-t2i-turbo", prompt=PROMPT, negative_prompt=NEGATIVE,
                                            n=2, size="720*1280", prompt_extend=False, watermark=False)
    assert created.status_code == 200
    done = sdk_wait(sdk.ImageSynthesis.fetch, created.output.task_id)
    assert done.output.task_status == "SUCCEEDED" and done.usage.image_count == 2
    assert all(result.url.startswith(fake.base_url) for result in done.output.results)
    mine, theirs = fake.requests_to(IMAGE_PATH)
    assert mine == theirs


def test_official_sdk_errors_and_truncation(fake, sdk):
    refused = sdk.VideoSynthesis.async_call(model="wan2.2-i2v-flash", prompt=PROMPT, api_key="sk-wrong",
                                            img_url="data:image/png;base64," + b64(picture(640, 400)))
    assert (refused.status_code, refused.code) == (401, "InvalidApiKey")
    raw = sdk.VideoSynthesis.async_call(model="wan2.2-i2v-flash", prompt=PROMPT, img_url=b64(picture(640, 400)))
    assert (raw.status_code, raw.code) == (400, "InvalidParameter")
    assert fake.tasks == {}

    long = sdk.ImageSynthesis.async_call(model="wanx2.1-t2i-plus", prompt="y" * 900, n=1)
    assert long.status_code == 200
    remote = fake.tasks[long.output.task_id]
    assert remote["prompt"] == "y" * 800 and remote["prompt_truncated"] is True
    cancelled = sdk.ImageSynthesis.cancel(long.output.task_id)
    assert cancelled.status_code == 200 and remote["status"] == "CANCELED"
    assert sdk_wait(sdk.ImageSynthesis.fetch, long.output.task_id).output.task_status == "CANCELED"


def test_official_sdk_lists_tasks_like_our_reconcile(app, client, fake, sdk):
    fake.inject("submit", "created_then_error")
    ours = drive(app, post_video(client))
    assert ours["status"] == "succeeded"
    now = datetime.now(ds.BEIJING)
    listed = sdk.VideoSynthesis.list(start_time=f"{now - timedelta(hours=1):%Y%m%d%H%M%S}",
                                     end_time=f"{now + timedelta(minutes=5):%Y%m%d%H%M%S}",
                                     model_name="wan2.2-i2v-flash", page_no=1, page_size=10)
    assert listed.status_code == 200
    assert [entry["task_id"] for entry in listed.output["data"]] == [ours["provider_task_id"]]
    mine, theirs = fake.list_queries
    assert set(mine) == set(theirs) == {"start_time", "end_time", "model_name", "page_no", "page_size"}
    assert mine["model_name"] == theirs["model_name"] and len(mine["start_time"]) == len(theirs["start_time"]) == 14


def test_a_restored_task_whose_submit_was_unanswered_is_reconciled_not_sent_again(app, client, fake, tmp_path):
    """Backup while queued; the submit is created but its answer lost; restore: reconciled, one create."""
    store = app.extensions["task_store"]
    task_id = post_video(client)
    backup = task_backup.take_backup(store, tmp_path / "backups")
    fake.inject("submit", "created_then_error")
    task_query.dispatch(store, app.extensions["providers"])
    assert store.get(task_id)["status"] == "queued" and store.get(task_id)["submit_started_at"]
    task_backup.restore(app.config["DATA_DIR"], tmp_path / "backups", backup)
    assert not store.get(task_id).get("submit_started_at")      # the record has forgotten the attempt
    task = drive(app, task_id)
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to(VIDEO_PATH)) == 1 and len(fake.tasks) == 1
    assert task["provider_task_id"] == next(iter(fake.tasks))


# ---- newer models (PROVIDERS.md §9.2): kf2v, wan2.5/2.6, text-to-video, wan2.2/2.5 text-to-image

def test_first_and_last_frame_video_goes_to_its_own_endpoint(app, client, fake):
    first, last = picture(640, 400, fmt="JPEG"), picture(800, 500, seed=3, fmt="JPEG")
    task_id = post_video(client, model_name="wan2.2-kf2v-flash", image=b64(first), image_tail=b64(last),
                         mode="1080P", seed=77)
    task = finish(app, task_id)
    assert task["status"] == "succeeded", task["error"]
    assert fake.requests_to(VIDEO_PATH) == []
    (body,) = fake.requests_to(ds.KF2V_PATH)
    assert body["model"] == "wan2.2-kf2v-flash" and set(body["input"]) == {"first_frame_url", "last_frame_url",
                                                                           "prompt"}
    stored = {item["role"]: (Path(app.config["DATA_DIR"]) / item["path"]).read_bytes() for item in task["inputs"]}
    assert data_uri_bytes(body["input"]["first_frame_url"]) == ("data:image/jpeg;base64", stored["first"])
    assert data_uri_bytes(body["input"]["last_frame_url"]) == ("data:image/jpeg;base64", stored["tail"])
    assert body["parameters"] == {"resolution": "1080P", "duration": 5, "prompt_extend": False,
                                  "watermark": False, "seed": 77}
    (remote,) = fake.tasks.values()
    assert remote["endpoint"] == "kf2v" and remote["last_img_size"] == (800, 500) and remote["seed"] == 77
    assert saved_file(app, task["outputs"][0]) == sample_mp4()
    assert_never_resubmitted(fake)


def test_first_and_last_frame_model_needs_both_frames(client, fake):
    resp = client.post("/generate", json={"provider": "dashscope", "model_name": "wanx2.1-kf2v-plus",
                                          "image": b64(picture(640, 400))})
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == "image_tail"
    assert fake.received == []


def test_server_keeps_kf2v_and_image_to_video_apart(fake):
    frame = "data:image/png;base64," + base64.b64encode(picture(640, 400)).decode()
    status, body = api(fake, "POST", ds.KF2V_PATH, json={"model": "wan2.2-kf2v-flash", "input": {"img_url": frame}})
    assert status == 400 and "first_frame_url" in body["message"]
    status, _ = api(fake, "POST", VIDEO_PATH, json={"model": "wan2.2-kf2v-flash", "input": {
        "first_frame_url": frame, "last_frame_url": frame}})
    assert status == 400
    status, body = api(fake, "POST", VIDEO_PATH, json={"model": "wan2.2-i2v-flash", "input": {"img_url": frame},
                                                       "parameters": {"audio": True}})
    assert status == 400 and "audio" in body["message"]
    status, body = api(fake, "POST", VIDEO_PATH, json={"model": "wan2.6-t2v", "input": {"prompt": PROMPT},
                                                       "parameters": {"size": "832*480"}})
    assert status == 400 and "size" in body["message"]          # 480P is not a wan2.6 tier
    assert fake.tasks == {}


def test_wan26_flash_audio_switch_and_seed(app, client, fake):
    task = finish(app, post_video(client, model_name="wan2.6-i2v-flash", mode="720P", duration="12", sound=False,
                                  prompt_extend=True, seed=0))
    assert task["status"] == "succeeded", task["error"]
    (body,) = fake.requests_to(VIDEO_PATH)
    assert body["parameters"] == {"resolution": "720P", "duration": 12, "audio": False, "prompt_extend": True,
                                  "watermark": False, "seed": 0}
    assert task["params"]["sound"] is False
    (remote,) = fake.tasks.values()
    assert remote["audio"] is False and task["outputs"][0]["meta"]["actual_prompt"].endswith("prompt_extend)")
    # Left out, the documented default (audio on) is what the task records and sends.
    again = finish(app, post_video(client, model_name="wan2.6-i2v-flash", mode="1080P", duration="5"))
    assert again["params"]["sound"] is True and fake.requests_to(VIDEO_PATH)[1]["parameters"]["audio"] is True


def test_wan25_image_to_video_with_its_own_audio_for_ten_seconds(app, client, fake):
    long_prompt = "a slow pan over the harbour " * 50      # 1400 characters: over 800, within 2.5's 1500
    task = finish(app, post_video(client, model_name="wan2.5-i2v-preview", mode="480P", duration="10",
                                  prompt=long_prompt.strip()))
    assert task["status"] == "succeeded", task["error"]
    (body,) = fake.requests_to(VIDEO_PATH)
    assert "audio" not in body["parameters"] and body["parameters"]["duration"] == 10
    (remote,) = fake.tasks.values()
    assert remote["audio"] is True and remote["prompt_truncated"] is False
    assert task["params"]["sound"] is True


def test_text_to_video_sends_an_exact_size(app, client, fake):
    resp = client.post("/generate", json={"provider": "dashscope", "model_name": "wan2.5-t2v-preview",
                                          "prompt": PROMPT, "mode": "720P", "duration": "10", "aspect_ratio": "9:16"})
    assert resp.status_code == 202, resp.get_json()
    task = finish(app, resp.get_json()["task_id"])
    assert task["status"] == "succeeded", task["error"]
    (body,) = fake.requests_to(VIDEO_PATH)
    assert body["input"] == {"prompt": PROMPT}
    assert body["parameters"] == {"size": "720*1280", "duration": 10, "prompt_extend": False, "watermark": False}
    (remote,) = fake.tasks.values()
    assert (remote["resolution"], remote["size"]) == ("720P", "720*1280")
    assert task["outputs"][0]["meta"]["resolution"] == "720P"


@pytest.mark.parametrize("model, size", [("wan2.5-t2i-preview", "1728*960"), ("wan2.2-t2i-flash", "1280*720")])
def test_newer_text_to_image_models(app, client, fake, model, size):
    task = finish(app, post_image(client, model_name=model, aspect_ratio="16:9", seed=5, prompt_extend=True))
    assert task["status"] == "succeeded", task["error"]
    (body,) = fake.requests_to(IMAGE_PATH)
    assert body["parameters"] == {"size": size, "n": 1, "prompt_extend": True, "watermark": False, "seed": 5}
    assert task["params"]["seed"] == 5 and task["params"]["prompt_extend"] is True
    assert task["outputs"][0]["meta"]["actual_prompt"]


@pytest.mark.parametrize("ratio", list(ds.LARGE_IMAGE_SIZES))
def test_wan25_image_sizes_satisfy_both_readings(ratio):
    width, height = ds.LARGE_IMAGE_SIZES[ratio]
    across, down = map(int, ratio.split(":"))
    assert 1280 * 1280 <= width * height <= 1440 * 1440 and 1 / 4 <= width / height <= 4
    assert width / height == pytest.approx(across / down, rel=0.03)


# ---- regions (§9.2(e))

def test_singapore_region_offers_its_models_at_its_url(make_app, tmp_path):
    app = make_app(DASHSCOPE_REGION="singapore", DASHSCOPE_API_BASE="")
    provider = app.extensions["providers"]["dashscope"]
    assert provider.api_base() == "https://dashscope-intl.aliyuncs.com/api/v1"
    ids = [m["id"] for m in provider.capabilities()["models"]]
    assert ids == ds.REGIONS["singapore"]["models"]
    assert "wan2.1-i2v-turbo" in ids and not any(i.startswith("wanx") for i in ids)
    assert "wan2.2-i2v-flash" not in ids and "wanx2.0-t2i-turbo" not in ids


def test_singapore_task_end_to_end(make_app):
    fake = Server(polls_to_finish=2, region="singapore")
    fake.start()
    try:
        app = make_app(DASHSCOPE_REGION="singapore", DASHSCOPE_API_BASE=fake.base_url)
        client = app.test_client()
        refused = client.post("/generate", json={"provider": "dashscope", "model_name": "wanx2.1-i2v-turbo",
                                                 "image": b64(picture(640, 400))})
        assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "unknown_model"
        task_id = post_video(client, model_name="wan2.1-kf2v-plus", image_tail=b64(picture(640, 400, seed=2)),
                             mode="720P")
        task = finish(app, task_id)
        assert task["status"] == "succeeded", task["error"]
        assert [body["model"] for body in fake.requests_to(ds.KF2V_PATH)] == ["wan2.1-kf2v-plus"]
        # The local server holds the region's model list like a Singapore key: a Beijing name is not found.
        frame = "data:image/png;base64," + base64.b64encode(picture(640, 400)).decode()
        status, body = api(fake, "POST", VIDEO_PATH, json={"model": "wanx2.1-i2v-turbo", "input": {"img_url": frame}})
        assert status == 404 and body["code"] == "ModelNotFound" and body["message"] == "Model can not be found."
    finally:
        fake.stop()


def test_virginia_offers_only_wan26_and_no_pictures(make_app):
    app = make_app(DASHSCOPE_REGION="virginia", DASHSCOPE_API_BASE="")
    table = app.extensions["providers"]["dashscope"].capabilities()
    assert app.extensions["providers"]["dashscope"].api_base() == "https://dashscope-us.aliyuncs.com/api/v1"
    assert [m["id"] for m in table["models"]] == ["wan2.6-i2v", "wan2.6-i2v-us", "wan2.6-t2v", "wan2.6-t2v-us"]
    resp = app.test_client().post("/generate_image", json={"provider": "dashscope", "prompt": PROMPT})
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "unknown_model"


def test_region_setting_is_checked_at_start():
    import config

    assert config.load_settings({"DASHSCOPE_REGION": "Singapore"})[0].DASHSCOPE_REGION == "singapore"
    with pytest.raises(config.SettingsError, match="DASHSCOPE_REGION"):
        config.load_settings({"DASHSCOPE_REGION": "mars"})
    with pytest.raises(config.SettingsError, match="workspace"):
        config.load_settings({"DASHSCOPE_REGION": "frankfurt"})
    assert config.load_settings({"DASHSCOPE_REGION": "frankfurt", "DASHSCOPE_API_BASE": "https://w.example/api/v1"})


def test_official_sdk_kf2v_is_accepted_like_our_client(app, client, fake, sdk):
    frame = "data:image/png;base64," + base64.b64encode(picture(640, 400)).decode()
    created = sdk.VideoSynthesis.async_call(model="wan2.2-kf2v-flash", prompt=PROMPT, first_frame_url=frame,
                                            last_frame_url=frame, resolution="720P", prompt_extend=False)
    assert created.status_code == 200, created.message
    done = sdk_wait(sdk.VideoSynthesis.fetch, created.output.task_id)
    assert done.output.task_status == "SUCCEEDED"
    (theirs,) = fake.requests_to(ds.KF2V_PATH)
    assert {"first_frame_url", "last_frame_url"} <= set(theirs["input"])
