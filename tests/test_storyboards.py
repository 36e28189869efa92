"""Storyboards: scenes as tasks of their own, chained by the previous clip's last frame, joined with
PyAV into one H.264 MP4; a failing scene (at the local Kling server) fails the storyboard; cancel
and retry; strict checks that leave nothing behind."""

import io
import time

import av
import numpy as np
import pytest
from PIL import Image

import providers.http
import scheduler
import storyboards
import task_query
import video_join
from app import create_app
from tasks import Task, utcnow
from tests.conftest import b64, picture
from tests.fakes import sample_mp4
from tests.fakes.kling import Server
from tests.signin import make_user

AK, SK = "AK" + "a" * 30, "SK" + "s" * 30


def run_storyboard(app, task_id, until=("succeeded", "failed", "cancelled"), timeout=180):
    """The pipeline's jobs, storyboards included, until the storyboard reaches one of `until`."""
    store, providers_ = app.extensions["task_store"], app.extensions["providers"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task_query.dispatch(store, providers_)
        task_query.poll(store, providers_)
        task_query.download(store, providers_)
        storyboards.advance(store, providers_)
        task_query.download(store, providers_)
        for task_id_ in store.ids_with_status(("submitted", "running")):
            store.update(task_id_, {"next_check_at": None})     # skip poll intervals
        task = store.get(task_id)
        Task.model_validate(task)
        if task["status"] in until:
            return task
        time.sleep(0.05)
    raise AssertionError(f"storyboard stuck in {store.get(task_id)['status']}")


def other_picture():
    """A 640x360 PNG unlike conftest's pictures: blue with a light band."""
    pixels = np.zeros((360, 640, 3), np.uint8)
    pixels[:] = (20, 40, 200)
    pixels[120:240] = (230, 230, 160)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def frames_of(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# ---- the local engine: three scenes, one chained ------------------------------------------

@pytest.mark.slow
def test_three_scenes_join_into_one_h264_mp4(app, client):
    first, third = b64(picture(640, 360, seed=1)), b64(other_picture())
    resp = client.post("/api/v1/videos/generate", json={
        "provider": "local", "model_name": "local-motion",
        "scenes": [{"prompt": "zoom in on the street", "duration": 5, "image": first},
                   {"prompt": "zoom in closer", "duration": "5", "first_frame": "previous_last"},
                   {"prompt": "tilt up to the sky", "duration": "5", "image": third}],
        "video_config": {"fps": 24, "resolution": "640x360"}})
    assert resp.status_code == 202, resp.get_json()
    parent_id = resp.get_json()["task_id"]
    store = app.extensions["task_store"]
    parent = store.get(parent_id)
    assert parent["scene_task_ids"][1] is None              # chained: made when scene 1 has succeeded
    assert client.get(f"/api/v1/tasks/{parent_id}").get_json()["scenes"] == {"queued": 2, "waiting": 1}

    parent = run_storyboard(app, parent_id)
    assert parent["status"] == "succeeded", parent.get("error")
    data_dir = app.config["DATA_DIR"]
    out = parent["outputs"][0]
    with av.open(f"{data_dir}/{out['path']}") as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (640, 360)
        decoded = sum(1 for _ in container.decode(stream))
    assert abs(out["duration"] - 15.0) <= 0.2 and decoded == 15 * 24
    assert out["thumbnail_url"].endswith("thumb-1.jpg")

    scenes = [store.get(task_id) for task_id in parent["scene_task_ids"]]
    assert [s["status"] for s in scenes] == ["succeeded"] * 3
    assert [s["scene_index"] for s in scenes] == [0, 1, 2] and {s["storyboard_id"] for s in scenes} == {parent_id}
    body = client.get(f"/api/v1/tasks/{parent_id}").get_json()
    assert body["status"] == "completed" and body["scenes"] == {"succeeded": 3}
    # Scene 2 starts from scene 1's last frame (and looks nothing like scene 3's own picture).
    clip1, clip2, clip3 = (frames_of(f"{data_dir}/{s['outputs'][0]['path']}") for s in scenes)
    diff = np.abs(clip2[0].astype(int) - clip1[-1].astype(int)).mean()
    assert diff < 8, diff
    assert np.abs(clip3[0].astype(int) - clip1[-1].astype(int)).mean() > diff + 30
    # Only the scenes are charged, each as a video.
    assert app.extensions["ledger"].spent_today(parent["owner"], "video") == 3


def test_join_resamples_scales_and_crossfades(tmp_path):
    clips = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    clips[0].write_bytes(sample_mp4(320, 240, seconds=1, fps=24))
    clips[1].write_bytes(sample_mp4(160, 160, seconds=2, fps=12))
    dest = tmp_path / "joined.mp4"
    assert video_join.join(clips, dest, (331, 240), fps=30, crossfade=0.5) == 30 + 60 - 15
    width, height, duration = video_join.clip_info(dest)
    assert (width, height) == (330, 240) and abs(duration - 2.5) <= 0.05
    assert video_join.join(clips, dest, (320, 240), fps=30) == 90
    stopped = tmp_path / "stopped.mp4"
    calls = []
    with pytest.raises(video_join.JoinStopped):
        video_join.join(clips, stopped, (320, 240), should_stop=lambda: calls.append(1) or len(calls) > 10)
    assert not stopped.exists() and not list(tmp_path.glob("stopped*"))


# ---- a provider's local server: failure, retry, cancel ------------------------------------

@pytest.fixture(scope="module")
def kling_server():
    with Server.running(polls_to_finish=2, access_key=AK, secret_key=SK) as server:
        yield server


@pytest.fixture
def kling_app(tmp_path, monkeypatch, kling_server):
    kling_server.reset()
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "kdata"), "SECRET_KEY": "t",
                       "KLING_API_BASE": kling_server.base_url, "KLING_ACCESS_KEY": AK, "KLING_SECRET_KEY": SK,
                       "HTTP_TIMEOUT_SECONDS": 2, "KLING_MAX_CONCURRENCY": 1})


