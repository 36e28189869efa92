"""What /media promises an attacker: it serves only files a task's own record lists, to the task's owner.

A signed-in user who knows their own task id tries every way of walking out of it: `..` in all
its encodings, backslashes, doubled and trailing slashes, NUL, absolute paths, look-alike Unicode
dots, overlong UTF-8, unfinished `.part` files, another user's task, symlinks and stray files
planted in a task folder. Each answer must be a 404 that carries nothing of the file. The requests
go over raw sockets, byte for byte as written here, to the real servers the studio runs under:
the werkzeug server of `python app.py` and gunicorn with the shipped `gunicorn.conf.py`.
Listed files still serve, with Range, and are marked private to shared caches.
"""

import shutil
from pathlib import Path

import pytest

from app import create_app
from tests import live_servers
from tests.conftest import ADMIN_KEY, ADMIN_PASSWORD, b64, picture, run_pipeline

SECRET = "5ec7e7" * 10 + "cafe"                 # the signing key the attack was after
PLANTED = b"planted-" + SECRET.encode()        # content of every file the record does not list


# ---- a data dir with two users' finished tasks, and things planted in them

def _make_user(accounts, name):
    user = accounts.create_user(name, "correct-horse-battery-staple")
    key, _ = accounts.create_api_key(user["id"], "test")
    return key


