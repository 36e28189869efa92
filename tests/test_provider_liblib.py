"""The Liblib Star-3 Alpha client against the local Liblib server: pipelines, requests, faults, refusals."""

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from PIL import Image

import providers.http
import task_query
from app import create_app
from errors import ProviderRejected
from providers import liblib
from providers.base import QUEUED, RUNNING, SUCCEEDED
from providers.liblib import IMG2IMG_TEMPLATE, TEXT2IMG_TEMPLATE, LiblibProvider
from tests.conftest import b64, picture, run_pipeline
from tests.fakes.liblib import ACCESS_KEY, OSS_FIELDS, SECRET_KEY, Server, expected_signature

ROOT = Path(__file__).resolve().parent.parent
T2I, I2I = "/api/generate/webui/text2img/ultra", "/api/generate/webui/img2img/ultra"
STATUS, UPLOAD = "/api/generate/webui/status", "/api/generate/upload/signature"


@pytest.fixture
def studio(tmp_path, monkeypatch):
    """make(**server options, config=...) -> (app, fake Liblib server), both torn down after the test."""
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    servers = []

    def make(config=None, **server_options):
        server_options.setdefault("polls_to_finish", 3)
        if server_options.get("submit_qps", 1.0) is None:
            monkeypatch.setattr(liblib, "SUBMIT_INTERVAL", 0)      # a server without the QPS limit: no spacing
        fake = Server(**server_options)
        fake.start()
        servers.append(fake)
        app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "BACKUP_DIR": str(tmp_path / "bk"),
                          "SECRET_KEY": "t", "LIBLIB_API_BASE": fake.base_url, "LIBLIB_ACCESS_KEY": ACCESS_KEY,
                          "LIBLIB_SECRET_KEY": SECRET_KEY, "HTTP_TIMEOUT_SECONDS": 1, **(config or {})})
        return app, fake

    yield make
    for fake in servers:
        fake.stop()


def create(app, prompt, status=202, **body):
    body = {"provider": "liblib", "model_name": "star-3-alpha-t2i", "prompt": prompt, **body}
    resp = app.test_client().post("/generate_image", json=body)
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()["task_id"] if status == 202 else resp.get_json()["error"]


def task_json(app, task_id):
    return app.test_client().get(f"/api/tasks/{task_id}").get_json()


def assert_every_call_signed(fake):
    """Each call reached the API with a fresh, valid signature over its own path."""
    assert fake.auth_log
    nonces = [entry["params"]["SignatureNonce"] for entry in fake.auth_log]
    assert len(set(nonces)) == len(nonces)
    for entry in fake.auth_log:
        params = entry["params"]
        assert entry["verdict"] == "ok"
        assert set(params) == {"AccessKey", "Signature", "Timestamp", "SignatureNonce"}
        assert params["AccessKey"] == ACCESS_KEY
        assert abs(int(params["Timestamp"]) - time.time() * 1000) < 60_000
        assert uuid.UUID(params["SignatureNonce"]).version == 4
        assert params["Signature"] == expected_signature(SECRET_KEY, entry["path"], params["Timestamp"],
                                                         params["SignatureNonce"])
        assert "=" not in params["Signature"] and "+" not in params["Signature"] and "/" not in params["Signature"]


def saved_pictures(app, task):
    pictures = []
    for out in task["outputs"]:
        path = f"{app.config['DATA_DIR']}/{out['path']}"
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and (img.width, img.height) == (out["width"], out["height"])
            pictures.append(img.size)
    return pictures


def signed_post(fake, path, body=None, *, secret=SECRET_KEY, timestamp=None, nonce=None, **kwargs):
    """A request signed the way Liblib documents it, for probing the fake directly."""
    timestamp = timestamp or str(int(time.time() * 1000))
    nonce = nonce or str(uuid.uuid4())
    params = {"AccessKey": ACCESS_KEY, "Signature": expected_signature(secret, path, timestamp, nonce),
              "Timestamp": timestamp, "SignatureNonce": nonce}
    with requests.post(fake.base_url + path, params=params, json=body, timeout=5, **kwargs) as resp:
        return resp.status_code, resp.json()


# ---- the signature and the table ----

def test_signature_matches_a_vector_computed_with_openssl():
    # printf '/api/genImg&1725458584000&random1232' | openssl dgst -sha1 -hmac <SK> -binary | base64, URL-safe, no =
    args = ("KppKsn7ezZxhi6lIDjbo7YyVYzanSu2d", "/api/genImg", "1725458584000", "random1232")
    assert liblib.signature(*args) == expected_signature(*args) == "v8LFs5whUd1L23JFHAGZq2_mYLw"


