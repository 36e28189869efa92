"""Login always on, API keys, CSRF, ownership, quotas, rate limits, hostile input, no leaked keys."""

import gzip
import logging
import re
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient

import task_backup
from app import create_app
from tests.conftest import ADMIN_KEY, ADMIN_PASSWORD, b64, picture, run_pipeline
from tests.signin import browser_client, csrf_of, login, make_user

# Every route and what it needs: its access rule (access.py's decorators; "user" = a session or an
# API key) and its rate limit. A new route, or a renamed one that lost its decorator, shows here.
ROUTE_RULES = {
    "video_extend.page": "user", "video_extend.page_index": "user", "image_generate.page": "user",
    "task_query.page": "user", "auth.account_page": "user", "capabilities": "user", "auth.me": "user",
    "video_extend.generate": "user/generate", "image_generate.generate_image": "user/generate",
    "task_query.list_tasks": "user", "task_query.get_task": "user", "task_query.delete_task": "user",
    "task_query.cancel_task": "user", "task_query.retry_task": "user/generate", "task_query.media_file": "user",
    "task_query.favourite_task": "user", "gallery.page": "user", "gallery.download_zip": "user",
    "auth.change_password": "session", "auth.list_keys": "session", "auth.create_key": "session",
    "auth.delete_key": "session", "auth.logout": "session", "webhooks.set_default_url": "session",
    "auth.list_users": "admin", "auth.create_user": "admin", "auth.update_user": "admin", "auth.delete_user": "admin",
    "api_v1.generate_image": "user/generate", "api_v1.generate_video": "user/generate",
    "api_v1.list_tasks": "user", "api_v1.get_task": "user", "api_v1.delete_task": "user",
    "api_v1.cancel_task": "user", "api_v1.retry_task": "user/generate", "image_service.service_create": "user/generate",
    "image_service.service_result": "user", "image_service.service_status": "user",
    "webhooks.make_secret": "user", "wan_protocol.submit": "user/generate", "wan_protocol.status": "user",
    "wan_protocol.cancel": "user",
    "batches.list_page": "user", "batches.new_page": "user", "batches.detail_page": "user",
    "api_batches.create_batch": "user/generate", "api_batches.list_batches": "user", "api_batches.get_batch": "user",
    "api_batches.retry_failed": "user/generate", "api_batches.pause": "user", "api_batches.resume": "user",
    "api_batches.cancel": "user", "api_batches.results_zip": "user", "api_batches.report_xlsx": "user",
    "api_batches.report_csv": "user",
    "api_v1.health_check": "public", "openapi.docs": "public", "openapi.openapi_json": "public",
    "health.healthz": "public", "health.readyz": "public", "auth.login": "public", "auth.login_link": "public",
    "signed_inputs.signed_input": "public",   # one task input at a signed, expiring URL (test_provider_wan_server.py)
    "metrics.scrape": "public",     # its own rule: METRICS_TOKEN, or loopback only (tests/test_metrics.py)
    "static": "public",
}
SAMPLE_ARGS = {"task_id": "20261122T000000000Z-abcdef", "subpath": "outputs/x/video.mp4", "key_id": "k1",
               "user_id": "someone", "token": "t" * 20, "filename": "x.css", "batch_id": "b20261122T000000000Z-abcdef"}


@pytest.fixture
def anon(app):
    """A client with no session and no API key."""
    return FlaskClient(app, app.response_class, use_cookies=True)


# ---- every route needs a login

def rule_of(app, endpoint):
    view = app.view_functions[endpoint]
    access = "public" if endpoint == "static" else getattr(view, "access", "user")
    return access + (f"/{view.rate_limit}" if getattr(view, "rate_limit", None) else "")


def test_every_route_says_what_it_needs(app):
    assert {rule.endpoint: rule_of(app, rule.endpoint) for rule in app.url_map.iter_rules()} == ROUTE_RULES


def test_every_route_refuses_anonymous_requests(app, anon):
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule_of(app, rule.endpoint) == "public":
            continue
        url = rule.build({arg: SAMPLE_ARGS[arg] for arg in rule.arguments}, append_unknown=False)[1]
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            resp = anon.open(url, method=method, json={} if method != "GET" else None)
            assert resp.status_code in (302, 401), (method, url, resp.status_code)
            if resp.status_code == 302:
                assert resp.headers["Location"].startswith("/login")
            else:
                assert resp.get_json()["error"]["code"] == "login_required"
            checked += 1
    assert checked >= 35


