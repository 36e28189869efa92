"""Helpers for the browser tests: the studio on a real port with its pipeline running, and
Debian's Chromium (/usr/bin/chromium, installed by scripts/ensure-chromium) driven by Playwright.
"""

import logging
import re
import threading
import time
from contextlib import contextmanager

import pytest
from flask.testing import FlaskClient
from werkzeug.serving import WSGIRequestHandler, make_server

import task_query
from tasks import TERMINAL

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
# Reduced motion turns Bootstrap's fades off: a click on a dialog still fading in on a loaded
# machine is ignored by Bootstrap, which made tests flaky without testing anything of ours.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--force-prefers-reduced-motion"]
PIPELINE_PAUSE = 0.2        # seconds between pipeline rounds
_RESPONSE = "studio.tests.response"     # the environ key under which serve() keeps each response


class _CloseOnce:
    """A response iterable whose close() runs the app's close() once, whoever calls it first."""

    def __init__(self, iterable):
        self._iterable = iterable
        self._closed = False

    def __iter__(self):
        return iter(self._iterable)

    def close(self):
        if not self._closed:
            self._closed = True
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()


class _ClosingRequestHandler(WSGIRequestHandler):
    """werkzeug's dev server (3.1, serving.py run_wsgi) calls close() on the app's response at the
    end of a `finally` that first reads what is left of the request from the socket. When the browser
    has reset the connection (it navigated away while a ranged thumbnail was being sent), that read
    raises ConnectionResetError, close() is skipped and send_file's open file is left to the garbage
    collector: a ResourceWarning that filterwarnings=error turns into a failure of whichever test runs
    then. The server reports such a drop to connection_dropped(); this one closes the response."""

    def connection_dropped(self, error, environ=None):
        response = (environ or {}).pop(_RESPONSE, None)
        if response is not None:
            response.close()


def serve(app):
    """A threaded werkzeug server for `app` on 127.0.0.1:<free port> that closes every response,
    also when the client drops the connection (WSGI requires close(); see _ClosingRequestHandler)."""

    def remembering(environ, start_response):
        response = _CloseOnce(app(environ, start_response))
        environ[_RESPONSE] = response
        return response

    return make_server("127.0.0.1", 0, remembering, threaded=True, request_handler=_ClosingRequestHandler)


class LiveStudio:
    """A studio app served by werkzeug on 127.0.0.1:<free port>, with the pipeline jobs run in a
    background thread (pausable, so a test can hold a task in `queued`)."""

    def __init__(self, app):
        self.app = app
        self.store = app.extensions["task_store"]
        self.providers = app.extensions["providers"]
        self._server = serve(app)
        self.base_url = f"http://127.0.0.1:{self._server.server_port}"
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._round = threading.Lock()
        self._threads = [threading.Thread(target=self._server.serve_forever, name="studio-http", daemon=True),
                         threading.Thread(target=self._pipeline, name="studio-pipeline", daemon=True)]

    def start(self):
        for thread in self._threads:
            thread.start()
        return self

    def url(self, path):
        return self.base_url + path

    def sign_in(self, context, username="admin", password=None):
        """Give a browser context the session of a user signed in through the login form."""
        from tests.conftest import ADMIN_PASSWORD

        client = FlaskClient(self.app, self.app.response_class, use_cookies=True)
        page = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        resp = client.post("/login", data={"username": username, "password": password or ADMIN_PASSWORD,
                                           "csrf_token": token})
        assert resp.status_code == 302, "sign-in failed"
        context.add_cookies([{"name": "session", "value": client.get_cookie("session").value,
                              "url": self.base_url}])
        return context

    def _pipeline(self):
        while not self._stop.is_set():
            if not self._paused.is_set():
                with self._round:
                    try:
                        task_query.dispatch(self.store, self.providers)
                        task_query.poll(self.store, self.providers)
                        task_query.download(self.store, self.providers)
                    except Exception:   # keep the loop alive; the test that waits will fail
                        log.exception("pipeline round failed")
            self._stop.wait(PIPELINE_PAUSE)

    @contextmanager
    def paused(self):
        """Hold the pipeline (after its current round) so new tasks stay queued."""
        self._paused.set()
        with self._round:
            pass
        try:
            yield
        finally:
            self._paused.clear()

    def wait_for(self, task_id, statuses=TERMINAL, timeout=60):
        """The task once it reaches one of `statuses`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.store.get(task_id)
            if task and task["status"] in statuses:
                return task
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} stuck in {self.store.get(task_id)['status']}")

    def stop(self):
        self._stop.set()
        self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=10)
        self._server.server_close()
        for provider in self.providers.values():
            close = getattr(provider, "close", None)
            if close:
                close()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class PageProblems:
    """Console errors, uncaught exceptions and dialogs (alert/confirm) of one page."""

    def __init__(self, page):
        self.items = []
        self.dialogs = []
        self._allowed = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.items.append(f"uncaught: {exc}"))
        page.on("dialog", self._dialog)

    def _console(self, message):
        if message.type == "error":
            self.items.append(f"console: {message.text}")

    def _dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def allow(self, fragment):
        """Expect console errors containing `fragment` (e.g. a 422 the test provokes)."""
        self._allowed.append(fragment)

    def unexpected(self):
        return [item for item in self.items if not any(f in item for f in self._allowed)] + self.dialogs


# ---- the fixtures' bodies, shared by the browser test modules

# Stricter than the studio's own policy: a violation is a console error, so it fails a test.
STRICT_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
              "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
              "form-action 'self'; frame-ancestors 'none'")


def serve_studio(tmp_path_factory, name="studio", strict_csp=True, **config):
    """Body of a module-scoped `studio` fixture (`yield from serve_studio(...)`): a studio on a real
    port with the tests' admin, its pipeline running; `config` adds settings."""
    from app import create_app
    from tests.conftest import ADMIN_KEY, ADMIN_PASSWORD

    tmp = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DATA_DIR", raising=False)
        mp.setenv("DOTENV_PATH", str(tmp / "no.env"))
        app = create_app({"TESTING": True, "DATA_DIR": str(tmp / "data"), "SECRET_KEY": "test",
                          "API_KEYS": ADMIN_KEY, "ADMIN_PASSWORD": ADMIN_PASSWORD, **config})
    if strict_csp:
        @app.after_request
        def strict(response):
            response.headers.setdefault("Content-Security-Policy", STRICT_CSP)
            return response
    live = LiveStudio(app).start()
    try:
        yield live
    finally:
        live.stop()


def run_chromium():
    """Body of a module-scoped `browser` fixture: Debian's Chromium, closed at the end."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()
