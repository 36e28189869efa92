"""Every message in the reader's language: the server's messages in 中文, and Chinese punctuation on every page.

A session switched to 中文 provokes the messages the server makes (a validation error per field of
/generate, /generate_image and the v1 API, a quota refusal, a CSRF failure, a rate limit, a provider
failure from the local Kling server, a cancel note, a batch upload and its refused items, a gallery
zip over its cap, a bad storyboard and a failed scene, a malformed multipart body) and fails on any
English sentence in them:
three ASCII words in a row, once the message's own data (its parameters, field names, provider
labels) is set aside. Accept-Language alone picks the language for a caller without a session.
"""

import io
import json
import re
import zipfile
from html.parser import HTMLParser

import pytest
from babel.messages.pofile import read_po
from flask.testing import FlaskClient

import auth
import providers.http
import storyboards
import task_query
import tasks
from app import create_app
from errors import N_, Text, render_message
from i18n import translate
from tests.conftest import ADMIN_PASSWORD, b64, picture, run_pipeline
from tests.fakes.kling import Server
from tests.signin import csrf_of, login, make_user
from tests.test_batches import SETTINGS, multipart, png, shot_zip
from tests.test_gallery import make_images, zip_of

CJK = re.compile(r"[\u3400-\u9fff]")
# Three ASCII words in a row ("is not offered", "the request could"): an English sentence.
ENGLISH = re.compile(r"[A-Za-z][A-Za-z'’]*(?:[ \t]+[A-Za-z][A-Za-z'’]*){2,}")
# ASCII sentence punctuation right after a Chinese character ("中文." "中文,"): should be full-width.
ASCII_AFTER_CJK = re.compile(r"[\u3400-\u9fff][.,;:?!](?!\w)")
PO = "translations/zh/LC_MESSAGES/messages.po"
AK, SK = "AK" + "a" * 30, "SK" + "s" * 30


def english_in(message, data=()):
    """The English sentences left in `message` once its data (parameters, field names, labels) is removed."""
    text = message
    for token in sorted((str(t) for t in data if t not in (None, "")), key=len, reverse=True):
        text = text.replace(token, " ")
    return ENGLISH.findall(text)


def data_of(error, app):
    """What a message may quote as it is: its parameters, its field and the providers' labels."""
    values = [error.get("field"), error.get("code")]
    for value in (error.get("params") or {}).values():
        values += value if isinstance(value, list) else [value]
    for provider in app.extensions["providers"].values():
        values.append(provider.capabilities()["label"])
    return values


def assert_chinese(error, app):
    """A server-made message is Chinese, with no English sentence of its own."""
    message = error["message"]
    assert CJK.search(message), error
    assert english_in(message, data_of(error, app)) == [], error


def zh_session(app, username="admin", password=ADMIN_PASSWORD):
    """A browser signed in through the form, switched to 中文 with the language toggle."""
    browser = login(app, username, password)
    assert browser.get("/?lang=zh").status_code == 200
    browser.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"         # the session's choice wins
    browser.environ_base["HTTP_X_CSRFTOKEN"] = csrf_of(browser)
    return browser


@pytest.fixture
def roomy_limits(monkeypatch):
    """Many calls in a row without meeting the per-minute limit (that has a test of its own)."""
    monkeypatch.setitem(auth.RATE_LIMITS, "generate", (10_000, 60))


# ---- which language

def test_accept_language_alone_chooses_the_language_of_an_error(app):
    anon = FlaskClient(app, app.response_class)
    zh = anon.get("/api/tasks", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).get_json()["error"]
    en = anon.get("/api/tasks", headers={"Accept-Language": "en-US,en;q=0.9"}).get_json()["error"]
    default = anon.get("/api/tasks").get_json()["error"]
    assert zh["code"] == en["code"] == "login_required"
    assert CJK.search(zh["message"]) and zh["message"] != en["message"]
    assert en["message"] == default["message"] == "Sign in, or send 'Authorization: Bearer <API key>'."