def kling_storyboard(client, scenes=2):
    resp = client.post("/generate", json={"provider": "kling", "model_name": "kling-v1-6", "scenes": [
        {"prompt": f"scene {i}", "duration": "5"} for i in range(scenes)]})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def test_a_failing_scene_fails_the_storyboard_and_retry_reruns_only_it(kling_app, kling_server):
    client, store = kling_app.test_client(), kling_app.extensions["task_store"]
    parent_id = kling_storyboard(client)
    kling_server.inject("result", "failed")         # the first scene to finish fails (cap 1: scene 1)
    parent = run_storyboard(kling_app, parent_id)
    assert parent["status"] == "failed" and parent["error"]["code"] == "scene_failed"
    assert parent["error"]["message"].startswith("Scene 1 failed: ")
    first, second = parent["scene_task_ids"]
    assert store.get(first)["status"] == "failed"

    resp = client.post(f"/api/v1/tasks/{parent_id}/retry")
    assert resp.status_code == 202, resp.get_json()
    again = store.get(resp.get_json()["task_id"])
    assert again["retry_of"] == parent_id and again["scene_task_ids"][1] == second     # kept, not re-run
    assert store.get(again["scene_task_ids"][0])["retry_of"] == first
    again = run_storyboard(kling_app, again["id"])
    assert again["status"] == "succeeded", again.get("error")
    assert kling_server.submissions[second] == 1 and abs(again["outputs"][0]["duration"] - 2.0) <= 0.2


def test_cancelling_the_storyboard_cancels_its_scenes(kling_app):
    client, store = kling_app.test_client(), kling_app.extensions["task_store"]
    parent_id = kling_storyboard(client, scenes=3)
    task_query.dispatch(store, kling_app.extensions["providers"])          # scene 1 goes out (cap 1)
    resp = client.post(f"/api/v1/tasks/{parent_id}/cancel")
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    scenes = [store.get(t) for t in store.get(parent_id)["scene_task_ids"]]
    assert [s["status"] for s in scenes] == ["cancelled"] * 3
    assert scenes[0].get("cancel_requested")                               # stopped at Kling by the poller


def test_a_deleted_scene_fails_the_storyboard(kling_app):
    client, store = kling_app.test_client(), kling_app.extensions["task_store"]
    parent_id = kling_storyboard(client)
    store.delete(store.get(parent_id)["scene_task_ids"][1])
    data_dir = kling_app.config["DATA_DIR"]
    pipeline = scheduler.Pipeline(store, kling_app.extensions["providers"], data_dir=data_dir, backup_dir=data_dir)
    assert pipeline.intervals["storyboards"] == {"seconds": 1}
    pipeline._storyboards()                 # the pipeline's job, as APScheduler runs it
    parent = store.get(parent_id)
    assert parent["status"] == "failed" and parent["error"]["message"] == "Scene 2 was deleted."


