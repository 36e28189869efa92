"""Saving results: resumed after a cut, verified, renamed into place; expiry and a full disk;
only public or configured-provider addresses; no signed link in any error or log."""

import errno
import hashlib
import json
import logging
from datetime import timedelta

import pytest
import requests
from flask import redirect, request

import downloads
import task_query
from app import create_app
from tasks import utcnow
from tests.fakes import FakeServer, sample_mp4, sample_png


class FileServer(FakeServer):
    name = "files"

    def add_routes(self, app):
        # /hop?to=URL redirects there, as a CDN in front of a provider's results might.
        app.add_url_rule("/hop", "hop", lambda: redirect(request.args["to"], 302))


@pytest.fixture
def server():
    srv = FileServer()
    srv.start()
    yield srv
    srv.stop()


def studio(tmp_path, monkeypatch, **config):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test", **config})


@pytest.fixture
def app(tmp_path, monkeypatch, server):
    """A studio whose Kling API base is the file server, as the provider tests configure their fakes."""
    return studio(tmp_path, monkeypatch, KLING_API_BASE=server.base_url)


def provider_policy(server):
    """The address policy of a studio configured with `server` as a provider API base."""
    host, port = server.base_url.split("//")[1].split(":")
    return downloads.AddressPolicy(frozenset({(host, int(port))}))


def downloading_task(app, outputs, task_id="20261122T101500000Z-abcdef"):
    """A task as the poller leaves it when the provider reported success."""
    store = app.extensions["task_store"]
    record = {"id": task_id, "kind": "video", "provider": "kling", "model": "m",
              "params": {"prompt": "p"}, "inputs": [], "status": "downloading", "outputs": outputs,
              "error": None, "created_at": "2026-11-22T10:15:00.000Z"}
    store.create(record)
    return store, record["id"]


def remote(url, kind="video", expires_in=timedelta(days=30)):
    return {"kind": kind, "remote_url": url, "remote_expires_at": (utcnow() + expires_in).isoformat(),
            "path": None, "meta": {}}


def test_a_cut_download_resumes_with_range_and_verifies(app, server):
    data = sample_png(1200, 900, seed=4)          # a few MB, so the cut lands mid-body
    url, _ = server.publish(data, "image/png", ".png")
    store, task_id = downloading_task(app, [remote(url, "image")])
    server.inject("download", "truncate")
    task_query.download(store, {})
    task = store.get(task_id)
    assert task["status"] == "downloading" and "retrying" in task["download_error"]
    part = app.config["DATA_DIR"] + f"/outputs/{task_id}/image-1.png.part"
    with open(part, "rb") as f:
        assert 0 < len(f.read()) < len(data)          # kept to resume from
    task_query.download(store, {}, clock=lambda: utcnow() + timedelta(minutes=5))
    task = store.get(task_id)
    assert task["status"] == "succeeded", task.get("download_error")
    out = task["outputs"][0]
    assert out["sha256"] == hashlib.sha256(data).hexdigest() and out["bytes"] == len(data)
    assert out["thumbnail_url"].endswith("thumb-1.jpg")


def test_fetch_sends_range_for_the_missing_part(tmp_path, server):
    data = sample_png(800, 600)
    url, _ = server.publish(data, "image/png", ".png")
    dest = tmp_path / "image-1.png"
    dest.with_name("image-1.png.part").write_bytes(data[:1000])
    assert downloads.fetch(url, dest, provider_policy(server)) == len(data)
    assert dest.read_bytes() == data and not dest.with_name("image-1.png.part").exists()


def test_a_part_that_does_not_match_restarts(tmp_path, server):
    data = sample_png(640, 480, seed=2)
    url, _ = server.publish(data, "image/png", ".png")
    dest = tmp_path / "image-1.png"
    dest.with_name("image-1.png.part").write_bytes(data + b"extra junk")     # longer than the file: 416
    with pytest.raises(downloads.DownloadIncomplete):
        downloads.fetch(url, dest, provider_policy(server))
    assert downloads.fetch(url, dest, provider_policy(server)) == len(data)


def test_garbage_is_not_saved_as_a_result(tmp_path, server):
    url, _ = server.publish(b"<html>not a video</html>", "video/mp4", ".mp4")
    with pytest.raises(ValueError):
        downloads.fetch(url, tmp_path / "video-1.mp4", provider_policy(server))
    assert list(tmp_path.iterdir()) == []