def test_an_error_says_its_parameters_in_both_languages(client):
    task_id = "20261122T000000000Z-abcdef"
    zh = client.get(f"/api/tasks/{task_id}", headers={"Accept-Language": "zh"}).get_json()["error"]
    en = client.get(f"/api/tasks/{task_id}", headers={"Accept-Language": "en"}).get_json()["error"]
    assert zh == {"code": "not_found", "field": None, "params": {"id": task_id}, "message": f"没有任务“{task_id}”。"}
    assert en["message"] == f"No task '{task_id}'." and en["params"] == {"id": task_id}


def test_an_error_page_is_in_the_sessions_language(app):
    browser = zh_session(app)
    page = browser.get("/nothing-here", headers={"Accept": "text/html"}).get_data(as_text=True)
    assert "此地址没有内容" in page


# ---- server-made messages in a 中文 session

def _wrong_type(annotation):
    """A value of the wrong JSON type for a field: text where a number is wanted, else a number."""
    return "x" if any(word in str(annotation) for word in ("int", "float", "bool", "list")) else 5


def _each_field_wrong(model):
    return [{name: _wrong_type(field.annotation)} for name, field in model.model_fields.items()]


VIDEO_CASES = [
    {"nope": 1}, {"provider": "nope"}, {"duration": "7"}, {"mode": "ultra"}, {"cfg_scale": 2},
    {"seed": -1}, {"prompt": "x" * 3000}, {"image": "not base64!"}, {"image": b64(b"GIF89a" + b"\0" * 64)},
    {"image_tail": b64(picture(640, 400))},
    {"image": "http://[::1/x.png"}, {"image": "ftp://example.com/x.png"}, {"image": b64(picture(64, 64))},
]
IMAGE_CASES = [
    {"nope": 1}, {"provider": "nope"}, {"n": 20}, {"aspect_ratio": "7:3"}, {"prompt": "x" * 3000},
    {"model_name": "nope"}, {"image": b64(picture(640, 400)), "image_fidelity": 3},
]


@pytest.mark.parametrize(("path", "model_path", "cases"), [
    ("/generate", "video_extend.VideoRequest", VIDEO_CASES),
    ("/generate_image", "image_generate.ImageRequest", IMAGE_CASES),
    ("/api/v1/videos/generate", "api.models.V1VideoRequest", VIDEO_CASES),
    ("/api/v1/images/generate", "api.models.V1ImageRequest", IMAGE_CASES),
])
def test_validation_errors_are_chinese_for_every_field(app, roomy_limits, path, model_path, cases):
    module, name = model_path.rsplit(".", 1)
    model = getattr(__import__(module, fromlist=[name]), name)
    browser = zh_session(app)
    seen = set()
    for body in _each_field_wrong(model) + cases:
        resp = browser.post(path, json=body)
        assert 400 <= resp.status_code < 500, (body, resp.get_data(as_text=True)[:300])
        error = resp.get_json()["error"]
        assert_chinese(error, app)
        seen.add(error["code"])
    assert {"invalid_field", "unknown_field"} <= seen


def test_a_quota_refusal_is_chinese(app):
    make_user(app, "ivy", videos_per_day=0)
    browser = zh_session(app, "ivy", "correct horse battery staple")
    resp = browser.post("/generate", json={"image": b64(picture())})
    assert resp.status_code == 429 and resp.get_json()["error"]["code"] == "quota_exceeded"
    assert_chinese(resp.get_json()["error"], app)
    assert "今天已用 0 个" in resp.get_json()["error"]["message"]


def test_a_csrf_failure_is_chinese(app):
    browser = zh_session(app)
    del browser.environ_base["HTTP_X_CSRFTOKEN"]
    resp = browser.post("/generate", json={"image": b64(picture())})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "csrf_failed"
    assert_chinese(resp.get_json()["error"], app)


