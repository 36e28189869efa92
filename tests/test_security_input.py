"""What the studio promises about malformed input: a clear 4xx, never a 500, nothing left behind.

A corpus of several hundred malformed requests, most of them generated: every JSON endpoint gets
broken bodies (5,000-deep nesting, NaN/Infinity, huge numbers, duplicate keys, invalid UTF-8,
arrays and scalars instead of objects, NUL bytes, wrong content types), every field gets values
of the wrong type (`true` and `"3"` for numbers, numbers for text, lists, objects, control
characters), and the query arguments, task ids, pages and methods get odd values. Each request
goes over a socket to a real werkzeug server with a timeout, so a hang fails too. Every answer
must be a 4xx (pages may answer 2xx when they simply ignore an odd query) and, from a JSON
endpoint, carry `{"error": {"code", "message", "field"}}`; afterwards no task and no input file
exists that was not there before.

The account endpoints (`/api/keys`, `/api/users`, `/api/account/password`, `/login`) have their
own test, `test_account_endpoints_corpus`, because their handlers live in auth.py.
"""

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import auth
from tests import live_servers
from tests.conftest import ADMIN_KEY, ADMIN_PASSWORD, b64, picture
from tests.servers import serving
from tests.signin import csrf_of, login

TIMEOUT = 30
MISSING_TASK = "20261122T000000000Z-abcdef"


@dataclass
class Case:
    label: str
    method: str
    target: str
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    page: bool = False              # an HTML page: may answer 2xx when it ignores the oddity


# ---- the corpus, generated

def _json(value):
    return json.dumps(value).encode()