def _image_task(app, key):
    client = app.test_client()
    resp = client.post("/generate_image", json={"image": b64(picture(seed=len(key))), "n": 1},
                       headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 202, resp.get_json()
    task = run_pipeline(app, resp.get_json()["task_id"])
    assert task["status"] == "succeeded", task["error"]
    return task


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    base = tmp_path_factory.mktemp("studio")
    data = base / "data"
    data.mkdir()
    (data / "secret_key").write_text(SECRET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOTENV_PATH", str(base / "no.env"))
        mp.setenv("API_KEYS", ADMIN_KEY)
        mp.setenv("ADMIN_PASSWORD", ADMIN_PASSWORD)
        app = create_app({"TESTING": True, "DATA_DIR": str(data), "BACKUP_DIR": str(base / "backups")})
        accounts = app.extensions["accounts"]
        alice, bob = _make_user(accounts, "alice"), _make_user(accounts, "bob")
        own, linked, moved, other = (_image_task(app, key) for key in (alice, alice, alice, bob))
    assert app.config["SECRET_KEY"] == SECRET

    # Planted by someone with a shell, or by a bug elsewhere: none of it is in a record.
    a = own["id"]
    (data / "inputs" / a / "stray.png").write_bytes(PLANTED)
    (data / "outputs" / a / "image-1.png.part").write_bytes(PLANTED)
    (data / "inputs" / a / "evil.png").symlink_to(data / "secret_key")
    (data / "outputs" / a / "secret_key").symlink_to(data / "secret_key")
    # A listed file replaced by a symlink, and a listed task folder that is a symlink elsewhere.
    listed = data / linked["inputs"][0]["path"]
    listed.unlink()
    listed.symlink_to(data / "secret_key")
    elsewhere = base / "elsewhere"
    shutil.move(data / "outputs" / moved["id"], elsewhere)
    (data / "outputs" / moved["id"]).symlink_to(elsewhere, target_is_directory=True)
    return {"data": data, "base": base, "alice": alice, "bob": bob, "own": own, "linked": linked,
            "moved": moved, "other": other}


# ---- the two real servers

@pytest.fixture(scope="module", params=["werkzeug", "gunicorn"])
def server(request, studio):
    process, port = live_servers.start(request.param, studio["data"], studio["base"])
    yield {"kind": request.param, "port": port}
    live_servers.stop(process)


def request(port, target, key=None, headers=()):
    return live_servers.get(port, target, key, headers)


# ---- the corpus

def traversal_corpus(s):
    """(label, request target) pairs; A is alice's task, O is bob's; every one must be a 404.

    Targets labelled "raw" hold non-ASCII characters sent as UTF-8 bytes, unencoded.
    """
    a, o = s["own"]["id"], s["other"]["id"]
    ia, oa, oo = f"/media/inputs/{a}", f"/media/outputs/{a}", f"/media/outputs/{o}"
    other_file = s["other"]["outputs"][0]["path"].rsplit("/", 1)[1]
    cases = {
        "dotdot": f"{ia}/../../secret_key",
        "encoded dotdot": f"{ia}/%2e%2e/%2e%2e/secret_key",
        "upper-case encoded dotdot": f"{ia}/%2E%2E/%2E%2E/secret_key",
        "half-encoded dotdot": f"{ia}/.%2e/%2e./secret_key",
        "double-encoded dotdot": f"{ia}/%252e%252e/%252e%252e/secret_key",
        "dotdot with encoded slash": f"{ia}/..%2f..%2fsecret_key",
        "all encoded": f"{ia}/%2e%2e%2f%2e%2e%2fsecret_key",
        "double-encoded slash": f"{ia}/..%252f..%252fsecret_key",
        "accounts file": f"{ia}/%2e%2e/%2e%2e/accounts.json",
        "task store": f"{oa}/%2e%2e/%2e%2e/tasks.jsonl",
        "other user's media through own task": f"{oa}/%2e%2e/{o}/{other_file}",
        "other user's media with plain dotdot": f"{oa}/../{o}/{other_file}",
        "other user's task directly": f"{oo}/{other_file}",
        "other user's input directly": f"/media/inputs/{o}/reference.png",
        "backslashes": f"{ia}/..\\..\\secret_key",
        "encoded backslashes": f"{ia}/..%5c..%5csecret_key",
        "leading encoded backslash": f"{ia}/%5c..%5c..%5csecret_key",
        "doubled slashes": f"{ia}//..//..//secret_key",
        "doubled slash before a listed name": f"{ia}//reference.png",
        "trailing slash on a listed file": f"{ia}/reference.png/",
        "part file": f"{oa}/image-1.png.part",
        "part file with trailing slash": f"{oa}/image-1.png.part/",
        "NUL after a listed name": f"{ia}/reference.png%00",
        "NUL and another extension": f"{ia}/reference.png%00.jpg",
        "NUL dotdot": f"{ia}/%00../../secret_key",
        "absolute path": "/media//etc/passwd",
        "encoded absolute path": "/media/%2fetc%2fpasswd",
        "encoded absolute secret": f"/media/%2F{s['data'].as_posix().lstrip('/')}/secret_key",
        "absolute path inside a task": f"{ia}/%2Fetc%2Fpasswd",
        "data dir file": "/media/secret_key",
        "raw two-dot leader": f"{ia}/\u2025/secret_key",
        "encoded two-dot leader": f"{ia}/%E2%80%A5/%E2%80%A5/secret_key",
        "fullwidth dots": f"{ia}/%EF%BC%8E%EF%BC%8E/%EF%BC%8E%EF%BC%8E/secret_key",
        "raw fullwidth dots": f"{ia}/\uff0e\uff0e/\uff0e\uff0e/secret_key",
        "overlong dots": f"{ia}/%C0%AE%C0%AE/%C0%AE%C0%AE/secret_key",
        "overlong slash": f"{ia}/..%C0%AF..%C0%AFsecret_key",
        "three-byte overlong dot": f"{ia}/%E0%80%AE%E0%80%AE/%E0%80%AE%E0%80%AE/secret_key",
        "dot segment": f"/media/inputs/./{a}/reference.png",
        "dot file segment": f"{ia}/./reference.png",
        "dot-dot-semicolon": f"{ia}/..;/..;/secret_key",
        "four dots": f"{ia}/....//....//secret_key",
        "traversal before the task id": f"/media/inputs/../inputs/{a}/reference.png",
        "upper-case folder": f"/media/INPUTS/{a}/reference.png",
        "upper-case extension": f"{ia}/REFERENCE.PNG",
        "unlisted stray file": f"{ia}/stray.png",
        "unlisted symlink to the key": f"{ia}/evil.png",
        "unlisted symlink with the key's name": f"{oa}/secret_key",
        "listed file that is a symlink": "/media/" + s["linked"]["inputs"][0]["path"],
        "listed file in a symlinked folder": s["moved"]["outputs"][0]["url"],
        "traversal with download": f"{ia}/%2e%2e/%2e%2e/secret_key?download=1",
        "past a listed file": f"{oa}/thumb-1.jpg/..%2f..%2f..%2fsecret_key",
        "empty name": f"{ia}/",
        "task folder itself": ia,
        "outputs root": "/media/outputs/",
    }
    return list(cases.items())


def test_the_corpus_is_broad():
    labels = [label for label, _ in traversal_corpus({"own": {"id": "A"}, "other": {
        "id": "O", "outputs": [{"path": "outputs/O/image-1.png"}]}, "linked": {"inputs": [{"path": "x"}]},
        "moved": {"outputs": [{"url": "/media/x"}]}, "data": Path("/data")})]
    assert len(labels) >= 30


def test_every_traversal_form_is_a_404_that_leaks_nothing(server, studio):
    leaks, wrong = [], []
    other_bytes = (studio["data"] / studio["other"]["outputs"][0]["path"]).read_bytes()
    for label, target in traversal_corpus(studio):
        status, headers, body = request(server["port"], target, studio["alice"])
        if SECRET.encode() in body or PLANTED in body or (len(body) > 64 and body in other_bytes):
            leaks.append(label)
        # Raw non-ASCII bytes are not a valid request target: gunicorn's parser refuses them itself
        # with a 400 before the app sees them, which is as good as the 404.
        allowed = (404, 400) if label.startswith("raw ") and server["kind"] == "gunicorn" else (404,)
        if status not in allowed:
            wrong.append(f"{label} ({target}): {status} {body[:120]!r}")
    assert not leaks, f"{server['kind']} leaked through: {leaks}"
    assert not wrong, f"{server['kind']} answered other than 404:\n" + "\n".join(wrong)


def test_a_404_has_the_error_shape(server, studio):
    status, headers, body = request(server["port"], f"/media/inputs/{studio['own']['id']}/%2e%2e/%2e%2e/secret_key",
                                    studio["alice"])
    assert status == 404 and headers["content-type"] == "application/json"
    assert b'"code":"not_found"' in body.replace(b" ", b"")


def test_listed_files_still_serve_with_range_and_privately(server, studio):
    task = studio["own"]
    out = task["outputs"][0]
    paths = ["/media/" + task["inputs"][0]["path"], out["url"], out["thumbnail_url"]]
    for path in paths:
        status, headers, body = request(server["port"], path, studio["alice"])
        assert status == 200, (path, status, body[:200])
        assert body == (studio["data"] / path[len("/media/"):]).read_bytes()
        cache = {part.strip() for part in headers["cache-control"].split(",")}
        assert "private" in cache and "public" not in cache, headers["cache-control"]
        vary = {part.strip().lower() for part in headers["vary"].split(",")}
        assert {"cookie", "authorization"} <= vary, headers["vary"]
    status, headers, body = request(server["port"], out["url"], studio["alice"], headers=[("Range", "bytes=10-29")])
    assert status == 206 and len(body) == 20
    assert headers["content-range"] == f"bytes 10-29/{out['bytes']}"
    assert body == (studio["data"] / out["path"]).read_bytes()[10:30]
    status, headers, _ = request(server["port"], out["url"] + "?download=1", studio["alice"])
    assert status == 200 and headers["content-disposition"].startswith("attachment")


def test_the_owner_and_the_admin_see_the_other_task(server, studio):
    # The 404s above are not for want of the file: its owner and the admin get it.
    url = studio["other"]["outputs"][0]["url"]
    assert request(server["port"], url, studio["bob"])[0] == 200
    assert request(server["port"], url, ADMIN_KEY)[0] == 200
    assert request(server["port"], url)[0] == 401