def test_a_rate_limit_is_chinese(app, monkeypatch):
    monkeypatch.setitem(auth.RATE_LIMITS, "generate", (2, 60))
    browser = zh_session(app)
    answers = [browser.post("/generate", json={"nope": 1}) for _ in range(3)]
    assert [a.status_code for a in answers] == [400, 400, 429]
    error = answers[-1].get_json()["error"]
    assert error["code"] == "rate_limited" and "秒后再试" in error["message"]
    assert_chinese(error, app)


# ---- batches, gallery zips, storyboards and multipart bodies

def _zip(*members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_batch_upload_that_cannot_be_used_is_refused_in_chinese(app):
    browser = zh_session(app)
    only_refused = _zip(("../evil.png", png(1)), ("05_generated_images/E/notes.docx", b"PK"),
                        ("07_video_prompts/E-Video-Prompts.txt", "Shot-001: no picture for this one"))
    cases = [({"file": (b"this is not a zip", "shots.zip")}, "invalid_zip"),
             ({"file": (only_refused, "shots.zip")}, "no_usable_items"),
             ({"file": (_zip(("a.png", png())), "shots.zip")}, "no_layout"),
             ({"file": (shot_zip(), "shots.zip"), "colour": "blue"}, "unknown_field"),
             ({"file": (shot_zip(), "shots.zip"), "cfg_scale": "2"}, "invalid_field"),
             ({}, "file_required")]
    for fields, code in cases:
        resp = multipart(browser, {**SETTINGS, **fields})
        assert 400 <= resp.status_code < 500, resp.get_json()
        error = resp.get_json()["error"]
        assert error["code"] == code, error
        assert_chinese(error, app)
    # The reasons quoted by "none can be used" are said in Chinese too.
    assert "已拒绝：路径中含有“..”。" in error_of_upload(browser, only_refused)["message"]


def error_of_upload(browser, data):
    return multipart(browser, {**SETTINGS, "file": (data, "shots.zip")}).get_json()["error"]


def test_a_refused_items_reason_is_chinese_in_the_batch_and_english_for_an_english_reader(app):
    browser = zh_session(app)
    data = shot_zip(extra=[
        ("Series/05_generated_images/Episode-02/Episode-02-Shot-001.png", b"this is not a picture at all" * 4),
        ("Series/05_generated_images/Episode-02/Episode-02-Shot-002.png", png(seed=2)),
        ("Series/05_generated_images/Episode-02/notes.docx", b"PK"),
        ("Series/../evil.png", png(3)),
        ("Series/07_video_prompts/Episode-02-Video-Prompts.txt",
         f"Shot-001: a prompt\nShot-002: {'x' * 2600}\nShot-003: no picture for this one\n")])
    resp = multipart(browser, {**SETTINGS, "file": (data, "shots.zip")})
    assert resp.status_code == 202, resp.get_json()
    batch_id = resp.get_json()["batch_id"]
    refused = [i for i in browser.get(f"/api/v1/batches/{batch_id}").get_json()["items"] if i["status"] == "refused"]
    assert {i["error"]["code"] for i in refused} == {"unsupported_image_format", "prompt_too_long", "picture_missing",
                                                    "not_a_shot", "unsafe_member"}
    for item in refused:
        assert_chinese(item["error"], app)
    en = app.test_client().get(f"/api/v1/batches/{batch_id}", headers={"Accept-Language": "en"}).get_json()
    reasons = {i["name"]: i["error"]["message"] for i in en["items"] if i["status"] == "refused"}
    assert reasons["Episode-02/Shot-003"] == "No picture for Episode-02/Shot-003."
    assert reasons["Series/../evil.png"] == "Refused: a path with '..'."


def test_a_batch_record_stored_as_plain_text_still_shows(app):
    browser = zh_session(app)
    resp = multipart(browser, {**SETTINGS, "file": (shot_zip(extra=[("Series/../evil.png", png(3))]), "shots.zip")})
    batch_id = resp.get_json()["batch_id"]

    def old(record):            # an item refused before reasons had templates
        record["items"][0]["error"] = {"code": "unsafe_member", "message": "Refused long ago."}
    app.extensions["batch_store"].update(batch_id, old)
    item = browser.get(f"/api/v1/batches/{batch_id}").get_json()["items"][0]
    assert item["error"] == {"code": "unsafe_member", "message": "Refused long ago.", "field": None}


def test_a_gallery_zip_over_its_cap_is_refused_in_chinese(app):
    browser = zh_session(app)
    ids = [make_images(browser, b64(picture()), app) for _ in range(2)]
    app.config["ZIP_MAX_TASKS"] = 1
    too_many = zip_of(browser, ids)
    app.config["ZIP_MAX_TASKS"], app.config["ZIP_MAX_MB"] = 10, 0
    too_large = zip_of(browser, ids)
    assert [too_many.status_code, too_large.status_code] == [413, 413]
    for resp in (too_many, too_large):
        assert_chinese(resp.get_json()["error"], app)


SCENE = {"prompt": "a street", "duration": "5"}
STORYBOARD_CASES = [
    {"scenes": [{**SCENE, "image": b64(picture())}], "prompt": "x"},
    {"scenes": [{**SCENE, "first_frame": "previous_last"}]},
    {"scenes": [{**SCENE, "image": b64(picture())}, {**SCENE, "first_frame": "previous_last",
                                                     "image": b64(picture())}]},
    {"scenes": [{**SCENE, "image": b64(picture())}], "width": 640},
    {"scenes": [{**SCENE, "image": b64(picture())}], "video_config": {"resolution": "big"}},
    {"video_config": {"fps": 24}, "prompt": "x", "image": b64(picture())},
]


@pytest.mark.parametrize("path", ["/generate", "/api/v1/videos/generate"])
def test_a_bad_storyboard_is_refused_in_chinese(app, roomy_limits, path):
    browser = zh_session(app)
    for body in STORYBOARD_CASES:
        resp = browser.post(path, json={"provider": "local", "model_name": "local-motion", **body})
        assert 400 <= resp.status_code < 500, (body, resp.get_json())
        assert_chinese(resp.get_json()["error"], app)


def test_a_failed_scene_ends_its_storyboard_in_the_readers_language(app):
    browser = zh_session(app)
    resp = browser.post("/generate", json={"provider": "local", "model_name": "local-motion", "scenes": [
        {**SCENE, "image": b64(picture())}, {**SCENE, "image": b64(picture())}]})
    assert resp.status_code == 202, resp.get_json()
    parent_id, store = resp.get_json()["task_id"], app.extensions["task_store"]
    scene_id = store.get(parent_id)["scene_task_ids"][0]
    reason = Text(N_("%(label)s reported that the task failed: %(reason)s"), label="Kling (official API)",
                  reason="risk control")
    store.update(scene_id, lambda record: tasks.fail(record, "provider_rejected", reason, tasks.utcnow()))
    storyboards.advance(store, app.extensions["providers"])
    assert store.get(parent_id)["error"]["message"] == ("Scene 1 failed: Kling (official API) reported that the "
                                                         "task failed: risk control")
    error = browser.get(f"/api/v1/tasks/{parent_id}").get_json()["error"]
    assert error["code"] == "scene_failed"
    assert error["message"] == "分镜 1 失败：可灵（官方 API）报告任务失败：risk control"


MULTIPART = "multipart/form-data; boundary=b0undary"
MULTIPART_CASES = [
    (b"\x00\xff" * 500, MULTIPART),
    (b"", MULTIPART),
    (b"--b0undary\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n", MULTIPART),
    (b"--b0undary\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--b0undary--\r\n",
     "multipart/form-data"),
    (b"".join(b"--b0undary\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n" for _ in range(2))
     + b"--b0undary--\r\n", MULTIPART),
    (b"--b0undary\r\nContent-Disposition: form-data; name=\"prompt\"; filename=\"p.txt\"\r\n\r\nx\r\n"
     b"--b0undary--\r\n", MULTIPART),
    (b"--b0undary\r\nContent-Disposition: form-data; name=\"cfg_scale\"\r\n\r\nhalf\r\n--b0undary--\r\n",
     MULTIPART),
]


def test_a_malformed_multipart_body_is_refused_in_chinese(app, roomy_limits):
    browser = zh_session(app)
    seen = set()
    for data, content_type in MULTIPART_CASES:
        resp = browser.post("/generate", data=data, content_type=content_type)
        assert 400 <= resp.status_code < 500, (data[:80], resp.get_json())
        error = resp.get_json()["error"]
        assert_chinese(error, app)
        seen.add(error["code"])
    assert seen == {"invalid_multipart", "duplicate_field", "unexpected_file", "invalid_field"}


# ---- provider failures and cancel notes, from the local Kling server

@pytest.fixture(scope="module")
def kling_server():
    with Server.running(polls_to_finish=3, access_key=AK, secret_key=SK) as server:
        yield server


@pytest.fixture
def kling_app(tmp_path, monkeypatch, kling_server):
    kling_server.reset()
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t",
                       "KLING_API_BASE": kling_server.base_url, "KLING_ACCESS_KEY": AK, "KLING_SECRET_KEY": SK,
                       "HTTP_TIMEOUT_SECONDS": 1})


