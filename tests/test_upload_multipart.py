"""multipart/form-data on POST /generate and /generate_image: the pages' way of sending pictures.

One parsing path (request_body.form_body) ends in the same request models as the JSON Base64
API, so the same field names are taken and the same 4xx errors name the same fields. A corpus of
malformed, oversized and odd bodies must each get a 4xx in the error shape (never a 500), leave no
input files and no temporary files behind, and a session's request must pass the CSRF check that
reads the form first.
"""

import io
import json
import tempfile
from pathlib import Path

import pytest
from PIL import Image

import request_body
from tests.conftest import b64, picture
from tests.signin import csrf_of, login

BOUNDARY = "----studio-test-7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(name, value, filename=None, mime="application/octet-stream"):
    if filename is None:
        head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'
    else:
        head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: {mime}\r\n\r\n'
    value = value.encode() if isinstance(value, str) else value
    return f"--{BOUNDARY}\r\n".encode() + head.encode() + value + b"\r\n"


def body(*parts):
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def send(client, path, data, content_type=CONTENT_TYPE, **kwargs):
    return client.post(path, data=data, content_type=content_type, **kwargs)


def error_of(resp, status):
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    error = resp.get_json()["error"]
    assert set(error) - {"params"} == {"code", "message", "field"} and error["message"]
    return error["code"], error["field"]


@pytest.fixture
def png():
    return picture(800, 500, seed=4)