def test_capability_table(studio):
    app, _ = studio()
    table = app.extensions["providers"]["liblib"].capabilities()
    assert table["configured"] is True
    t2i, i2i, custom = table["models"]
    assert custom["id"] == "liblib-custom" and custom["advanced"]["loras"]["max"] == 5
    assert (t2i["id"], t2i["text_to_image"], t2i["image_to_image"]) == ("star-3-alpha-t2i", True, False)
    assert (i2i["id"], i2i["text_to_image"], i2i["image_to_image"]) == ("star-3-alpha-i2i", False, True)
    assert t2i["aspect_ratios"] == ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9"]
    assert i2i["aspect_ratios"] == ["source"]
    for model in (t2i, i2i):
        assert (model["n_min"], model["n_max"], model["max_prompt"]) == (1, 4, 2000)
        assert model["negative_prompt"] is False and model["image_fidelity"] is False
        assert model["human_fidelity"] is False and model["image_reference"] == []
    unconfigured = LiblibProvider({**app.config, "LIBLIB_SECRET_KEY": ""})
    assert unconfigured.configured() is False and unconfigured.capabilities()["configured"] is False


# ---- full pipelines ----

def test_text_to_image_end_to_end(studio):
    app, fake = studio()
    task_id = create(app, "a lighthouse at dawn, watercolour", n=2, aspect_ratio="1:1")
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert saved_pictures(app, task) == [(256, 256), (256, 256)]
    for out in task["outputs"]:
        assert out["meta"] == {"seed": out["meta"]["seed"], "images_requested": 2, "images_passed_audit": 2}
        expires = datetime.fromisoformat(out["remote_expires_at"].replace("Z", "+00:00"))
        assert timedelta(days=6, hours=23) < expires - datetime.now(UTC) <= timedelta(days=7)
    assert fake.requests_to(T2I) == [{"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": {
        "prompt": "a lighthouse at dawn, watercolour", "aspectRatio": "square", "imgCount": 2}}]
    polls = fake.requests_to(STATUS)
    assert polls == [{"generateUuid": task["provider_task_id"]}] * 4      # statuses 1, 2, 4, 5
    assert fake.requests_to(UPLOAD) == [] and fake.oss_posts == []
    assert_every_call_signed(fake)
    assert fake.submissions == {"a lighthouse at dawn, watercolour": 1}
    seen = task_json(app, task_id)
    assert seen["cost"] == {"points": 20, "account_balance": 100_000 - 20}
    assert seen["provider_status"] == "5"


def test_statuses_move_from_queued_through_running_to_succeeded(studio):
    app, _ = studio()
    provider = app.extensions["providers"]["liblib"]
    task = {"id": "t1", "model": "star-3-alpha-t2i", "inputs": [],
            "params": {"prompt": "a fox", "aspect_ratio": "3:4", "n": 1}}
    task["provider_task_id"] = provider.submit(task)
    states = [provider.query(task) for _ in range(4)]
    assert [(s.state, s.raw_status) for s in states] == [(QUEUED, "1"), (RUNNING, "2"), (RUNNING, "4"),
                                                         (SUCCEEDED, "5")]
    assert states[-1].cost == {"points": 10, "account_balance": 100_000 - 10}


RATIO_FIELDS = {
    "1:1": {"aspectRatio": "square"}, "3:4": {"aspectRatio": "portrait"}, "16:9": {"aspectRatio": "landscape"},
    "9:16": {"imageSize": {"width": 720, "height": 1280}}, "4:3": {"imageSize": {"width": 1024, "height": 768}},
    "3:2": {"imageSize": {"width": 1152, "height": 768}}, "2:3": {"imageSize": {"width": 768, "height": 1152}},
    "21:9": {"imageSize": {"width": 1344, "height": 576}}}


def test_every_aspect_ratio_is_sent_as_a_preset_or_an_exact_size(studio):
    app, fake = studio(submit_qps=None, concurrency=len(RATIO_FIELDS))
    provider = app.extensions["providers"]["liblib"]
    assert set(RATIO_FIELDS) == set(provider.capabilities()["models"][0]["aspect_ratios"])
    for ratio, field in RATIO_FIELDS.items():
        task = {"id": ratio, "model": "star-3-alpha-t2i", "inputs": [],
                "params": {"prompt": f"dunes {ratio}", "aspect_ratio": ratio, "n": 1}}
        assert provider.submit(task)
        assert fake.requests_to(T2I)[-1] == {"templateUuid": TEXT2IMG_TEMPLATE,
                                             "generateParams": {"prompt": f"dunes {ratio}", **field, "imgCount": 1}}
        if "imageSize" in field:
            w, h = (int(x) for x in ratio.split(":"))
            size = field["imageSize"]
            assert min(size.values()) >= 512 and max(size.values()) <= 2048
            assert size["width"] * h == size["height"] * w
    assert sum(fake.submissions.values()) == 8


