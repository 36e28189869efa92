"""error_pages.py: one renderer; JSON `{"error": {"code", "message", "field"}}` for API clients,
pages in the studio's layout for browsers, and both from the same AppError."""

import logging
import re

import pytest

import auth
from access import admin_only
from errors import Conflict
from tests.conftest import ADMIN_PASSWORD
from tests.signin import browser_client, csrf_of, login, login_token, make_user, try_login

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}   # what Chromium sends
SECRET = "provider said: sk-live-0123456789 quota gone"


def error_of(resp, status, code):
    """The JSON error body, checked for the house shape: exactly code, message and field."""
    assert resp.status_code == status and resp.mimetype == "application/json", resp.get_data(as_text=True)[:300]
    error = resp.get_json()["error"]
    # `params` (what the message was filled with) and a provider's own words may come beside them.
    assert set(error) - {"params", "provider_message"} == {"code", "message", "field"} and error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def page_of(resp, status):
    """The HTML error page, checked for the studio's layout and the way back."""
    assert resp.status_code == status and resp.mimetype == "text/html", resp.get_data(as_text=True)[:300]
    html = resp.get_data(as_text=True)
    assert 'class="navbar' in html and "AIAPI Studio" in html             # base.html's navigation
    assert re.search(r'<a class="btn btn-primary" id="error-home" href="/">', html)
    assert f'data-status="{status}"' in html
    return html


@pytest.fixture
def boom(app):
    """Test-only views that fail unexpectedly, with a secret in the exception, as JSON and as a page."""
    def fail():
        raise RuntimeError(SECRET)
    app.add_url_rule("/api/test-boom", "test_boom_api", fail)
    app.add_url_rule("/test-boom", "test_boom_page", fail)
    return app


# ---- JSON for API clients

def test_an_unknown_task_is_a_json_404_with_a_null_field(client):
    error = error_of(client.get("/api/tasks/20261122T000000000Z-abcdef", headers=HTML), 404, "not_found")
    assert error["field"] is None


def test_a_wrong_method_is_a_json_405_that_keeps_allow(client):
    resp = client.put("/api/tasks")
    assert error_of(resp, 405, "method_not_allowed")["field"] is None
    assert "GET" in resp.headers["Allow"]


def test_an_oversized_body_is_a_json_413(app, client):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    resp = client.post("/generate", data=b"x" * 2000, content_type="application/json")
    assert error_of(resp, 413, "payload_too_large")["field"] is None


def test_invalid_json_is_a_json_400(client):
    resp = client.post("/generate", data=b'{"image": ', content_type="application/json")
    assert error_of(resp, 400, "invalid_json")["field"] is None


def test_a_field_error_names_its_field(client):
    resp = client.post("/generate", json={"image": "not base64 at all!!"})
    assert error_of(resp, 400, resp.get_json()["error"]["code"])["field"] == "image"


def test_too_many_tasks_is_a_json_429_with_retry_after(app, client, png_b64, monkeypatch):
    monkeypatch.setitem(auth.RATE_LIMITS, "generate", (1, 60))
    headers = make_user(app, "busy")
    assert client.post("/generate", json={"image": png_b64}, headers=headers).status_code == 202
    resp = client.post("/generate", json={"image": png_b64}, headers=headers)
    assert error_of(resp, 429, "rate_limited")["field"] is None
    assert 0 < int(resp.headers["Retry-After"]) <= 60


def test_an_unexpected_error_is_a_generic_json_500_and_is_logged(boom, caplog):
    with caplog.at_level(logging.ERROR, logger="error_pages"):
        resp = boom.test_client().get("/api/test-boom")
    error = error_of(resp, 500, "internal_error")
    assert error["field"] is None and "sk-live" not in resp.get_data(as_text=True)
    logged = [r for r in caplog.records if r.name == "error_pages"]
    assert logged and logged[0].exc_info and "/api/test-boom" in logged[0].getMessage()


def test_a_script_asking_for_json_gets_json_on_a_page_path(client):
    resp = client.get("/no-such-page", headers={"Accept": "application/json, text/javascript, */*; q=0.01"})
    assert error_of(resp, 404, "not_found")["field"] is None


