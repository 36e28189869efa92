"""The pipeline end to end on the local engine, and the task JSON and media routes."""

import io
import os
import time

import av
import pytest
from PIL import Image

import task_query
from providers.base import ProviderStatus
from tests.conftest import b64, picture, run_pipeline


def fetch(client, url, **kwargs):
    """GET a media file and close the response (send_file keeps the file open until then)."""
    resp = client.get(url, **kwargs)
    resp.get_data()
    resp.close()
    return resp


def create(client, kind="video", **body):
    url = "/generate" if kind == "video" else "/generate_image"
    body.setdefault("image", b64(picture()))
    resp = client.post(url, json=body)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def test_video_end_to_end(app, client):
    task_id = create(client, prompt="slow pan left over the city", duration="5")
    task = run_pipeline(app, task_id)
    assert task["status"] == "succeeded", task["error"]
    assert task["provider_task_id"] and task["submitted_at"] and task["finished_at"]
    (out,) = task["outputs"]
    assert out["url"] == f"/media/outputs/{task_id}/video.mp4"
    assert out["width"] % 2 == 0 and out["height"] % 2 == 0 and out["duration"] == pytest.approx(5, abs=0.1)
    resp = fetch(client, out["url"])
    assert resp.status_code == 200 and resp.mimetype == "video/mp4"
    assert len(resp.data) == out["bytes"]
    with av.open(io.BytesIO(resp.data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(stream)) == 120
    thumb = fetch(client, out["thumbnail_url"])
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.data)).format == "JPEG"


def test_image_end_to_end(app, client):
    task_id = create(client, kind="image", aspect_ratio="1:1", n=2)
    task = run_pipeline(app, task_id)
    assert task["status"] == "succeeded", task["error"]
    assert len(task["outputs"]) == 2
    for out in task["outputs"]:
        resp = fetch(client, out["url"])
        assert resp.status_code == 200 and resp.mimetype.startswith("image/")
        img = Image.open(io.BytesIO(resp.data))
        assert img.width == img.height == out["width"]
        assert fetch(client, out["thumbnail_url"]).status_code == 200


def test_downloads_are_named_for_people(app, client):
    task_id = create(client, kind="image", aspect_ratio="1:1", n=2)
    task = run_pipeline(app, task_id)
    assert task["status"] == "succeeded", task["error"]
    stamp = task["created_at"][:19].replace("-", "").replace(":", "").replace("T", "_")   # YYYYmmdd_HHMMSS
    short = task_id.rsplit("-", 1)[1]
    for number, out in enumerate(task["outputs"], 1):
        ext = out["path"].rsplit(".", 1)[1]
        resp = fetch(client, out["url"] + "?download=1")
        assert resp.headers["Content-Disposition"] == f"attachment; filename=local_{stamp}_{number}_{short}.{ext}"
        assert out["path"] == f"outputs/{task_id}/{out['path'].rsplit('/', 1)[1]}"     # stored paths unchanged
    reference = fetch(client, f"/media/{task['inputs'][0]['path']}?download=1")
    assert reference.headers["Content-Disposition"] == f"attachment; filename=local_{stamp}_reference_{short}.png"
    inline = fetch(client, task["outputs"][0]["url"])
    assert inline.headers["Content-Disposition"].startswith("inline; filename=local_")


def test_media_supports_range_requests(app, client):
    task = run_pipeline(app, create(client))
    url = task["outputs"][0]["url"]
    resp = fetch(client, url, headers={"Range": "bytes=100-199"})
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes 100-199/{task['outputs'][0]['bytes']}"
    assert len(resp.data) == 100


@pytest.mark.parametrize("path", ["/media/secret_key", "/media/../secret_key", "/media/outputs/../secret_key",
                                  "/media/inputs/%2e%2e/secret_key", "/media/tasks.jsonl", "/media/outputs/x/y.mp4"])
def test_media_refuses_anything_outside_inputs_and_outputs(client, path):
    resp = client.get(path)
    assert resp.status_code == 404
    assert b"error" in resp.data