def _kling_task(browser):
    resp = browser.post("/generate", json={"provider": "kling", "model_name": "kling-v1-6", "prompt": "a cat"})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def test_a_provider_failure_is_chinese_beside_the_providers_own_words(kling_app, kling_server):
    browser = zh_session(kling_app)
    kling_server.inject("result", "failed")
    task_id = _kling_task(browser)
    assert run_pipeline(kling_app, task_id, skip_waits=True)["status"] == "failed"
    zh = browser.get(f"/api/tasks/{task_id}").get_json()["error"]
    assert zh["message"] == "可灵（官方 API）报告任务失败：Failure to pass the risk control system"
    assert zh["provider_message"] == "Failure to pass the risk control system"     # Kling's words, as they were
    assert_chinese(zh, kling_app)
    en = kling_app.test_client().get(f"/api/tasks/{task_id}", headers={"Accept-Language": "en"}).get_json()
    assert en["error"]["message"] == ("Kling (official API) reported that the task failed: Failure to pass the risk "
                                      "control system")
    v1 = browser.get(f"/api/v1/tasks/{task_id}").get_json()["error"]
    assert v1["message"] == zh["message"] and v1["provider_message"] == zh["provider_message"]


def test_a_provider_refusal_from_the_error_table_is_chinese(kling_app, kling_server):
    browser = zh_session(kling_app)
    kling_server.inject("submit", "billing")
    task_id = _kling_task(browser)
    assert run_pipeline(kling_app, task_id, skip_waits=True)["status"] == "failed"
    error = browser.get(f"/api/tasks/{task_id}").get_json()["error"]
    assert error["code"] == "provider_quota" and "充值" in error["message"]
    assert_chinese(error, kling_app)