def test_wide_ratio_end_to_end_gives_pictures_of_that_shape(studio):
    app, _ = studio()
    task = run_pipeline(app, create(app, "a panorama of mountains", aspect_ratio="21:9"), skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    ((width, height),) = saved_pictures(app, task)
    assert width / height == pytest.approx(21 / 9, rel=0.02)


@pytest.mark.parametrize("fmt,extension", [("PNG", "png"), ("JPEG", "jpg")])
def test_image_to_image_end_to_end_with_upload(studio, fmt, extension):
    app, fake = studio()
    reference = picture(640, 400, fmt=fmt)
    task_id = create(app, "the same street in winter", model_name="star-3-alpha-i2i", image=b64(reference))
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    ((width, height),) = saved_pictures(app, task)
    assert width / height == pytest.approx(640 / 400, rel=0.02)     # the result keeps the reference's shape

    assert fake.requests_to(UPLOAD) == [{"name": task_id, "extension": extension}]
    (upload,) = fake.oss_posts
    assert upload["fields"] == OSS_FIELDS                       # `file` last
    assert upload["query"] == ""                                # no Liblib signature sent to OSS
    assert not {"Authorization", "Accesskey", "Signature"} & set(upload["headers"])
    stored = (Path(app.config["DATA_DIR"]) / task["inputs"][0]["path"]).read_bytes()   # re-encoded on intake
    assert upload["file_name"] == f"{task_id}.{extension}" and upload["file_bytes"] == len(stored)
    (key,) = fake.objects
    assert fake.objects[key][0] == stored
    assert fake.requests_to(I2I) == [{"templateUuid": IMG2IMG_TEMPLATE, "generateParams": {
        "prompt": "the same street in winter", "sourceImage": fake.object_url(key), "imgCount": 1}}]
    assert fake.requests_to(T2I) == []
    assert_every_call_signed(fake)
    assert fake.submissions == {"the same street in winter": 1}
    assert task_json(app, task_id)["cost"]["points"] == 10


def test_image_to_image_without_prompt_is_refused_before_anything_is_sent(studio):
    app, fake = studio()
    error = create(app, "", status=400, model_name="star-3-alpha-i2i", image=b64(picture()))
    assert error["code"] == "prompt_required" and error["field"] == "prompt"
    assert fake.received == [] and fake.oss_posts == [] and len(app.extensions["task_store"]) == 0


# ---- faults ----

def test_rate_limited_submit_is_retried_later_and_sent_once(studio):
    app, fake = studio()
    fake.inject("submit", "429")
    task_id = create(app, "rate limited cat")
    store, registry = app.extensions["task_store"], app.extensions["providers"]
    task_query.dispatch(store, registry)
    waiting = store.get(task_id)
    assert waiting["status"] == "queued" and "rate-limiting" in waiting["last_error"]
    assert fake.submissions == {}
    time.sleep(1.05)         # Liblib's 1 submit a second
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to(T2I)) == 2 and fake.submissions == {"rate limited cat": 1}