def test_an_anonymous_api_call_is_a_json_401(app):
    assert error_of(browser_client(app).get("/api/tasks", headers=HTML), 401, "login_required")["field"] is None


# ---- pages for browsers

def test_a_missing_page_is_the_studios_404_page(app):
    browser = login(app, "admin", ADMIN_PASSWORD)
    html = page_of(browser.get("/no-such-page", headers=HTML), 404)
    assert "Page not found" in html and 'id="user-menu"' in html       # the signed-in layout
    assert '"error"' not in html.split('id="studio-config"')[0]        # not the JSON body
    # The language toggle keeps this address (a 404 has no endpoint to build it from).
    assert 'href="?lang=zh"' in html


def test_the_404_page_in_chinese(app):
    browser = login(app, "admin", ADMIN_PASSWORD)
    html = page_of(browser.get("/no-such-page", headers={**HTML, "Accept-Language": "zh-CN,zh;q=0.9"}), 404)
    assert "找不到页面" in html and "返回工作室" in html and 'lang="zh-Hans"' in html
    assert "此地址没有内容" in html


def test_a_page_for_the_admin_only_is_a_403_page_for_a_user(app):
    @app.get("/test-admin-page")
    @admin_only
    def admin_page():
        return "for the admin"
    make_user(app, "ivy")
    html = page_of(login(app, "ivy").get("/test-admin-page", headers=HTML), 403)
    assert "Not allowed" in html and "Only the admin can do this." in html


def test_an_unexpected_error_page_never_shows_the_exception(boom, caplog):
    browser = login(boom, "admin", ADMIN_PASSWORD)
    with caplog.at_level(logging.ERROR, logger="error_pages"):
        html = page_of(browser.get("/test-boom", headers=HTML), 500)
    assert "sk-live" not in html and "RuntimeError" not in html and "provider said" not in html
    assert "Something went wrong on the server" in html
    assert any(r.exc_info for r in caplog.records if r.name == "error_pages")


def test_the_error_page_renders_without_a_signed_in_user(app):
    # Static files are public: nobody is signed in when this 404 is rendered.
    html = page_of(browser_client(app).get("/static/no-such-file.css", headers=HTML), 404)
    assert 'id="user-menu"' not in html


def test_the_error_page_renders_before_the_request_was_authenticated(app):
    def refuse():
        raise Conflict("The studio is busy restoring a backup.")
    app.before_request_funcs.setdefault(None, []).insert(0, refuse)      # runs before auth.authenticate
    html = page_of(browser_client(app).get("/tasks", headers=HTML), 409)
    assert "The studio is busy restoring a backup." in html and 'id="user-menu"' not in html


def test_a_form_post_without_the_csrf_token_is_an_error_page(app):
    browser = login(app, "admin", ADMIN_PASSWORD)
    html = page_of(browser.post("/logout", headers=HTML), 400)
    assert "security token of this page is missing or expired" in html
    assert browser.get("/api/me").status_code == 200                   # still signed in


def test_a_json_post_without_the_csrf_token_is_json(app):
    browser = login(app, "admin", ADMIN_PASSWORD)
    assert error_of(browser.post("/api/keys", json={"name": "x"}, headers=HTML), 400, "csrf_failed")["field"] is None
    accepted = browser.post("/api/keys", json={"name": "x"}, headers={"X-CSRFToken": csrf_of(browser)})
    assert accepted.status_code == 201


# ---- the sign-in form shows its own errors

def test_a_rate_limited_sign_in_shows_the_form_with_the_message(app):
    browser = browser_client(app)
    for _ in range(12):
        resp = try_login(browser, "admin", "a wrong guess")
        if resp.status_code == 429:
            break
    assert resp.status_code == 429 and 0 < int(resp.headers["Retry-After"]) <= 64
    html = resp.get_data(as_text=True)
    assert 'id="login-form"' in html and "Too many sign-in attempts" in html


def test_a_sign_in_without_the_csrf_token_shows_the_form(app):
    browser = browser_client(app)
    login_token(browser)                    # a session, but the form's token is not sent
    resp = browser.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "next": "/tasks"},
                        headers=HTML)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and 'id="login-form"' in html and 'value="/tasks"' in html
    assert "security token of this page is missing or expired" in html