# ---- strict checks ------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "status", "field"), [
    ({"scenes": [{"prompt": "a", "first_frame": "previous_last"}]}, 422, "scenes.0.first_frame"),
    ({"scenes": [{"prompt": "a", "extra": 1}]}, 400, "scenes.0.extra"),
    ({"scenes": [{"prompt": "a", "duration": 5.5}]}, 400, "scenes.0.duration"),
    ({"scenes": []}, 422, "scenes"),
    ({"scenes": [{"prompt": "a"}], "prompt": "b"}, 400, "prompt"),
    ({"scenes": [{"prompt": "a"}], "video_config": {"fps": 0}}, 422, "video_config.fps"),
    ({"scenes": [{"prompt": "a"}], "video_config": {"resolution": "big"}}, 400, "video_config.resolution"),
    ({"video_config": {"fps": 24}, "prompt": "a"}, 400, "video_config"),
    ({"scenes": [{"prompt": "a", "duration": "7"}]}, 422, "scenes.0.duration"),
])
def test_bad_storyboards_are_refused_with_the_field_named(kling_app, body, status, field):
    resp = kling_app.test_client().post("/api/v1/videos/generate",
                                        json={"provider": "kling", "model_name": "kling-v1-6", **body})
    assert resp.status_code == status, resp.get_json()
    assert resp.get_json()["error"]["field"] == field
    assert len(kling_app.extensions["task_store"]) == 0


def test_a_bad_picture_in_a_later_scene_leaves_nothing_behind(app, client):
    resp = client.post("/api/v1/videos/generate", json={
        "provider": "local", "model_name": "local-motion",
        "scenes": [{"prompt": "a", "image": b64(picture(640, 360))}, {"prompt": "b", "image": "bm90IGEgcGljdHVyZQ=="}]})
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == "scenes.1.image"
    store = app.extensions["task_store"]
    assert len(store) == 0
    assert sum(entry["count"] for entry in app.extensions["ledger"]._entries(utcnow())) == 0     # spends given back


# ---- the daily limit counts every scene ---------------------------------------------------

def _chained_board(client, headers):
    return client.post("/api/v1/videos/generate", headers=headers, json={
        "provider": "local", "model_name": "local-motion",
        "scenes": [{"prompt": "zoom in on the street", "duration": 5, "image": b64(picture(640, 360, seed=1))},
                   {"prompt": "zoom in closer", "duration": "5", "first_frame": "previous_last"},
                   {"prompt": "and closer still", "duration": "5", "first_frame": "previous_last"}]})


@pytest.mark.slow
def test_scenes_made_later_are_reserved_against_the_daily_limit_when_the_storyboard_is_made(app, client):
    two_a_day = make_user(app, "two-a-day", videos_per_day=2)
    refused = _chained_board(client, two_a_day)
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "quota_exceeded"
    assert len(app.extensions["task_store"]) == 0

    three_a_day = make_user(app, "three-a-day", videos_per_day=3)
    made = _chained_board(client, three_a_day)
    assert made.status_code == 202, made.get_json()
    user = app.extensions["accounts"].user_by_name("three-a-day")
    spent = app.extensions["ledger"]
    assert spent.spent_today(user["id"], "video") == 3
    assert run_storyboard(app, made.get_json()["task_id"])["status"] == "succeeded"
    assert spent.spent_today(user["id"], "video") == 3        # each later scene took its reserved unit, no more


def test_a_storyboard_that_fails_early_gives_back_what_it_reserved(app, client):
    headers = make_user(app, "reserver", videos_per_day=3)
    parent_id = _chained_board(client, headers).get_json()["task_id"]
    store = app.extensions["task_store"]
    first = store.get(parent_id)["scene_task_ids"][0]
    assert client.post(f"/api/tasks/{first}/cancel", headers=headers).status_code == 200
    assert run_storyboard(app, parent_id)["status"] == "failed"
    user = app.extensions["accounts"].user_by_name("reserver")
    assert app.extensions["ledger"].spent_today(user["id"], "video") == 0    # scene 1 refunded, 2 reserved back