@pytest.fixture(autouse=True)
def no_temp_files(tmp_path, monkeypatch):
    """Every test here runs with its own temporary directory, which must stay empty."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield
    assert list(temp.iterdir()) == []


def inputs_left(app):
    folder = Path(app.config["DATA_DIR"]) / "inputs"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# ---- what works

def test_a_video_from_two_file_parts(client, app, png):
    tail = picture(640, 640, seed=5)
    resp = send(client, "/generate", body(part("prompt", "slow zoom in"), part("duration", "5"),
                                          part("image", png, "first.png", "image/png"),
                                          part("image_tail", tail, "tail.png", "image/png")))
    assert resp.status_code == 202, resp.get_json()
    task = app.extensions["task_store"].get(resp.get_json()["task_id"])
    assert task["params"]["prompt"] == "slow zoom in" and task["params"]["duration"] == "5"
    stored = {entry["role"]: entry for entry in task["inputs"]}
    data_dir = Path(app.config["DATA_DIR"])
    assert (data_dir / stored["first"]["path"]).read_bytes() == png       # as sent: no re-encode
    assert (data_dir / stored["tail"]["path"]).read_bytes() == tail


def test_images_with_form_values_that_are_not_text(client, app, png):
    resp = send(client, "/generate_image", body(part("n", "2"), part("prompt", "variations"),
                                                part("image_fidelity", "0.7"), part("image", png, "r.png")))
    assert resp.status_code == 202, resp.get_json()
    task = app.extensions["task_store"].get(resp.get_json()["task_id"])
    assert (task["params"]["n"], task["params"]["image_fidelity"]) == (2, 0.7)


def test_a_picture_as_base64_text_in_a_form_field_is_taken_too(client):
    # Within the form's memory limit for a text field (MAX_FORM_MEMORY_SIZE); larger ones go as files.
    small = picture(400, 300, "JPEG")
    resp = send(client, "/generate", body(part("image", b64(small, "image/jpeg")), part("prompt", "x")))
    assert resp.status_code == 202, resp.get_json()


def test_an_empty_file_input_counts_as_no_picture(client):
    resp = send(client, "/generate_image", body(part("prompt", "a lighthouse"), part("image", b"", "")))
    assert error_of(resp, 400) == ("image_required", "image")       # the local engine needs one


def test_a_session_upload_passes_the_csrf_check_that_reads_the_form(app, png):
    browser = login(app, "admin", password=app.config["ADMIN_PASSWORD"])
    token = csrf_of(browser)
    data = body(part("prompt", "x"), part("image", png, "a.png", "image/png"))
    assert error_of(send(browser, "/generate", data), 400)[0] == "csrf_failed"      # no token: refused
    resp = send(browser, "/generate", data, headers={"X-CSRFToken": token})
    assert resp.status_code == 202, resp.get_json()
    # Routes whose request has no picture stay JSON-only.
    keys = send(browser, "/api/keys", body(part("name", "k")), headers={"X-CSRFToken": token})
    assert error_of(keys, 400)[0] == "invalid_json"


@pytest.mark.parametrize("who", ["api-key", "session"])
def test_an_idempotency_key_tells_two_different_uploads_apart(app, client, png, who):
    first = body(part("prompt", "one"), part("image", png, "a.png"))
    second = body(part("prompt", "one"), part("image", picture(800, 500, seed=9), "a.png"))
    headers = {"Idempotency-Key": "upload-1"}
    if who == "session":        # the CSRF check reads the form before the key is looked at
        client = login(app, "admin", password=app.config["ADMIN_PASSWORD"])
        headers["X-CSRFToken"] = csrf_of(client)
    created = send(client, "/generate", first, headers=headers)
    assert created.status_code == 202
    again = send(client, "/generate", first, headers=headers)
    assert again.get_json()["task_id"] == created.get_json()["task_id"]
    assert error_of(send(client, "/generate", second, headers=headers), 409)[0] == "idempotency_conflict"


# ---- the same errors as JSON, naming the same fields

def gif():
    out = io.BytesIO()
    Image.open(io.BytesIO(picture(640, 400))).save(out, "GIF")
    return out.getvalue()


@pytest.mark.parametrize(("fields", "picture_bytes", "status", "expected"), [
    ({"prompt": "x"}, "gif", 400, ("unsupported_image_format", "image")),
    ({"prompt": "x"}, "small", 422, ("image_too_small", "image")),
    ({"prompt": "x", "duration": "7"}, "png", 422, ("unsupported_value", "duration")),
    ({"prompt": "x", "colour": "blue"}, "png", 400, ("unknown_field", "colour")),
    ({"prompt": "x", "cfg_scale": "2"}, "png", 422, ("invalid_field", "cfg_scale")),
], ids=["gif", "small", "duration", "unknown", "cfg-range"])
def test_multipart_and_json_give_the_same_error(client, png, fields, picture_bytes, status, expected):
    raw = {"gif": gif(), "small": picture(200, 200), "png": png}[picture_bytes]
    json_fields = {name: (json.loads(value) if name == "cfg_scale" else value) for name, value in fields.items()}
    as_json = client.post("/generate", json={**json_fields, "image": b64(raw)})
    as_form = send(client, "/generate", body(*(part(k, v) for k, v in fields.items()), part("image", raw, "p")))
    assert error_of(as_json, status) == error_of(as_form, status) == expected


# ---- the corpus: malformed, oversized, odd — each a 4xx naming what it can, nothing left behind

def many_parts(count):
    return body(*(part(f"f{i}", "x") for i in range(count)))


CORPUS = {
    # name: (path, body, content type, status, code, field)
    "no-boundary": ("/generate", body(part("prompt", "x")), "multipart/form-data", 400, "invalid_multipart", None),
    "wrong-boundary": ("/generate", body(part("prompt", "x")), "multipart/form-data; boundary=other", 400,
                       "invalid_multipart", None),
    "no-closing-boundary": ("/generate", part("prompt", "x") + part("image", b"\x89PNG", "a.png"), CONTENT_TYPE,
                            400, "invalid_multipart", None),
    "no-disposition": ("/generate", f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
                       CONTENT_TYPE, 400, "invalid_multipart", None),
    "garbage": ("/generate", b"\x00\xff" * 500, CONTENT_TYPE, 400, "invalid_multipart", None),
    "empty": ("/generate", b"", CONTENT_TYPE, 400, "invalid_multipart", None),
    "many-parts": ("/generate", many_parts(request_body.MAX_FORM_PARTS + 1), CONTENT_TYPE, 413,
                   "payload_too_large", None),
    "file-for-a-text-field": ("/generate", body(part("prompt", b"hello", "prompt.txt")), CONTENT_TYPE, 400,
                              "unexpected_file", "prompt"),
    "unknown-file": ("/generate_image", body(part("mask", b"\x89PNG", "m.png")), CONTENT_TYPE, 400,
                     "unexpected_file", "mask"),
    "duplicate-field": ("/generate", body(part("prompt", "a"), part("prompt", "b")), CONTENT_TYPE, 400,
                        "duplicate_field", "prompt"),
    "duplicate-file": ("/generate", body(part("image", b"a", "a.png"), part("image", b"b", "b.png")), CONTENT_TYPE,
                       400, "duplicate_field", "image"),
    "number-not-json": ("/generate_image", body(part("n", "two")), CONTENT_TYPE, 400, "invalid_field", "n"),
    "number-out-of-range": ("/generate_image", body(part("n", "0")), CONTENT_TYPE, 422, "invalid_field", "n"),
    "bool-as-text": ("/generate", body(part("sound", "yes")), CONTENT_TYPE, 400, "invalid_field", "sound"),
    "list-not-json": ("/generate_image", body(part("loras", "[{")), CONTENT_TYPE, 400, "invalid_field", "loras"),
    "control-characters": ("/generate", body(part("prompt", "a\x00b")), CONTENT_TYPE, 400, "invalid_field",
                           "prompt"),
    "not-a-picture": ("/generate", body(part("image", b"just some text, long enough" * 4, "a.png")), CONTENT_TYPE,
                      400, "unsupported_image_format", "image"),
    "truncated-png": ("/generate", body(part("image", picture(800, 500)[:5000], "a.png")), CONTENT_TYPE, 400,
                      "invalid_image", "image"),
    "empty-file": ("/generate", body(part("image", b"", "a.png")), CONTENT_TYPE, 400, "invalid_image", "image"),
    "picture-over-10-mib": ("/generate", body(part("image", b"\x89PNG\r\n\x1a\n" + bytes(10 * 1024 * 1024), "a.png")),
                            CONTENT_TYPE, 413, "image_too_large", "image"),
    "text-field-over-the-memory-limit": ("/generate", body(part("prompt", "x" * 600_000)), CONTENT_TYPE, 413,
                                         "payload_too_large", None),
}


def test_the_corpus_is_broad():
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_odd_body_is_a_4xx_that_names_its_field_and_leaves_nothing(client, app, name):
    path, data, content_type, status, code, field = CORPUS[name]
    resp = send(client, path, data, content_type=content_type)
    assert resp.status_code < 500
    assert error_of(resp, status) == (code, field)
    assert inputs_left(app) == []


def test_a_body_over_the_request_cap_is_a_413(client, app):
    app.config["MAX_CONTENT_LENGTH"] = 100_000
    resp = send(client, "/generate", body(part("image", b"\0" * 200_000, "a.png")))
    assert error_of(resp, 413)[0] == "payload_too_large"