def test_a_cancel_note_is_chinese_and_names_the_provider_by_its_label(kling_app):
    browser = zh_session(kling_app)
    task_id = _kling_task(browser)
    store, registry = kling_app.extensions["task_store"], kling_app.extensions["providers"]
    task_query.dispatch(store, registry)
    assert browser.post(f"/api/tasks/{task_id}/cancel").status_code == 200
    task_query.poll(store, registry)           # Kling has no cancel call: the task may still run there
    task = browser.get(f"/api/tasks/{task_id}").get_json()
    assert task["cancel_note"] == "可灵（官方 API）无法停止该任务；它可能仍会收费。"
    assert store.get(task_id)["cancel_note"] == "Kling (official API) could not stop the task; it may still be charged."
    assert CJK.search(task["cancel_note"]) and english_in(task["cancel_note"], ["可灵（官方 API）"]) == []


def test_a_record_stored_as_plain_text_still_shows(client, app):
    store = app.extensions["task_store"]
    task_id = client.post("/generate", json={"image": b64(picture())}).get_json()["task_id"]
    store.update(task_id, {"status": "failed", "error": {"code": "old", "message": "Stored long ago.",
                                                           "retryable": False}, "cancel_note": "An old note."})
    task = client.get(f"/api/tasks/{task_id}", headers={"Accept-Language": "zh"}).get_json()
    assert task["error"]["message"] == "Stored long ago." and task["cancel_note"] == "An old note."