@pytest.mark.parametrize("fault", ["500", "hang"])
def test_ambiguous_submit_fails_clearly_and_is_never_resent(studio, fault):
    app, fake = studio()
    fake.inject("submit", fault)
    task = run_pipeline(app, create(app, f"ambiguous {fault}"), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "submit_outcome_unknown"
    assert "not sent again" in task["error"]["message"]
    assert len(fake.requests_to(T2I)) == 1 and fake.submissions == {f"ambiguous {fault}": 1}


def test_malformed_status_answer_is_polled_again(studio):
    app, fake = studio()
    fake.inject("query", "malformed")
    task = run_pipeline(app, create(app, "malformed status"), skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to(STATUS)) == 5 and fake.submissions == {"malformed status": 1}


def test_failed_status_query_is_repeated_with_a_fresh_signature(studio):
    app, fake = studio()
    fake.inject("query", "503", "503")
    task = run_pipeline(app, create(app, "busy status"), skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to(STATUS)) == 6
    assert_every_call_signed(fake)           # a retry reusing its nonce would be refused


def test_truncated_download_is_fetched_again(studio):
    app, fake = studio()
    fake.inject("download", "truncate")
    task = run_pipeline(app, create(app, "truncated download"), skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    saved_pictures(app, task)
    assert sorted(fake.file_hits.values()) == [2] and fake.submissions == {"truncated download": 1}


def test_expired_result_link_fails_the_task(studio, monkeypatch):
    app, fake = studio()
    fake.inject("outcome", "expired_url")
    # The studio was down for over a week: the links Liblib gives are 7 days old and dead.
    monkeypatch.setattr(liblib, "URL_LIFETIME", timedelta(minutes=-1))
    task = run_pipeline(app, create(app, "expired link"), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "result_expired"
    with requests.get(task["outputs"][0]["remote_url"], timeout=5) as resp:
        assert resp.status_code == 403
    assert fake.submissions == {"expired link": 1}


def test_one_blocked_picture_keeps_the_others_and_says_so(studio):
    app, fake = studio()
    fake.inject("outcome", "audit_one")
    task = run_pipeline(app, create(app, "three owls", n=3), skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert len(saved_pictures(app, task)) == 2
    for out in task["outputs"]:
        assert out["meta"]["images_requested"] == 3 and out["meta"]["images_passed_audit"] == 2
        assert "blocked 1 of 3" in out["meta"]["audit_note"]


def test_all_pictures_blocked_is_a_moderation_failure(studio):
    app, fake = studio()
    fake.inject("outcome", "audit_all")
    task_id = create(app, "blocked everything", n=2)
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "moderated"
    assert "content audit blocked every picture" in task["error"]["message"]
    assert task_json(app, task_id)["cost"]["points"] == 20     # Liblib still reports the charge


@pytest.mark.parametrize("outcome,code,text", [("fail", "generation_failed", "model inference error"),
                                               ("timeout", "generation_timed_out", "timed out")])
def test_generation_failure_is_recorded(studio, outcome, code, text):
    app, fake = studio()
    fake.inject("outcome", outcome)
    task = run_pipeline(app, create(app, f"failing {outcome}"), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == code and text in task["error"]["message"]
    assert task["provider_status"] == ("6" if outcome == "fail" else "7")


def test_upload_failure_keeps_the_task_queued_and_uploads_again(studio):
    app, fake = studio()
    fake.inject("upload", "500", "500", "500", "500")       # the helper's 4 tries of the first upload
    task_id = create(app, "upload again", model_name="star-3-alpha-i2i", image=b64(picture()))
    task_query.dispatch(app.extensions["task_store"], app.extensions["providers"])
    assert app.extensions["task_store"].get(task_id)["status"] == "queued"
    assert fake.requests_to(I2I) == []
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert len(fake.requests_to(UPLOAD)) == 2 and len(fake.oss_posts) == 5   # a fresh signature the 2nd time
    assert len(fake.requests_to(I2I)) == 1 and fake.submissions == {"upload again": 1}


# ---- auth ----

def test_wrong_secret_fails_with_an_auth_message(studio):
    app, fake = studio(config={"LIBLIB_SECRET_KEY": "not-the-secret"})
    task = run_pipeline(app, create(app, "bad secret"), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "provider_auth"
    assert "LIBLIB_ACCESS_KEY" in task["error"]["message"] and "clock" in task["error"]["message"]
    assert [entry["verdict"] for entry in fake.auth_log] == ["signature mismatch"]
    assert fake.submissions == {}


def test_wrong_secret_fails_an_image_to_image_task_at_the_upload(studio):
    app, fake = studio(config={"LIBLIB_SECRET_KEY": "not-the-secret"})
    task = run_pipeline(app, create(app, "bad secret i2i", model_name="star-3-alpha-i2i", image=b64(picture())),
                        skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "provider_auth"
    assert fake.oss_posts == [] and fake.submissions == {}


def test_wrong_machine_clock_fails_with_an_auth_message(studio, monkeypatch):
    app, fake = studio()
    monkeypatch.setattr(liblib, "timestamp_ms", lambda: str(int((time.time() - 360) * 1000)))
    task = run_pipeline(app, create(app, "slow clock"), skip_waits=True)
    assert task["status"] == "failed" and "clock" in task["error"]["message"]
    assert [entry["verdict"] for entry in fake.auth_log] == ["timestamp expired"]


def test_the_server_enforces_the_signature_rules(studio):
    _, fake = studio()
    body = {"generateUuid": "x"}
    assert signed_post(fake, STATUS, body)[1]["code"] != 0          # signed fine; unknown task
    nonce = str(uuid.uuid4())
    assert signed_post(fake, STATUS, body, nonce=nonce)[0] == 200
    assert signed_post(fake, STATUS, body, nonce=nonce)[0] == 403    # the same nonce again
    assert signed_post(fake, STATUS, body, secret="other")[0] == 403
    assert signed_post(fake, STATUS, body, timestamp=str(int((time.time() - 301) * 1000)))[0] == 403
    with requests.post(fake.base_url + STATUS, json=body, timeout=5) as resp:
        assert resp.status_code == 403 and resp.json()["code"] != 0
    with requests.post(fake.base_url + STATUS, params={"AccessKey": "someone-else"}, json=body, timeout=5) as resp:
        assert resp.status_code == 403
    status, answer = signed_post(fake, STATUS, data="generateUuid=x")
    assert status == 400 and answer["code"] != 0                     # POST JSON only
    assert [e["verdict"] for e in fake.auth_log] == [
        "ok", "ok", "nonce already used", "signature mismatch", "timestamp expired",
        "missing AccessKey, Signature, Timestamp, SignatureNonce", "missing Signature, Timestamp, SignatureNonce", "ok"]


# ---- the server refuses what Liblib refuses ----

def uploaded_url(fake):
    """Upload a picture to the fake bucket the documented way; returns its public URL."""
    _, answer = signed_post(fake, UPLOAD, {"name": "ref", "extension": "png"})
    data = answer["data"]
    fields = [("key", data["key"]), ("policy", data["policy"]), ("x-oss-date", data["xOssDate"]),
              ("x-oss-expires", str(data["xOssExpires"])), ("x-oss-signature", data["xOssSignature"]),
              ("x-oss-credential", data["xOssCredential"]), ("x-oss-signature-version", data["xOssSignatureVersion"])]
    with requests.post(data["postUrl"], data=fields, files={"file": ("ref.png", picture(), "image/png")},
                       timeout=5) as resp:
        assert resp.status_code == 204
    return data["postUrl"] + "/" + data["key"], data, fields


def test_the_server_checks_generate_fields(studio):
    _, fake = studio(submit_qps=None)
    url, _, _ = uploaded_url(fake)
    good = {"prompt": "a boat", "aspectRatio": "square", "imgCount": 1}
    bad_t2i = [{"templateUuid": "0" * 32, "generateParams": good},
               {"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": {**good, "prompt": ""}},
               {"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": {**good, "prompt": "x" * 2001}},
               {"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": {**good, "imgCount": 5}},
               {"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": {**good, "imageSize": {"width": 768,
                                                                                            "height": 1024}}},
               {"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": {"prompt": "a boat", "imgCount": 1}},
               {"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": {**good, "aspectRatio": "16:9"}},
               {"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": {"prompt": "a", "imgCount": 1,
                                                                      "imageSize": {"width": 300, "height": 1024}}}]
    for body in bad_t2i:
        status, answer = signed_post(fake, T2I, body)
        assert status == 200 and answer["code"] != 0 and answer["msg"], body
    i2i = {"prompt": "a boat", "imgCount": 1, "sourceImage": url}
    bad_i2i = [{"templateUuid": IMG2IMG_TEMPLATE, "templateUUID": IMG2IMG_TEMPLATE, "generateParams": i2i},
               {"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": i2i},
               {"templateUuid": IMG2IMG_TEMPLATE, "generateParams": {**i2i, "sourceImage": b64(picture())}},
               {"templateUuid": IMG2IMG_TEMPLATE, "generateParams": {**i2i, "sourceImage": "https://elsewhere/x.png"}}]
    for body in bad_i2i:
        status, answer = signed_post(fake, I2I, body)
        assert status == 200 and answer["code"] != 0 and answer["msg"], body
    assert "Base64" in signed_post(fake, I2I, bad_i2i[2])[1]["msg"]
    assert fake.submissions == {}
    for spelling in ("templateUuid", "templateUUID"):
        assert signed_post(fake, I2I, {spelling: IMG2IMG_TEMPLATE, "generateParams": i2i})[1]["code"] == 0
    assert signed_post(fake, T2I, {"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": good})[1]["code"] == 0


def test_the_bucket_checks_the_post_object_form(studio):
    _, fake = studio()
    _, data, fields = uploaded_url(fake)
    picture_file = {"file": ("ref.png", picture(), "image/png")}

    def post(form, files=picture_file, **kwargs):
        with requests.post(data["postUrl"], data=form, files=files, timeout=5, **kwargs) as resp:
            return resp.status_code, resp.text

    assert post(fields)[0] == 204
    assert post(fields[1:] + fields[:1])[0] == 400                       # out of order
    assert post(fields + [("extra", "x")])[0] == 400                    # requests puts files last: extra is not
    assert post(fields, params={"AccessKey": ACCESS_KEY})[0] == 400      # no Liblib credentials at OSS
    status, text = post([(k, "0" * 64 if k == "x-oss-signature" else v) for k, v in fields])
    assert status == 403 and "SignatureDoesNotMatch" in text
    assert post(fields, files={"file": ("ref.jpg", picture(fmt="JPEG"), "image/jpeg")})[0] == 400
    # `file` before the other fields: built by hand, since requests always puts files last.
    boundary = "b0undary"
    parts = [("file", "ref.png", picture())] + [(k, None, v.encode()) for k, v in fields]
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    with requests.post(data["postUrl"], data=body, timeout=5,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}) as resp:
        assert resp.status_code == 400 and "in this order" in resp.text


def test_code_not_zero_on_submit_is_a_refusal_showing_liblibs_message(studio):
    app, fake = studio()
    task = {"id": "t1", "model": "star-3-alpha-t2i", "inputs": [], "params": {"prompt": "boats", "aspect_ratio": "1:1",
                                                                          "n": 5}}
    with pytest.raises(ProviderRejected) as caught:
        app.extensions["providers"]["liblib"].submit(task)
    assert "imgCount must be an integer from 1 to 4" in caught.value.message and caught.value.http_status == 200
    assert fake.submissions == {}


def test_unknown_task_on_query_is_an_error_not_a_state(studio):
    app, _ = studio()
    with pytest.raises(ProviderRejected, match="generate task not found"):
        app.extensions["providers"]["liblib"].query({"id": "t1", "provider_task_id": "nope", "params": {"n": 1}})


# ---- limits ----

def test_one_submit_a_second(studio):
    app, fake = studio()
    first, second = create(app, "first of two"), create(app, "second of two")
    store, registry = app.extensions["task_store"], app.extensions["providers"]
    task_query.dispatch(store, registry)
    # The second submit waited for its slot instead of being refused.
    assert store.get(first)["status"] == "submitted" and store.get(second)["status"] == "submitted"
    assert fake.submissions == {"first of two": 1, "second of two": 1}
    (gap,) = [b - a for a, b in zip(fake.submit_times, fake.submit_times[1:], strict=False)]
    assert gap >= 1.0


def test_a_rate_refusal_in_an_http_200_keeps_the_task_queued_and_is_retried(studio, monkeypatch):
    app, fake = studio()
    monkeypatch.setattr(liblib, "SUBMIT_INTERVAL", 0)      # no spacing: the server's QPS limit answers
    first, second = create(app, "first fast"), create(app, "second fast")
    store, registry = app.extensions["task_store"], app.extensions["providers"]
    task_query.dispatch(store, registry)
    assert store.get(first)["status"] == "submitted" and store.get(second)["status"] == "queued"
    assert "rate-limiting" in store.get(second)["last_error"] and store.get(second)["error"] is None
    time.sleep(1.05)        # the fake's own QPS window is on the real clock
    task_query.dispatch(store, registry, clock=lambda: datetime.now(UTC) + timedelta(minutes=5))
    assert store.get(second)["status"] == "submitted"
    assert fake.submissions == {"first fast": 1, "second fast": 1}


SPACED_SUBMIT = """
import json, sys
from providers.liblib import LiblibProvider
provider = LiblibProvider(json.loads(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
print(provider.submit({"id": sys.argv[2], "model": "star-3-alpha-t2i", "inputs": [],
                       "params": {"prompt": sys.argv[2], "aspect_ratio": "1:1", "n": 1}}), flush=True)
"""


def test_submits_are_spaced_across_two_processes(studio, tmp_path):
    _, fake = studio()
    config = json.dumps({"DATA_DIR": str(tmp_path / "data"), "LIBLIB_API_BASE": fake.base_url,
                         "LIBLIB_ACCESS_KEY": ACCESS_KEY, "LIBLIB_SECRET_KEY": SECRET_KEY, "HTTP_TIMEOUT_SECONDS": 5})
    workers = [subprocess.Popen([sys.executable, "-c", SPACED_SUBMIT, config, f"worker {i}"], cwd=ROOT, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for i in range(2)]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready"
        for worker in workers:          # both go at once
            worker.stdin.write("go\n")
            worker.stdin.flush()
        answers = [worker.communicate(timeout=30)[0].strip() for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert [worker.returncode for worker in workers] == [0, 0] and all(len(a) == 32 for a in answers)
    assert fake.submissions == {"worker 0": 1, "worker 1": 1}
    first, second = fake.submit_times
    assert second - first >= 1.0


def test_five_tasks_in_flight_at_most(studio):
    app, fake = studio(submit_qps=None)
    ids = [create(app, f"burst {i}") for i in range(7)]
    store = app.extensions["task_store"]
    task_query.dispatch(store, app.extensions["providers"])
    assert [store.get(i)["status"] for i in ids] == ["submitted"] * 5 + ["queued"] * 2
    assert fake.running() == 5 and sum(fake.submissions.values()) == 5


def test_the_server_refuses_a_sixth_task(studio):
    app, fake = studio(config={"LIBLIB_MAX_CONCURRENCY": 6}, submit_qps=None)
    ids = [create(app, f"over {i}") for i in range(6)]
    store = app.extensions["task_store"]
    task_query.dispatch(store, app.extensions["providers"])
    assert store.get(ids[5])["status"] == "queued" and "5 tasks at once" in store.get(ids[5])["last_error"]
    assert fake.max_running == 5


# ---- what the table refuses before anything is sent ----

@pytest.mark.parametrize("body,field", [
    ({"n": 5}, "n"),
    ({"negative_prompt": "blurry"}, "negative_prompt"),
    ({"aspect_ratio": "5:4"}, "aspect_ratio"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"image": "REFERENCE"}, "image"),
    ({"image_fidelity": 0.3}, None),
    ({"model_name": "star-3-alpha-i2i", "image": "REFERENCE", "aspect_ratio": "16:9"}, "aspect_ratio"),
    ({"model_name": "star-3-alpha-i2i", "image": "REFERENCE", "n": 5}, "n"),
])
def test_capability_rules_refuse_before_sending(studio, body, field):
    app, fake = studio()
    body = {k: b64(picture()) if v == "REFERENCE" else v for k, v in body.items()}
    prompt = body.pop("prompt", "a cat")
    if field is None:
        # image_fidelity has no faithful Liblib mapping: it is accepted by the schema but never stored or sent.
        task_id = create(app, prompt, **body)
        assert app.extensions["task_store"].get(task_id)["params"]["image_fidelity"] is None
        return
    error = create(app, prompt, status=422, **body)
    assert error["field"] == field
    assert fake.received == [] and len(app.extensions["task_store"]) == 0


def test_no_cancel_at_liblib(studio):
    app, fake = studio()
    task_id = create(app, "cancel me")
    store, registry = app.extensions["task_store"], app.extensions["providers"]
    task_query.dispatch(store, registry)
    client = app.test_client()
    assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 200
    task_query.poll(store, registry)
    task = store.get(task_id)
    assert task["status"] == "cancelled" and "could not stop" in task["cancel_note"]
    assert fake.requests_to(STATUS) == []


# ---- the brief's ids, the old ones, and liblib-custom ----

def test_old_model_ids_still_read_and_poll(studio):
    app, fake = studio()
    store = app.extensions["task_store"]
    task_id = create(app, "an old task", model_name="star-3-alpha")      # old scripts: the alias is accepted
    assert store.get(task_id)["model"] == "star-3-alpha-t2i"
    # A task stored before the rename keeps its old id and still runs and shows.
    store.update(task_id, {"model": "star-3-alpha"})
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert task_json(app, task_id)["model"] == "star-3-alpha"
    old_i2i = create(app, "an old i2i task", model_name="star-3-alpha-i2i", image=b64(picture()))
    store.update(old_i2i, {"model": "star-3-alpha-img2img"})
    assert run_pipeline(app, old_i2i, skip_waits=True)["status"] == "succeeded"
    assert len(fake.requests_to(I2I)) == 1


def test_a_reference_picture_with_no_model_picks_image_to_image(studio):
    app, fake = studio()
    resp = app.test_client().post("/generate_image", json={"provider": "liblib", "prompt": "winter",
                                                           "image": b64(picture())})
    assert resp.status_code == 202, resp.get_json()
    assert app.extensions["task_store"].get(resp.get_json()["task_id"])["model"] == "star-3-alpha-i2i"
    resp = app.test_client().post("/generate_image", json={"provider": "liblib", "prompt": "summer"})
    assert app.extensions["task_store"].get(resp.get_json()["task_id"])["model"] == "star-3-alpha-t2i"


CHECKPOINT_XL, LORA_A, LORA_B = "0ea388c7eb854be3ba3c6f65aac6bfd3", "a" * 32, "b" * 32
CUSTOM_T2I, CUSTOM_I2I = "/api/generate/webui/text2img", "/api/generate/webui/img2img"


def custom(app, prompt, status=202, **body):
    return create(app, prompt, status=status, model_name="liblib-custom", **body)


def test_liblib_custom_with_two_loras_end_to_end(studio):
    app, fake = studio()
    fake.add_model(CHECKPOINT_XL, "xl")
    fake.add_model(LORA_A, "xl", "lora")
    fake.add_model(LORA_B, "xl", "lora")
    task_id = custom(app, "a red fox in snow", negative_prompt="blurry", checkpoint_id=CHECKPOINT_XL, base_model="xl",
                     loras=[{"id": LORA_A, "weight": 0.6}, {"id": LORA_B}], sampler=15, steps=28, cfg_scale=6.5,
                     seed=1234, width=832, height=1216, n=2, hires_fix={"steps": 12, "denoising_strength": 0.4})
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    assert len(saved_pictures(app, task)) == 2
    assert fake.requests_to(CUSTOM_T2I) == [{"templateUuid": "e10adc3949ba59abbe56e057f20f883e", "generateParams": {
        "prompt": "a red fox in snow", "negativePrompt": "blurry", "sampler": 15, "steps": 28, "cfgScale": 6.5,
        "imgCount": 2, "randnSource": 0, "seed": 1234, "restoreFaces": 0, "checkPointId": CHECKPOINT_XL,
        "clipSkip": 2, "additionalNetwork": [{"modelId": LORA_A, "weight": 0.6}, {"modelId": LORA_B, "weight": 0.8}],
        "hiResFixInfo": {"hiresSteps": 12, "hiresDenoisingStrength": 0.4, "upscaler": 10, "resizedWidth": 1664,
                         "resizedHeight": 2048}, "width": 832, "height": 1216}}]
    assert task["params"]["loras"] == [{"id": LORA_A, "weight": 0.6}, {"id": LORA_B, "weight": 0.8}]
    assert_every_call_signed(fake)


def test_liblib_custom_image_to_image_uses_the_f1_template_and_the_reference_size(studio):
    app, fake = studio()
    fake.add_model(LORA_A, "f.1", "lora")
    task_id = custom(app, "the same street in autumn", base_model="f.1", loras=[{"id": LORA_A, "weight": 1.0}],
                     image=b64(picture(640, 400)))
    task = run_pipeline(app, task_id, skip_waits=True)
    assert task["status"] == "succeeded", task["error"]
    (body,) = fake.requests_to(CUSTOM_I2I)
    assert body["templateUuid"] == "63b72710c9574457ba303d9d9b8df8bd"
    generate = body["generateParams"]
    assert "checkPointId" not in generate and "clipSkip" not in generate and "width" not in generate
    assert (generate["resizedWidth"], generate["resizedHeight"], generate["denoisingStrength"]) == (640, 400, 0.75)
    assert generate["sourceImage"].startswith(fake.base_url + "/oss/") and generate["seed"] == -1


def test_liblib_custom_lora_of_another_family_is_refused_by_liblib_and_named(studio):
    app, fake = studio()
    fake.add_model(CHECKPOINT_XL, "xl")
    fake.add_model(LORA_A, "1.5", "lora")
    task = run_pipeline(app, custom(app, "mismatch", checkpoint_id=CHECKPOINT_XL, base_model="xl",
                                    loras=[{"id": LORA_A}]), skip_waits=True)
    assert task["status"] == "failed" and task["error"]["code"] == "model_refused"
    assert "one family" in task["error"]["message"] and "100050" in task["error"]["message"]


@pytest.mark.parametrize("fault,status,code", [("credits", "failed", "provider_quota"), ("busy", "queued", None)])
def test_code_not_zero_in_an_http_200_is_mapped_by_its_meaning(studio, fault, status, code):
    app, fake = studio()
    fake.inject("submit", fault)
    task_id = create(app, f"refused {fault}")
    task_query.dispatch(app.extensions["task_store"], app.extensions["providers"])
    task = app.extensions["task_store"].get(task_id)
    assert task["status"] == status and (task["error"] or {}).get("code") == code
    if status == "queued":
        assert "tried again later" in task["last_error"]
        assert run_pipeline(app, task_id, skip_waits=True)["status"] == "succeeded"


@pytest.mark.parametrize("body,field", [
    ({"base_model": "xl"}, "checkpoint_id"),
    ({"base_model": "v3", "checkpoint_id": CHECKPOINT_XL}, "base_model"),
    ({"base_model": "xl", "checkpoint_id": "not-a-uuid"}, "checkpoint_id"),
    ({"base_model": "f.1", "loras": [{"id": LORA_A}] * 6}, "loras"),
    ({"base_model": "f.1", "loras": [{"id": LORA_A, "weight": 4.5}]}, "loras.0.weight"),
    ({"base_model": "f.1", "steps": 61}, "steps"),
    ({"base_model": "f.1", "cfg_scale": 0.5}, "cfg_scale"),
    ({"base_model": "f.1", "width": 2000}, "width"),
    ({"base_model": "f.1", "sampler": 20}, "sampler"),
    ({"base_model": "f.1", "seed": -1}, "seed"),
    ({"base_model": "f.1", "seed": 2 ** 31}, "seed"),
    ({"base_model": "f.1", "seed": "5"}, "seed"),
    ({"base_model": "f.1", "hires_fix": {"steps": 31}}, "hires_fix.steps"),
    ({"base_model": "f.1", "n": 5}, "n"),
])
def test_liblib_custom_settings_are_checked_against_its_table(studio, body, field):
    app, fake = studio()
    error = custom(app, "a cat", status=400 if field == "seed" and isinstance(body["seed"], str) else
                   (400 if field == "checkpoint_id" and "checkpoint_id" not in body else 422), **body)
    assert error["field"] == field, error
    assert fake.received == [] and len(app.extensions["task_store"]) == 0


@pytest.mark.parametrize("name,value", [("checkpoint_id", CHECKPOINT_XL), ("loras", []), ("steps", 20),
                                        ("seed", 5), ("hires_fix", {})])
def test_custom_settings_are_refused_for_the_star_models(studio, name, value):
    app, _ = studio()
    error = create(app, "a cat", status=422, **{name: value})
    assert error["field"] == name and error["code"] == "unsupported_value"


def test_the_server_checks_the_custom_template_fields(studio):
    _, fake = studio(submit_qps=None)
    fake.add_model(CHECKPOINT_XL, "xl")
    good = {"checkPointId": CHECKPOINT_XL, "prompt": "a boat", "sampler": 15, "steps": 20, "cfgScale": 7,
            "width": 768, "height": 1024, "imgCount": 1, "randnSource": 0, "seed": -1, "restoreFaces": 0,
            "clipSkip": 2}
    sd = "e10adc3949ba59abbe56e057f20f883e"
    cases = [({"templateUuid": "0" * 32, "generateParams": good}, 100120),
             ({"templateUuid": sd, "generateParams": {k: v for k, v in good.items() if k != "cfgScale"}}, 100050),
             ({"templateUuid": sd, "generateParams": {**good, "checkPointId": "c" * 32}}, 100053),
             ({"templateUuid": "6f7c4652458d4802969f8d089cf5b91f", "generateParams": good}, 100050),
             ({"templateUuid": sd, "generateParams": {**good, "steps": 61}}, 100000),
             ({"templateUuid": sd, "generateParams": {**good, "additionalNetwork": [
                 {"modelId": "d" * 32, "weight": 0.8}]}}, 100053)]
    for body, code in cases:
        status, answer = signed_post(fake, CUSTOM_T2I, body)
        assert status == 200 and answer["code"] == code, (body, answer)
    assert signed_post(fake, CUSTOM_T2I, {"templateUuid": sd, "generateParams": good})[1]["code"] == 0