def test_public_routes_answer_without_login(anon):
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/login").status_code == 200
    with anon.get("/static/js/common.js") as resp:
        assert resp.status_code == 200


def test_wrong_api_key_is_refused(anon):
    resp = anon.get("/api/tasks", headers={"Authorization": "Bearer sk-studio-wrong"})
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_api_key"


def test_env_api_key_works_without_csrf(app, anon, png_b64):
    resp = anon.post("/generate", json={"image": png_b64}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status_code == 202


# ---- sessions and CSRF

def test_login_sets_a_safe_session_cookie(app):
    browser = browser_client(app)
    page = browser.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    resp = browser.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token})
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_wrong_password_is_refused(app):
    browser = browser_client(app)
    page = browser.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    resp = browser.post("/login", data={"username": "admin", "password": "nope", "csrf_token": token})
    assert resp.status_code == 401 and browser.get("/api/tasks").status_code == 401


def test_cookie_post_needs_the_csrf_token(app, png_b64):
    browser = login(app, "admin", ADMIN_PASSWORD)
    refused = browser.post("/generate", json={"image": png_b64})
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "csrf_failed"
    accepted = browser.post("/generate", json={"image": png_b64}, headers={"X-CSRFToken": csrf_of(browser)})
    assert accepted.status_code == 202


def test_login_form_without_csrf_is_refused(app):
    resp = browser_client(app).post("/login", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert resp.status_code == 400


def test_next_never_redirects_off_site(app):
    browser = browser_client(app)
    page = browser.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    resp = browser.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token,
                                        "next": "https://evil.example/"})
    assert resp.headers["Location"] == "/"


def test_generate_is_rate_limited(app, anon, png_b64, monkeypatch):
    import auth

    monkeypatch.setitem(auth.RATE_LIMITS, "generate", (3, 60))
    headers = make_user(app, "busy")
    codes = [anon.post("/generate", json={"image": png_b64}, headers=headers).status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]


def test_first_start_prints_a_password_and_a_one_time_link(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "none.env"))
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d")})
    printed = capsys.readouterr().err
    password = re.search(r"password: (\S+)", printed).group(1)
    link = re.search(r"http://[^/]+(/login/\S+)", printed).group(1)
    browser = browser_client(app)
    assert browser.get(link).status_code == 302
    record = logging.LogRecord("werkzeug", logging.INFO, __file__, 0, '"GET %s HTTP/1.1" 302 -', (link,), None)
    assert all(f.filter(record) for f in logging.getLogger("werkzeug").filters)
    assert link.split("/")[-1] not in record.getMessage()          # access logs never keep the token
    assert browser.get("/api/me").get_json()["role"] == "admin"
    assert browser_client(app).get(link).status_code == 403          # the link works once
    login(app, "admin", password)
    create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d")})
    assert "password:" not in capsys.readouterr().err               # shown only once


# ---- ownership

def test_users_see_and_touch_only_their_own_tasks(app, anon, png_b64):
    alice, bob = make_user(app, "alice"), make_user(app, "bob")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    task_id = anon.post("/generate", json={"image": png_b64}, headers=alice).get_json()["task_id"]
    task = anon.get(f"/api/tasks/{task_id}", headers=alice).get_json()
    assert task["owner"] == app.extensions["accounts"].user_by_name("alice")["id"]
    input_url = "/media/" + task["inputs"][0]["path"]
    with anon.get(input_url, headers=alice) as resp:
        assert resp.status_code == 200
    for method, url in (("GET", f"/api/tasks/{task_id}"), ("POST", f"/api/tasks/{task_id}/cancel"),
                        ("POST", f"/api/tasks/{task_id}/retry"), ("DELETE", f"/api/tasks/{task_id}"),
                        ("GET", input_url)):
        resp = anon.open(url, method=method, headers=bob)
        assert resp.status_code == 404, (method, url)
        resp.close()
    assert anon.get("/api/tasks", headers=bob).get_json()["total"] == 0
    assert anon.get("/api/tasks", headers=alice).get_json()["total"] == 1
    assert anon.get("/api/tasks", headers=admin).get_json()["total"] == 1
    assert anon.get(f"/api/tasks/{task_id}", headers=admin).status_code == 200
    assert anon.post(f"/api/tasks/{task_id}/cancel", headers=alice).status_code == 200