def test_a_download_problem_is_shown_in_the_readers_language(app):
    text = Text("Saving the result failed (%(error)s: %(detail)s); retrying.", error="ConnectionError", detail="reset")
    record = {"status": "downloading", "outputs": [], **tasks.download_error(text)}
    assert record["download_error"] == "Saving the result failed (ConnectionError: reset); retrying."
    with app.test_request_context(headers={"Accept-Language": "zh"}):
        seen = tasks.for_client(record, translate=translate)
    assert seen["download_error"] == "保存结果失败（ConnectionError：reset）；正在重试。"


# ---- punctuation and every catalogue entry

class _VisibleText(HTMLParser):
    """The text a reader sees, and the strings the scripts show (the pages' JSON data)."""

    def __init__(self):
        super().__init__()
        self.texts, self._skip, self._json = [], 0, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._json = tag == "script" and attrs.get("type") == "application/json"
        self._skip += tag in ("script", "style") and not self._json
        for name in ("title", "placeholder", "aria-label", "alt"):
            if attrs.get(name):
                self.texts.append(attrs[name])

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - (not self._json))
            self._json = False

    def handle_data(self, data):
        if self._json:
            self.texts += _strings(json.loads(data))
        elif not self._skip:
            self.texts.append(data)


def _strings(value):
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


PAGES = ("video_extend.page", "image_generate.page", "task_query.page", "auth.account_page", "openapi.docs")


def test_every_page_in_chinese_has_chinese_punctuation(app):
    browser = zh_session(app)
    with app.test_request_context():
        from flask import url_for
        urls = [url_for(endpoint) for endpoint in PAGES]
    anon = FlaskClient(app, app.response_class)
    pages = {url: browser.get(url) for url in urls}
    pages["/login"] = anon.get("/login?lang=zh")
    pages["404"] = browser.get("/nothing-here", headers={"Accept": "text/html"})
    for url, resp in pages.items():
        assert resp.status_code in (200, 404), url
        parser = _VisibleText()
        parser.feed(resp.get_data(as_text=True))
        text = "\n".join(parser.texts)
        # The API document is Swagger UI's, in English by design; every other page is Chinese.
        assert CJK.search(text) or url == urls[-1], url
        assert [m.group(0) for m in ASCII_AFTER_CJK.finditer(text)] == [], url


def test_every_chinese_message_ends_its_sentences_in_full_width_punctuation():
    with open(PO, "rb") as f:
        catalog = read_po(f)
    bad = [(m.id, m.string) for m in catalog if m.id and isinstance(m.string, str)
           and ASCII_AFTER_CJK.search(m.string)]
    assert bad == []


def test_every_server_message_template_has_its_chinese_and_the_same_parameters():
    with open(PO, "rb") as f:
        catalog = read_po(f)
    names = re.compile(r"%\((\w+)\)")
    for message in catalog:
        if message.id and isinstance(message.id, str) and "%(" in message.id:
            assert message.string and not message.fuzzy, message.id
            assert set(names.findall(message.string)) == set(names.findall(message.id)), message.id


def test_a_translation_that_does_not_fit_falls_back_to_english():
    broken = {"%(label)s did it.": "%(nope)s 做了。"}.get
    assert render_message("%(label)s did it.", {"label": "Kling"}, lambda s: broken(s, s)) == "Kling did it."
    assert render_message("%(what)s failed.", {"what": ["a", "b"]}) == "a, b failed."