def broken_bodies():
    """(label, body bytes, content type) that no JSON endpoint may accept."""
    bodies = [
        ("5,000-deep arrays", b"[" * 5000 + b"]" * 5000),
        ("5,000-deep objects", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        ("65-deep arrays in a field", b'{"prompt": ' + b"[" * 65 + b"]" * 65 + b"}"),
        ("unclosed 5,000-deep", b"[" * 5000),
        ("empty body", b""),
        ("whitespace only", b"  \n "),
        ("empty array", b"[]"),
        ("array of objects", b'[{"prompt": "a"}]'),
        ("string", b'"prompt"'),
        ("number", b"5"),
        ("null", b"null"),
        ("true", b"true"),
        ("unclosed object", b"{"),
        ("missing value", b'{"prompt": }'),
        ("trailing comma", b'{"prompt": "a",}'),
        ("single quotes", b"{'prompt': 'a'}"),
        ("duplicate keys", b'{"prompt": "a", "prompt": "b"}'),
        ("invalid UTF-8", b'{"prompt": "\xff\xfe"}'),
        ("overlong UTF-8", b'{"prompt": "\xc0\xae\xc0\xae"}'),
        ("UTF-16 with BOM", '{"prompt": "a"}'.encode("utf-16")),
        ("UTF-8 BOM", b'\xef\xbb\xbf{"prompt": "a"}'),
        ("raw NUL between tokens", b'{"prompt": "a"\x00}'),
        ("raw NUL in a string", b'{"prompt": "a\x00b"}'),
        ("raw control character in a string", b'{"prompt": "a\x1bb"}'),
        ("NaN", b'{"cfg_scale": NaN, "n": NaN}'),
        ("Infinity", b'{"cfg_scale": Infinity, "n": Infinity}'),
        ("-Infinity", b'{"cfg_scale": -Infinity, "n": -Infinity}'),
        ("float overflowing to infinity", b'{"cfg_scale": 1e999, "n": 1e999}'),
        ("5,000-digit integer", b'{"n": ' + b"9" * 5000 + b"}"),
        ("unknown field", b'{"unknown_field": 1}'),
        ("prototype pollution", b'{"__proto__": {"role": "admin"}}'),
        ("trailing garbage", b'{"prompt": "a"} x'),
        ("two documents", b'{"prompt": "a"}{"prompt": "b"}'),
        ("lone surrogate escape", b'{"prompt": "\\ud800", "name": "\\udfff"}'),
        ("NUL escape", b'{"prompt": "\\u0000", "name": "\\u0000"}'),
    ]
    cases = [(label, body, "application/json") for label, body in bodies]
    valid_looking = b'{"prompt": "a"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         None, "application/json; charset=utf-16", "application/jsonx"):
        cases.append((f"content type {content_type}", valid_looking, content_type))
    return cases


def _post(label, target, body, content_type="application/json", key=ADMIN_KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if content_type:
        headers["Content-Type"] = content_type
    return Case(label, "POST", target, body, headers, **kwargs)


def _get(label, target, key=ADMIN_KEY, method="GET", **kwargs):
    return Case(label, method, target, headers={"Authorization": f"Bearer {key}"} if key else {}, **kwargs)


GOOD_PICTURE = b64(picture(320, 320, "JPEG"))
TEXT_BAD = [5, 1.5, True, False, [], {}, ["a"], {"a": 1}, "a\u0000b", "\u001b[31m", "a\ud800"]
VIDEO_TEXT = ["image", "image_tail", "prompt", "negative_prompt", "provider", "model_name", "mode", "camera",
              "aspect_ratio"]
IMAGE_TEXT = ["image", "prompt", "negative_prompt", "provider", "model_name", "model", "aspect_ratio",
              "image_reference"]
BAD_PICTURES = ["http://[::1/", "http://[zz::1]/", "http://127.0.0.1/x.png", "http://169.254.169.254/latest",
                "http://localhost:1/x.png", "http://[::1]:99999/x.png", "file:///etc/passwd", "ftp://example.com/x",
                "data:image/png;base64,!!!!", "data:image/png,notbase64", "AAAA", "not base64 at all",
                b64(b"GIF89a" + b"\0" * 64), b64(picture(20, 20)), b64(picture(1000, 300))]


def studio_corpus(key, existing_task):
    """Every malformed request to the studio's own endpoints (not auth.py's)."""
    cases = []
    for endpoint in ("/generate", "/generate_image"):
        for label, body, content_type in broken_bodies():
            cases.append(_post(f"{endpoint}: {label}", endpoint, body, content_type, key))
        cases.append(_declared_huge(endpoint, key))
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            cases.append(_get(f"{endpoint}: {method}", endpoint, key, method=method))
    # Each bad value in an otherwise good request, so that it alone decides the answer: a loose
    # type that slipped through would make a task (and fail the test) instead of a 4xx.
    good = {"image": GOOD_PICTURE, "prompt": "a slow pan over the lake"}
    for name in VIDEO_TEXT:
        cases += [_post(f"/generate {name}={value!r}", "/generate", _json({**good, name: value}), key=key)
                  for value in TEXT_BAD]
    for value in [True, 5.5, [], {}, "7", -5, 0, "5\u0000", "five", 10**30]:
        cases.append(_post(f"/generate duration={value!r}", "/generate", _json({**good, "duration": value}),
                           key=key))
    for value in [True, False, "0.5", [], {}, 2, -1, 1.0000001, 10**30]:
        cases.append(_post(f"/generate cfg_scale={value!r}", "/generate", _json({**good, "cfg_scale": value}),
                           key=key))
    for value in BAD_PICTURES:
        cases.append(_post(f"/generate image={value[:30]!r}", "/generate", _json({"image": value}), key=key))
        cases.append(_post(f"/generate_image image={value[:30]!r}", "/generate_image", _json({"image": value}),
                           key=key))
    cases += [
        _post("/generate prompt too long", "/generate", _json({"prompt": "x" * 2501}), key=key),
        _post("/generate unknown provider", "/generate", _json({"provider": "nope", "prompt": "a"}), key=key),
        _post("/generate unknown model", "/generate", _json({"model_name": "nope", "prompt": "a"}), key=key),
        _post("/generate tail without first", "/generate", _json({"image_tail": "AAAA"}), key=key),
    ]
    good = {"image": GOOD_PICTURE, "prompt": "the same lake at dusk"}
    for name in IMAGE_TEXT:
        cases += [_post(f"/generate_image {name}={value!r}", "/generate_image", _json({**good, name: value}),
                        key=key) for value in TEXT_BAD]
    for value in [True, False, "3", 3.0, 0, 10, -1, 10**30, [], {}, None, "1"]:
        cases.append(_post(f"/generate_image n={value!r}", "/generate_image", _json({**good, "n": value}), key=key))
    for name in ("image_fidelity", "human_fidelity"):
        for value in [True, "0.5", 2, -0.1, [], {}]:
            cases.append(_post(f"/generate_image {name}={value!r}", "/generate_image",
                               _json({**good, name: value}), key=key))

    # The listing's query arguments.
    for query in ["status=done", "status=queued,,nope", "status=" + "queued," * 60, "kind=audio", "kind=VIDEO",
                  "limit=-1", "limit=0", "limit=201", "limit=abc", "limit=1e3", "limit=%205", "limit=+5",
                  "limit=%D9%A5", "limit=1_0", "limit=" + "9" * 30, "limit=5.0", "offset=-1", "offset=1.5",
                  "offset=0x10", "foo=1", "_method=DELETE", "limit=1&limit=2", "q=%00", "q=" + "x" * 600,
                  "provider=" + "p" * 100, "q=a%0Ab", "status=%FF", "kind=%00video"]:
        cases.append(_get(f"/api/tasks?{query[:40]}", f"/api/tasks?{query}", key))
    cases.append(_get("/api/tasks DELETE", "/api/tasks", key, method="DELETE"))
    cases.append(_get("/api/tasks POST", "/api/tasks", key, method="POST"))

    # Task ids and methods.
    for task_id in [MISSING_TASK, "..", "%2e%2e", "x" * 300, "%00", "a%2fb", "%FF", "' OR 1=1 --"]:
        tid = task_id.replace(" ", "%20")
        cases += [_get(f"GET task {task_id[:20]}", f"/api/tasks/{tid}", key),
                  _get(f"cancel {task_id[:20]}", f"/api/tasks/{tid}/cancel", key, method="POST"),
                  _get(f"retry {task_id[:20]}", f"/api/tasks/{tid}/retry", key, method="POST"),
                  _get(f"DELETE {task_id[:20]}", f"/api/tasks/{tid}", key, method="DELETE")]
    cases += [
        _get("PUT a task", f"/api/tasks/{existing_task}", key, method="PUT"),
        _get("PATCH a task", f"/api/tasks/{existing_task}", key, method="PATCH"),
        _get("GET cancel", f"/api/tasks/{existing_task}/cancel", key),
        _get("GET retry", f"/api/tasks/{existing_task}/retry", key),
        _get("retry a task in progress", f"/api/tasks/{existing_task}/retry", key, method="POST"),
        _get("DELETE a task in progress", f"/api/tasks/{existing_task}", key, method="DELETE"),
        _get("retry with _method=DELETE", f"/api/tasks/{existing_task}/retry?_method=DELETE", key, method="POST"),
    ]

    # Media paths.
    for path in ["secret_key", "inputs/%2e%2e/secret_key", f"inputs/{existing_task}/%2e%2e/%2e%2e/secret_key",
                 f"inputs/{existing_task}/first.png.part", f"inputs/{existing_task}/nothing.png",
                 "outputs/x/y.mp4", "%00", "inputs/" + "x" * 300 + "/a.png"]:
        cases.append(_get(f"/media/{path[:40]}", f"/media/{path}", key))
        cases.append(_get(f"DELETE /media/{path[:40]}", f"/media/{path}", key, method="DELETE"))

    # Pages: odd query strings are ignored (2xx) or refused (4xx); other methods are a 405.
    for page in ("/", "/index.html", "/images", "/tasks"):
        for query in ["_method=DELETE", "_method=POST", "_external=1", "_scheme=javascript", "_anchor=x",
                      "lang=%00", "lang=" + "x" * 3000, "lang=zh&lang=en", "%FF=1", "a=%FF", "task=%00",
                      "task=../../secret_key"]:
            cases.append(_get(f"{page}?{query[:30]}", f"{page}?{query}", key, page=True))
        for method in ("DELETE", "PUT", "PATCH", "POST"):
            cases.append(_get(f"{method} {page}", page, key, method=method, page=True))
    cases.append(_get("GET /api/capabilities?_method=DELETE", "/api/capabilities?_method=DELETE", key, page=True))
    cases.append(_get("DELETE /api/capabilities", "/api/capabilities", key, method="DELETE"))
    return cases


def _declared_huge(endpoint, key):
    case = _post(f"{endpoint}: declares 100 MB and sends nothing", endpoint, b"", key=key)
    case.headers["Content-Length"] = str(100 * 1024 * 1024)
    return case


def account_corpus(user_key, user_password, browser=None):
    """Malformed requests to auth.py's endpoints: keys, users, the password change, the login form.

    Making keys and changing the password need a signed-in browser (`browser`: its cookie and CSRF
    header); with an API key they are refused before the body is read, which is checked too.
    """
    browser = browser or {}

    def signed_in(case):
        case.headers.pop("Authorization", None)
        case.headers.update(browser)
        return case
    cases = []
    for endpoint, key in (("/api/keys", user_key), ("/api/users", ADMIN_KEY), ("/api/account/password", user_key)):
        session = endpoint != "/api/users"
        for label, body, content_type in broken_bodies():
            case = _post(f"{endpoint}: {label}", endpoint, body, content_type, key)
            cases.append(signed_in(case) if session else case)
        for method in ("PUT", "PATCH"):
            cases.append(_get(f"{endpoint}: {method}", endpoint, key, method=method))
        if session:
            cases.append(_post(f"{endpoint}: with an API key", endpoint, _json({}), key=user_key))
    for value in [5, True, [], {}, "x\u0000", "x" * 10_000, None]:
        cases.append(signed_in(_post(f"/api/keys name={value!r:.20}", "/api/keys", _json({"name": value}))))
    cases.append(signed_in(_post("/api/keys unknown field", "/api/keys", _json({"name": "k", "scope": "everything"}))))
    for value in [["read", "read", "read", "read"], ["everything"], [], "read", 5, None, [5]]:
        cases.append(signed_in(_post(f"/api/keys scopes={value!r:.20}", "/api/keys", _json({"scopes": value}))))
    for value in [0, -1, 1.5, "7", True, 10**9]:
        cases.append(signed_in(_post(f"/api/keys expires_in_days={value!r:.20}", "/api/keys",
                                     _json({"expires_in_days": value}))))
    good_user = {"username": "dave", "password": "correct-horse-battery-staple"}
    for name, values in {"username": [5, True, [], {}, None, "a\u0000", "../admin", "x" * 100],
                         "password": [5, True, [], {}, None, "\u0000" * 12],
                         "images_per_day": [True, "3", -1, 1.5, 10**30, []],
                         "videos_per_day": [False, "1", -5, 2.5, {}]}.items():
        for value in values:
            cases.append(_post(f"/api/users {name}={value!r:.20}", "/api/users",
                               _json({**good_user, name: value}), key=ADMIN_KEY))
    cases.append(_post("/api/users unknown field", "/api/users", _json({**good_user, "role": "admin"}),
                       key=ADMIN_KEY))
    for name, values in {"current_password": [5, [], None, {}, True], "new_password": [5, [], None, {}, "\u0000" * 12]
                         }.items():
        for value in values:
            body = {"current_password": user_password, "new_password": "a-new-password-that-is-long", name: value}
            cases.append(signed_in(_post(f"/api/account/password {name}={value!r:.20}", "/api/account/password",
                                         _json(body))))
    for target in ("/api/keys/%00", "/api/keys/..", "/api/keys/" + "k" * 300, "/api/users/admin",
                   "/api/users/%00", "/api/users/..", "/api/users/nobody"):
        cases.append(_get(f"DELETE {target[:30]}", target, ADMIN_KEY, method="DELETE"))
    # The login form, anonymous: no CSRF token, JSON instead of a form, odd fields, bad one-time links.
    form = "application/x-www-form-urlencoded"
    for label, body, content_type in [("no CSRF token", b"username=admin&password=x", form),
                                      ("JSON body", b'{"username": "admin", "password": "x"}', "application/json"),
                                      ("deep JSON body", b"[" * 5000 + b"]" * 5000, "application/json"),
                                      ("invalid UTF-8 form", b"username=\xff\xfe&password=\xc0\xae", form),
                                      ("NUL in the form", b"username=ad%00min&password=%00", form),
                                      ("repeated fields", b"username=a&username=b&password=x", form),
                                      ("multipart without boundary", b"xx", "multipart/form-data"),
                                      ("empty body", b"", form)]:
        cases.append(_post(f"/login: {label}", "/login", body, content_type, key=None, page=True))
    for query in ["_method=DELETE", "next=//evil.example", "next=%00", "_external=1", "lang=%FF"]:
        cases.append(_get(f"/login?{query}", f"/login?{query}", None, page=True))
    for token in ["%00", "..%2f..%2fsecret_key", "t" * 300, "%FF"]:
        cases.append(_get(f"/login/{token[:20]}", f"/login/{token}", None, page=True))
    cases.append(_get("DELETE /login", "/login", None, method="DELETE", page=True))
    cases.append(_get("/account?_method=DELETE", "/account?_method=DELETE", user_key, page=True))
    return cases


# ---- running it against a real server

@pytest.fixture
def server(app, monkeypatch):
    # The per-user limit on new tasks a minute would answer most of the corpus with a 429 before
    # its body is looked at; it has its own test in test_auth.py.
    monkeypatch.setitem(auth.RATE_LIMITS, "generate", (1_000_000, 60))
    with serving(app) as httpd:
        yield httpd.server_port


@pytest.fixture
def user(app):
    accounts = app.extensions["accounts"]
    password = "correct-horse-battery-staple"
    created = accounts.create_user("carol", password)
    key, _ = accounts.create_api_key(created["id"], "test")
    browser = login(app, "carol", password)
    headers = {"Cookie": f"session={browser.get_cookie('session').value}", "X-CSRFToken": csrf_of(browser)}
    return {"key": key, "password": password, "browser": headers}


def send(port, case):
    """(status, headers, body) of one case sent as-is; raises socket.timeout after TIMEOUT seconds."""
    headers = {"Host": "127.0.0.1", "Connection": "close", **case.headers}
    if case.method in ("POST", "PUT", "PATCH") or case.body:
        headers.setdefault("Content-Length", str(len(case.body)))
    head = f"{case.method} {case.target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return live_servers.exchange(port, head.encode("latin-1") + b"\r\n" + case.body, TIMEOUT)


def problems_with(port, case):
    """What is wrong with the studio's answer to one case, or None."""
    started = time.monotonic()
    try:
        status, headers, body = send(port, case)
    except TimeoutError:
        return f"no answer within {TIMEOUT} s"
    took = time.monotonic() - started
    if status >= 500:
        return f"{status} {body[:160]!r}"
    if not 400 <= status < 500 and not (case.page and status < 400):
        return f"{status} (not a 4xx) {body[:160]!r}"
    if headers.get("content-type", "").startswith("application/json") and status >= 400:
        try:
            error = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return f"{status} without the error shape: {body[:160]!r}"
        if not (isinstance(error.get("code"), str) and isinstance(error.get("message"), str)
                and isinstance(error.get("field"), str | None)):
            return f"{status} with a malformed error: {error}"
    elif not case.page and status != 405:
        return f"{status} from a JSON endpoint without a JSON error body ({headers.get('content-type')})"
    if took > 10:
        return f"took {took:.1f} s"
    return None


def run_corpus(port, cases):
    return {f"{case.method} {case.label}": problem for case in cases if (problem := problems_with(port, case))}


def files_under(path):
    root = Path(path)
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} if root.exists() else set()


def task_ids(app):
    tasks, _ = app.extensions["task_store"].list(limit=10_000)
    return {t["id"] for t in tasks}


def all_keys(app):
    accounts = app.extensions["accounts"]
    return [key["id"] for user in accounts.users() for key in accounts.api_keys(user["id"])]


@pytest.fixture
def existing_task(client):
    resp = client.post("/generate_image", json={"image": b64(picture()), "n": 1})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def test_the_corpus_has_hundreds_of_cases():
    assert len(studio_corpus("k", MISSING_TASK)) >= 300
    assert len(account_corpus("k", "p")) >= 100


@pytest.mark.slow
def test_malformed_requests_get_a_4xx_and_leave_nothing_behind(app, server, user, existing_task):
    data_dir = app.config["DATA_DIR"]
    tasks_before, inputs_before = task_ids(app), files_under(Path(data_dir) / "inputs")
    cases = studio_corpus(user["key"], existing_task) + studio_corpus(ADMIN_KEY, existing_task)[:60]
    started = time.monotonic()
    problems = run_corpus(server, cases)
    took = time.monotonic() - started
    assert not problems, f"{len(problems)} of {len(cases)} cases went wrong:\n" + "\n".join(
        f"  {label}: {problem}" for label, problem in problems.items())
    assert task_ids(app) == tasks_before, "a malformed request left a task behind"
    assert files_under(Path(data_dir) / "inputs") == inputs_before, "a malformed request left a file behind"
    assert took < len(cases) * 0.5, f"{len(cases)} cases took {took:.1f} s"


def test_account_endpoints_corpus(app, server, user):
    """auth.py's endpoints under the same rules (kept apart: their handlers are rewritten in auth.py)."""
    data_dir = app.config["DATA_DIR"]
    tasks_before, inputs_before = task_ids(app), files_under(Path(data_dir) / "inputs")
    keys_before = all_keys(app)
    cases = account_corpus(user["key"], user["password"], user["browser"])
    problems = run_corpus(server, cases)
    assert not problems, f"{len(problems)} of {len(cases)} cases went wrong:\n" + "\n".join(
        f"  {label}: {problem}" for label, problem in problems.items())
    assert task_ids(app) == tasks_before and files_under(Path(data_dir) / "inputs") == inputs_before
    assert all_keys(app) == keys_before, "a malformed request made an API key"
    assert [u["username"] for u in app.extensions["accounts"].users()] == ["admin", "carol"]


# ---- a 100 MB streamed body

def post_chunked(port, target, key, megabytes=100):
    """POST `megabytes` of JSON-looking data in 1 MiB chunks (no Content-Length); the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    head = (f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    chunk = b"a" * (1024 * 1024)

    def send_body():
        try:
            sock.sendall(head.encode() + b'b\r\n{"prompt":"\r\n')
            for _ in range(megabytes):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sock.sendall(b'2\r\n"}\r\n0\r\n\r\n')
        except OSError:
            pass                        # the server answered and hung up before the end: expected

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    try:
        return live_servers.read_response(sock)
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)     # wakes the sender if it is blocked in sendall
        except OSError:
            pass                                # already disconnected by the server
        sender.join(timeout=TIMEOUT)
        sock.close()


def assert_too_large(answer):
    status, headers, body = answer
    assert status == 413, (status, body[:200])
    error = json.loads(body)["error"]
    assert error["code"] == "payload_too_large" and error["message"]


@pytest.mark.parametrize("endpoint", ["/generate", "/generate_image"])
def test_a_100_mb_chunked_body_is_a_413_on_the_dev_server(app, server, endpoint):
    assert_too_large(post_chunked(server, endpoint, ADMIN_KEY))
    assert task_ids(app) == set() and files_under(Path(app.config["DATA_DIR"]) / "inputs") == set()


def test_a_100_mb_chunked_body_is_a_413_under_gunicorn(tmp_path):
    data = tmp_path / "data"
    process, port = live_servers.start("gunicorn", data, tmp_path)
    try:
        for endpoint in ("/generate", "/generate_image"):
            assert_too_large(post_chunked(port, endpoint, ADMIN_KEY))
        # A body under the cap is read whole and judged on its content (a 2 MB prompt is too long).
        status, _, body = post_chunked(port, "/generate", ADMIN_KEY, megabytes=2)
        assert status == 422 and json.loads(body)["error"]["field"] == "prompt"
    finally:
        live_servers.stop(process)
    assert files_under(data / "inputs") == set()


def test_a_chunked_body_under_the_cap_is_read_whole(app, server):
    # Not cut at the cap, not refused: the prompt is 2 MB long, so the answer is about that.
    status, _, body = post_chunked(server, "/generate", ADMIN_KEY, megabytes=2)
    assert status == 422 and json.loads(body)["error"]["field"] == "prompt"


# ---- the JSON rules one by one (through the test client: they hold for every server)

def nested(depth):
    """A body whose `prompt` makes the whole document `depth` levels deep."""
    return b'{"prompt": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_64_levels_are_parsed_and_65_are_refused(client):
    parsed = client.post("/generate", data=nested(64), content_type="application/json").get_json()["error"]
    assert (parsed["code"], parsed["field"]) == ("invalid_field", "prompt")      # parsed, then judged
    refused = client.post("/generate", data=nested(65), content_type="application/json")
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "invalid_json"


def test_brackets_inside_strings_do_not_count(client):
    body = json.dumps({"prompt": "[" * 1000 + "{\"" * 500, "provider": "nope"}).encode()   # escaped quotes too
    error = client.post("/generate", data=body, content_type="application/json").get_json()["error"]
    assert error["field"] == "provider"


@pytest.mark.parametrize("body", [b'{"prompt": "a", "prompt": "b"}', b'{"cfg_scale": NaN}', b'{"n": 1e999}',
                                  b'{"prompt": "\xff"}', '{"prompt": "a"}'.encode("utf-16")])
def test_json_that_python_would_take_is_refused_even_from_a_silent_reader(app, client, body):
    # A reader that asks for silence (get_json(silent=True)) must not take a malformed body as "no body".
    admin = login(app, "admin", ADMIN_PASSWORD)
    for endpoint, caller, headers in (("/generate_image", client, {}),
                                      ("/api/keys", admin, {"X-CSRFToken": csrf_of(admin)})):
        resp = caller.post(endpoint, data=body, content_type="application/json", headers=headers)
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_json", endpoint


def test_url_options_in_the_query_are_ignored_by_the_language_links(client):
    page = client.get("/tasks?_method=DELETE&_external=1&_anchor=x&_scheme=javascript&q=lake")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "javascript:" not in html and "http://" not in html.split("<body", 1)[1].split("</nav>", 1)[0]
    assert "q=lake" in html