def test_only_the_admin_manages_users(app, anon):
    bob = make_user(app, "bob")
    assert anon.get("/api/users", headers=bob).status_code == 403
    resp = anon.post("/api/users", json={"username": "carol", "password": "violet skies above",
                                         "images_per_day": 5}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status_code == 201 and "password_hash" not in resp.get_json()
    assert resp.get_json()["limits"]["images_per_day"] == 5 and resp.get_json()["limits"]["videos_per_day"] is None


def test_api_keys_are_shown_once_and_stored_hashed(app):
    make_user(app, "bob")
    bob = login(app, "bob")
    csrf = {"X-CSRFToken": csrf_of(bob)}
    made = bob.post("/api/keys", json={"name": "script"}, headers=csrf).get_json()
    assert made["key"].startswith("sk-studio-")
    listed = bob.get("/api/keys").get_json()["keys"]
    assert all(made["key"] not in str(k) for k in listed)
    assert made["key"] not in (Path(app.config["DATA_DIR"]) / "accounts.json").read_text()
    anon = browser_client(app)
    assert anon.get("/api/me", headers={"Authorization": f"Bearer {made['key']}"}).get_json()["username"] == "bob"
    assert bob.delete(f"/api/keys/{made['record']['id']}", headers=csrf).status_code == 204
    assert anon.get("/api/me", headers={"Authorization": f"Bearer {made['key']}"}).status_code == 401


# ---- hostile input

# Picture URLs (private addresses, malformed URLs, the fetch deadline): tests/test_safe_fetch.py.


def test_decompression_bomb_is_refused_without_decoding(client):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")
    started = time.monotonic()
    resp = client.post("/generate", json={"image": b64(bomb)})
    assert resp.status_code == 413 and resp.get_json()["error"]["code"] == "image_too_many_pixels"
    assert time.monotonic() - started < 2


def test_security_headers(client, anon):
    for resp in (client.get("/api/tasks"), anon.get("/login")):
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "same-origin"


# ---- no key material anywhere

def test_no_key_material_in_logs_backups_or_responses(tmp_path, monkeypatch, caplog):
    from tests.fakes.kling import Server

    ak, sk = "AK-LEAKCHECK-" + "a" * 19, "SK-LEAKCHECK-" + "s" * 19
    fake = Server(polls_to_finish=2, access_key=ak, secret_key=sk)
    fake.start()
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "none.env"))
    import providers.http
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    try:
        caplog.set_level(logging.DEBUG)
        app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d"), "ADMIN_PASSWORD": ADMIN_PASSWORD,
                          "API_KEYS": ADMIN_KEY, "KLING_API_BASE": fake.base_url, "KLING_ACCESS_KEY": ak,
                          "KLING_SECRET_KEY": sk, "HTTP_TIMEOUT_SECONDS": 1})
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_KEY}"
        fake.inject("submit", "rate_limit")                 # a fault on the way
        task_id = client.post("/generate", json={"provider": "kling", "model_name": "kling-v1-6",
                                                 "image": b64(picture())}).get_json()["task_id"]
        assert run_pipeline(app, task_id, skip_waits=True)["status"] == "succeeded"
        token = app.extensions["providers"]["kling"].auth_token()
        secrets_ = [ak, sk, token, ADMIN_PASSWORD, app.config["SECRET_KEY"]]
        texts = [caplog.text]
        for url in ("/api/tasks", f"/api/tasks/{task_id}", "/api/capabilities", "/api/me", "/api/keys",
                    "/api/users", "/readyz", "/tasks", "/"):
            texts.append(client.get(url).get_data(as_text=True))
        backup = task_backup.take_backup(app.extensions["task_store"], tmp_path / "b")
        texts.append(gzip.decompress(backup.read_bytes()).decode())
        texts.append((tmp_path / "d" / "tasks.jsonl").read_text())
        for text in texts:
            for secret in secrets_:
                assert secret not in text
    finally:
        fake.stop()

