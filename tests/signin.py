"""Test helpers that act as people do: users made by the admin, browsers signed in through the form."""

import re

from flask.testing import FlaskClient

USER_PASSWORD = "correct horse battery staple"


def browser_client(app):
    """A client with cookies and no API key, like a browser."""
    return FlaskClient(app, app.response_class, use_cookies=True)


def login_token(browser):
    page = browser.get("/login").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def try_login(browser, username, password, **extra):
    return browser.post("/login", data={"username": username, "password": password,
                                        "csrf_token": login_token(browser), **extra})


def login(app, username, password=USER_PASSWORD):
    """A browser-like client signed in through the login form (with its CSRF token)."""
    browser = browser_client(app)
    resp = try_login(browser, username, password)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    return browser


def csrf_of(browser):
    page = browser.get("/tasks").get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)


def make_user(app, username, scopes=("generate", "read"), **limits):
    """A user made through the accounts store, and headers with an API key of theirs."""
    accounts = app.extensions["accounts"]
    user = accounts.create_user(username, USER_PASSWORD, **limits)
    key, _ = accounts.create_api_key(user["id"], "test", scopes=scopes)
    return {"Authorization": f"Bearer {key}"}