def test_listing_filters_and_paging(app, client):
    ids = [create(client, prompt=f"video number {i}") for i in range(3)]
    ids += [create(client, kind="image", prompt=f"picture {i} of a Lighthouse") for i in range(2)]
    body = client.get("/api/tasks?limit=2").get_json()
    assert body["total"] == 5 and [t["id"] for t in body["tasks"]] == ids[::-1][:2]
    body = client.get("/api/tasks?limit=2&offset=4").get_json()
    assert [t["id"] for t in body["tasks"]] == [ids[0]]
    assert [t["id"] for t in client.get("/api/tasks?kind=image").get_json()["tasks"]] == ids[:2:-1]
    assert client.get("/api/tasks?q=lighthouse").get_json()["total"] == 2
    assert client.get("/api/tasks?status=queued,failed&provider=local").get_json()["total"] == 5
    assert client.get("/api/tasks?status=succeeded").get_json()["total"] == 0


@pytest.mark.parametrize("query,field", [("status=done", "status"), ("kind=audio", "kind"),
                                         ("limit=500", "limit"), ("offset=-1", "offset"), ("limit=x", "limit")])
def test_listing_refuses_bad_parameters(client, query, field):
    resp = client.get("/api/tasks?" + query)
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == field


def test_unknown_task_is_a_json_404(client):
    resp = client.get("/api/tasks/nope")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"


def test_cancel_a_queued_task(app, client):
    task_id = create(client)
    resp = client.post(f"/api/tasks/{task_id}/cancel")
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 409
    task_query.dispatch(app.extensions["task_store"], app.extensions["providers"])
    assert app.extensions["task_store"].get(task_id)["provider_task_id"] is None


def test_cancel_a_running_local_render_stops_it(app, client):
    store, providers = app.extensions["task_store"], app.extensions["providers"]
    task_id = create(client, duration="10")
    task_query.dispatch(store, providers)
    assert store.get(task_id)["status"] == "submitted"
    task = client.post(f"/api/tasks/{task_id}/cancel").get_json()
    assert task["status"] == "cancelled" and task["cancel_requested"] is True
    task_query.poll(store, providers)
    task = store.get(task_id)
    assert task["status"] == "cancelled" and not task["cancel_requested"]
    assert providers["local"].query(task).state == "cancelled"


def test_retry_makes_a_new_linked_task(app, client):
    old_id = create(client, prompt="zoom out")
    old = run_pipeline(app, old_id)
    resp = client.post(f"/api/tasks/{old_id}/retry")
    assert resp.status_code == 202
    new = run_pipeline(app, resp.get_json()["task_id"])
    assert new["retry_of"] == old_id and new["id"] != old_id and new["status"] == "succeeded"
    assert new["provider_task_id"] != old["provider_task_id"]
    assert new["params"] == old["params"]
    assert new["inputs"][0]["sha256"] == old["inputs"][0]["sha256"]
    assert new["inputs"][0]["path"].startswith(f"inputs/{new['id']}/")