def test_an_expired_link_fails_with_result_expired(app, server):
    url, _ = server.publish(sample_mp4(), "video/mp4", ".mp4", ttl=-5)     # its Expires is already past
    store, task_id = downloading_task(app, [remote(url)])
    task_query.download(store, {})
    task = store.get(task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "result_expired"


def test_the_link_is_retried_until_it_expires(app, server):
    url, _ = server.publish(sample_mp4(), "video/mp4", ".mp4", ttl=3600)
    store, task_id = downloading_task(app, [remote(url, expires_in=timedelta(hours=1))])
    for _ in range(3):
        server.inject("download", "error")
    for minutes in (0, 10, 20):
        task_query.download(store, {}, clock=lambda m=minutes: utcnow() + timedelta(minutes=m))
        assert store.get(task_id)["status"] == "downloading"
    task_query.download(store, {}, clock=lambda: utcnow() + timedelta(minutes=30))
    assert store.get(task_id)["status"] == "succeeded"


def test_a_full_disk_keeps_the_task_and_retries(app, server, monkeypatch):
    data = sample_mp4()
    url, _ = server.publish(data, "video/mp4", ".mp4")
    store, task_id = downloading_task(app, [remote(url)])

    def disk_full(f, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(downloads, "_write", disk_full)
    task_query.download(store, {})
    task = store.get(task_id)
    assert task["status"] == "downloading" and "disk is full" in task["download_error"]
    assert not task["outputs"][0].get("sha256")
    monkeypatch.undo()
    task_query.download(store, {}, clock=lambda: utcnow() + timedelta(minutes=5))
    task = store.get(task_id)
    assert task["status"] == "succeeded" and task["outputs"][0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_saved_outputs_are_kept_when_a_later_one_fails(app, server):
    first, _ = server.publish(sample_png(seed=1), "image/png", ".png")
    second, _ = server.publish(sample_png(seed=2), "image/png", ".png")
    store, task_id = downloading_task(app, [remote(first, "image"), remote(second, "image")])
    server.inject("download", None, "error")          # the first download works, the second fails
    task_query.download(store, {})
    outputs = store.get(task_id)["outputs"]
    assert outputs[0]["sha256"] and not outputs[1].get("sha256")
    hits_before = dict(server.file_hits)
    task_query.download(store, {}, clock=lambda: utcnow() + timedelta(minutes=5))
    assert store.get(task_id)["status"] == "succeeded"
    first_name = first.split("/files/")[1].split("?")[0]
    assert server.file_hits[first_name] == hits_before[first_name]       # not downloaded again


def test_link_expiry_takes_the_earlier_deadline():
    declared = "2026-11-23T00:00:00+00:00"
    assert downloads.link_expiry("https://x/a.mp4?Expires=1795000000", declared).year == 2026
    assert downloads.link_expiry("https://x/a.mp4", None) is None
    assert downloads.link_expiry("https://x/a.mp4", declared).isoformat() == declared


def test_a_link_the_server_keeps_refusing_fails_after_an_hour_of_tries(app, server):
    url, _ = server.publish(sample_mp4(), "video/mp4", ".mp4")
    missing = url.replace("/files/", "/files/0")            # a signed-looking link to nothing: 403
    store, task_id = downloading_task(app, [remote(missing, expires_in=timedelta(days=30))])
    for attempt in range(task_query.MAX_DOWNLOAD_PROBLEMS + 1):
        task_query.download(store, {}, clock=lambda a=attempt: utcnow() + timedelta(hours=a))
    task = store.get(task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "download_failed"


# ---- where result links may point

def test_a_result_link_to_a_private_address_is_refused_before_any_request(tmp_path, server):
    url, _ = server.publish(sample_png(), "image/png", ".png")
    with pytest.raises(downloads.AddressRefused, match="not a public internet address"):
        downloads.fetch(url, tmp_path / "image-1.png")          # public addresses only, by default
    assert sum(server.file_hits.values()) == 0 and list(tmp_path.iterdir()) == []


def test_only_the_configured_provider_host_and_port_are_allowed(tmp_path, server):
    url, _ = server.publish(sample_png(), "image/png", ".png")
    other_port = downloads.AddressPolicy(frozenset({("127.0.0.1", 1)}))
    with pytest.raises(downloads.AddressRefused):
        downloads.fetch(url, tmp_path / "image-1.png", other_port)
    assert downloads.fetch(url, tmp_path / "image-1.png", provider_policy(server)) > 0


def test_a_redirect_from_the_provider_into_a_private_address_is_refused(tmp_path, server):
    url, _ = server.publish(sample_png(), "image/png", ".png")
    for target in ("http://169.254.169.254/latest/meta-data/", url.replace("127.0.0.1", "127.0.0.2")):
        hop = f"{server.base_url}/hop?to={requests.utils.quote(target, safe='')}"
        with pytest.raises(downloads.AddressRefused):
            downloads.fetch(hop, tmp_path / "image-1.png", provider_policy(server))
    hop = f"{server.base_url}/hop?to={requests.utils.quote(url, safe='')}"        # back to the provider: fine
    assert downloads.fetch(hop, tmp_path / "image-1.png", provider_policy(server)) > 0


def test_allow_private_urls_allows_any_address(tmp_path, monkeypatch, server):
    app = studio(tmp_path, monkeypatch, ALLOW_PRIVATE_URLS="true")
    url, _ = server.publish(sample_png(), "image/png", ".png")
    store, task_id = downloading_task(app, [remote(url, "image")])
    task_query.download(store, {})
    assert store.get(task_id)["status"] == "succeeded"


def test_a_refused_link_fails_the_task_at_once_with_a_clear_message(tmp_path, monkeypatch, server):
    app = studio(tmp_path, monkeypatch)           # no provider configured at the file server's address
    url, _ = server.publish(sample_mp4(), "video/mp4", ".mp4")
    store, task_id = downloading_task(app, [remote(url)])
    task_query.download(store, {})
    task = store.get(task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "download_failed"
    assert "not a public internet address" in task["error"]["message"]
    resp = app.test_client().get(f"/api/tasks/{task_id}")
    assert resp.status_code == 200 and resp.get_json()["error"]["code"] == "download_failed"
    assert sum(server.file_hits.values()) == 0


# ---- signed links never reach an error, a log or an answer

def test_a_failed_download_leaves_no_signature_in_errors_logs_or_responses(tmp_path, monkeypatch, server, caplog):
    app = studio(tmp_path, monkeypatch, ALLOW_PRIVATE_URLS="1")
    url, _ = server.publish(sample_mp4(), "video/mp4", ".mp4")
    gone = url.replace("/files/", "/files/0")   # a signed link to nothing: 403, and requests names the URL
    unreachable = "http://127.0.0.1:1/files/x.mp4?Expires=1900000000&Signature=deadbeef&OSSAccessKeyId=AK"
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(unreachable, timeout=5)
    assert "Signature" in str(caught.value)     # what the library says, and so what must be redacted
    store, gone_id = downloading_task(app, [remote(gone)])
    _, unreachable_id = downloading_task(app, [remote(unreachable)], task_id="20261122T101600000Z-fedcba")
    caplog.set_level(logging.INFO)                  # the studio's log level (app._configure_logging)
    seen = []
    for attempt in range(task_query.MAX_DOWNLOAD_PROBLEMS + 1):
        task_query.download(store, {}, clock=lambda a=attempt: utcnow() + timedelta(hours=a))
        seen += [store.get(i).get("download_error") or "" for i in (gone_id, unreachable_id)]
    assert "403" in store.get(gone_id)["error"]["message"] and "/files/0" in seen[0]    # still says which file
    assert "ConnectionError" in seen[1]
    client = app.test_client()
    answers = [client.get(f"/api/tasks/{task_id}").get_json() for task_id in (gone_id, unreachable_id)]
    texts = seen + [json.dumps(a) for a in answers]            # the whole task, its result links too
    # werkzeug here is the fake provider's own access log, not the studio's.
    texts += [store.get(gone_id)["error"]["message"]] + [r.getMessage() for r in caplog.records if r.name != "werkzeug"]
    for text in texts:
        assert "Signature" not in text and "Expires" not in text and "OSSAccessKeyId" not in text, text


def test_a_public_link_is_checked_again_at_the_address_connected_to(tmp_path, server, monkeypatch):
    # No public internet here: the file server's loopback address stands in for a public one, first for
    # every look, then (a DNS answer that changed after the check) only for the look before connecting.
    import safe_fetch

    url, _ = server.publish(sample_png(), "image/png", ".png")
    monkeypatch.setattr(safe_fetch, "is_public", lambda address: address == "127.0.0.1")
    assert downloads.fetch(url, tmp_path / "image-1.png") > 0
    looks = []
    monkeypatch.setattr(safe_fetch, "is_public", lambda address: looks.append(address) or len(looks) == 1)
    with pytest.raises(downloads.AddressRefused):
        downloads.fetch(url, tmp_path / "image-2.png")
    assert looks == ["127.0.0.1", "127.0.0.1"] and not (tmp_path / "image-2.png").exists()