def test_a_deleted_input_picture_fails_the_task_clearly_and_retry_answers_410(app, client):
    task_id = create(client, prompt="zoom out")
    task = app.extensions["task_store"].get(task_id)
    os.remove(os.path.join(app.config["DATA_DIR"], task["inputs"][0]["path"]))
    task = run_pipeline(app, task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "input_missing"
    assert "first frame is no longer on the studio's disk" in task["error"]["message"]
    resp = client.post(f"/api/tasks/{task_id}/retry")
    assert resp.status_code == 410 and resp.get_json()["error"]["code"] == "input_missing"
    assert len(app.extensions["task_store"]) == 1           # no new task, no half-made input folder
    assert os.listdir(os.path.join(app.config["DATA_DIR"], "inputs")) == [task_id]


def test_retry_of_an_unfinished_task_is_refused(client):
    task_id = create(client)
    assert client.post(f"/api/tasks/{task_id}/retry").status_code == 409


def test_delete_removes_record_and_files(app, client):
    task_id = create(client)
    assert client.delete(f"/api/tasks/{task_id}").status_code == 409     # still queued
    task = run_pipeline(app, task_id)
    data = app.config["DATA_DIR"]
    assert os.path.exists(os.path.join(data, task["outputs"][0]["path"]))
    assert client.delete(f"/api/tasks/{task_id}").status_code == 204
    assert client.get(f"/api/tasks/{task_id}").status_code == 404
    assert not os.path.exists(os.path.join(data, "outputs", task_id))
    assert not os.path.exists(os.path.join(data, "inputs", task_id))
    assert fetch(client, task["outputs"][0]["url"]).status_code == 404


def test_dispatch_respects_the_provider_concurrency_cap(app, client):
    store, providers = app.extensions["task_store"], app.extensions["providers"]
    providers["local"].max_concurrency = 1
    first, second = create(client), create(client)
    task_query.dispatch(store, providers)
    assert [store.get(first)["status"], store.get(second)["status"]] == ["submitted", "queued"]


def test_failed_submit_fails_the_task_with_a_message(app, client, monkeypatch):
    from errors import ProviderRejected

    store, providers = app.extensions["task_store"], app.extensions["providers"]
    task_id = create(client)

    def refuse(task):
        raise ProviderRejected("content policy", provider="local")
    monkeypatch.setattr(providers["local"], "submit", refuse)
    task_query.dispatch(store, providers)
    task = store.get(task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "provider_rejected"


def test_interrupted_submit_is_reconciled_not_blindly_resent(app, client, monkeypatch):
    """A queued task whose submit was started (crash mid-submit) asks the provider first."""
    from errors import SubmitOutcomeUnknown

    store, providers = app.extensions["task_store"], app.extensions["providers"]
    task_id = create(client)
    store.update(task_id, {"submit_started_at": "2026-11-22T10:00:00.000Z", "attempts": 1})

    def unknown(task):
        raise SubmitOutcomeUnknown("cannot tell", provider="local")
    monkeypatch.setattr(providers["local"], "reconcile", unknown)
    monkeypatch.setattr(providers["local"], "submit", lambda task: pytest.fail("re-sent"))
    task_query.dispatch(store, providers)
    task = store.get(task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "submit_outcome_unknown"


def test_provider_failure_is_recorded(app, client, monkeypatch):
    store, providers = app.extensions["task_store"], app.extensions["providers"]
    task_id = create(client)
    task_query.dispatch(store, providers)
    monkeypatch.setattr(providers["local"], "query", lambda task: ProviderStatus(
        state="failed", raw_status="FAILED", message="moderation", error_code="moderated"))
    task_query.poll(store, providers)
    task = store.get(task_id)
    # The studio's summary, in words it can translate, beside the provider's own.
    assert task["status"] == "failed" and task["error"] == {
        "code": "moderated", "message": "Local effects engine reported that the task failed: moderation",
        "retryable": False, "template": "%(label)s reported that the task failed: %(reason)s",
        "params": {"label": "Local effects engine", "reason": "moderation"}, "provider_message": "moderation"}


def test_capabilities_lists_every_provider(client):
    body = client.get("/api/capabilities").get_json()
    local = next(p for p in body["providers"] if p["name"] == "local")
    assert local["configured"] is True and "not an ai model" in local["description"].lower()
    models = {m["id"]: m for m in local["models"]}
    assert models["local-motion"]["durations"] == ["5", "10"]
    assert models["local-filters"]["n_max"] == 9


def test_stuck_task_times_out_and_a_late_success_is_still_saved(app, client, monkeypatch):
    from datetime import timedelta

    from tasks import utcnow

    store, providers = app.extensions["task_store"], app.extensions["providers"]
    local = providers["local"]
    task_id = create(client)
    task_query.dispatch(store, providers)
    real_query = local.query
    monkeypatch.setattr(local, "query", lambda task: ProviderStatus(state="running", raw_status="RUNNING"))
    monkeypatch.setattr(local, "max_running_seconds", 60)
    later = utcnow() + timedelta(minutes=2)
    task_query.poll(store, providers, clock=lambda: later)
    task = store.get(task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "timeout"
    assert task["late_check_until"]

    monkeypatch.setattr(local, "query", real_query)          # the provider finishes after all
    deadline = utcnow() + timedelta(seconds=60)
    step = 0
    while store.get(task_id)["status"] != "succeeded" and utcnow() < deadline:
        step += 1
        def clock(s=step):
            return later + timedelta(minutes=6 * s)
        task_query.poll(store, providers, clock=clock)
        task_query.download(store, providers, clock=clock)
        time.sleep(0.1)
    task = store.get(task_id)
    assert task["status"] == "succeeded" and task["error"] is None and task["recovered_late"] is True
