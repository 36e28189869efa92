"""Tests for the local engine (providers/local.py, local_render.py): renders, looks, provider lifecycle."""

import errno
import json
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import media
import task_query
from errors import ProviderRejected
from providers import local_render
from providers.base import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED
from providers.local import LocalProvider
from providers.local_render import camera_from_prompt, render_images, render_video
from tasks import utcnow
from tests.conftest import run_pipeline

# ---- pictures and clips


def write_picture(path, width=480, height=320, disc=None, seed=0):
    """A gradient with mild noise and a white disc (centred unless `disc` = (x, y, radius))."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    picture = np.dstack([40 + 60 * xx / width, 50 + 50 * yy / height, 70 + 40 * (xx + yy) / (width + height)])
    noise = np.random.default_rng(seed).normal(0, 6, picture.shape)
    picture = np.clip(picture + noise, 0, 255).astype(np.uint8)
    x, y, radius = disc or (width // 2, height // 2, min(width, height) // 6)
    cv2.circle(picture, (x, y), radius, (255, 255, 255), -1, lineType=cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), picture)
    return path


def frames_of(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def disc_area_and_centre(frame):
    ys, xs = np.nonzero(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) > 200)
    return len(xs), xs.mean(), ys.mean()


def mean_abs_diff(a, b):
    return float(np.mean(cv2.absdiff(a, b)))


def looks_like(a, b):
    """Same picture up to H.264 loss (which smooths the test pictures' pixel noise away)."""
    return mean_abs_diff(cv2.GaussianBlur(a, (0, 0), 1.5), cv2.GaussianBlur(b, (0, 0), 1.5)) < 3


# ---- camera_from_prompt


@pytest.mark.parametrize(("prompt", "camera"), [
    ("A slow zoom in on the lighthouse", "zoom_in"),
    ("push in towards her face", "zoom_in"),
    ("Dolly-in, golden hour", "zoom_in"),
    ("zooming into the flower", "zoom_in"),
    ("a map of Japan, left half in shadow", "zoom_in"),  # "pan" inside a word is not a pan
    ("zoom out to reveal the valley", "zoom_out"),
    ("the camera pulls back from the crowd", "zoom_out"),
    ("pan left across the skyline", "pan_left"),
    ("Camera pans right", "pan_right"),
    ("tilt up to the sky", "tilt_up"),
    ("tilting down to the river", "tilt_down"),
    ("镜头缓慢推近", "zoom_in"),
    ("镜头拉远，展示全景", "zoom_out"),
    ("镜头左移", "pan_left"),
    ("镜头右移", "pan_right"),
    ("镜头上摇", "tilt_up"),
    ("镜头下摇", "tilt_down"),
    ("tilt up, then zoom out", "tilt_up"),  # the first move mentioned wins
    ("a cat on a sofa", "zoom_in"),
    ("", "zoom_in"),
    (None, "zoom_in"),
])
def test_camera_from_prompt(prompt, camera):
    assert camera_from_prompt(prompt) == camera


# ---- render_video


def test_video_is_even_aspect_kept_and_120_frames_for_5_seconds(tmp_path):
    first = write_picture(tmp_path / "first.png", 481, 321)
    info = render_video(first, tmp_path / "clip.mp4", duration=5)
    assert info == {"width": 480, "height": 320, "frames": 120, "fps": 24, "duration": 5.0}
    with av.open(str(tmp_path / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (480, 320)
        assert stream.average_rate == 24
        assert sum(1 for _ in container.decode(stream)) == 120
    assert media.probe_media(tmp_path / "clip.mp4")["duration"] == pytest.approx(5.0, abs=0.05)


def test_video_long_side_is_capped_and_never_upscaled(tmp_path):
    big = write_picture(tmp_path / "big.png", 1700, 1000)
    info = render_video(big, tmp_path / "big.mp4", duration=1)
    assert (info["width"], info["height"]) == (1280, 752)  # 1280 × 1000/1700 = 753 → even
    assert info["width"] % 2 == 0 and info["height"] % 2 == 0
    tall = write_picture(tmp_path / "tall.png", 330, 700)
    info = render_video(tall, tmp_path / "tall.mp4", duration=1)
    assert (info["width"], info["height"]) == (330, 700)


@pytest.mark.parametrize(("camera", "check"), [
    ("zoom_in", lambda a, b: b[0] > 1.3 * a[0]),       # the disc grows (1.2² = 1.44)
    ("zoom_out", lambda a, b: a[0] > 1.3 * b[0]),
    ("pan_left", lambda a, b: b[1] - a[1] > 70),       # the view moves left: content moves right
    ("pan_right", lambda a, b: a[1] - b[1] > 70),
    ("tilt_up", lambda a, b: b[2] - a[2] > 45),        # the view moves up: content moves down
    ("tilt_down", lambda a, b: a[2] - b[2] > 45),
])
def test_the_camera_moves_in_the_asked_direction(tmp_path, camera, check):
    first = write_picture(tmp_path / "first.png")
    render_video(first, tmp_path / "clip.mp4", camera=camera, duration=1)
    frames = frames_of(tmp_path / "clip.mp4")
    assert len(frames) == 24
    start, end = disc_area_and_centre(frames[0]), disc_area_and_centre(frames[-1])
    assert check(start, end), (start, end)


def test_motion_is_eased_and_smooth(tmp_path):
    first = write_picture(tmp_path / "first.png")
    render_video(first, tmp_path / "clip.mp4", camera="pan_right", duration=1)
    centres = np.array([disc_area_and_centre(frame)[1] for frame in frames_of(tmp_path / "clip.mp4")])
    steps = -np.diff(centres)
    assert (steps > -0.5).all()                      # never moves backwards (no jitter)
    assert steps[0] < steps[len(steps) // 2] / 3     # starts slowly, fastest in the middle
    assert steps[-1] < steps[len(steps) // 2] / 3    # and settles at the end


def test_tail_frame_is_blended_in_and_ends_the_clip(tmp_path):
    first = write_picture(tmp_path / "first.png", 480, 320)
    tail_picture = np.full((400, 400, 3), (30, 160, 90), np.uint8)  # another size: cropped to fit
    cv2.putText(tail_picture, "TAIL", (80, 230), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 8)
    cv2.imwrite(str(tmp_path / "tail.png"), tail_picture)
    render_video(first, tmp_path / "clip.mp4", tail=tmp_path / "tail.png", duration=2)
    frames = frames_of(tmp_path / "clip.mp4")
    expected_tail = cv2.resize(tail_picture, (480, 480))[80:400]
    expected_first = cv2.imread(str(first))
    assert looks_like(frames[-1], expected_tail)
    assert looks_like(frames[0], expected_first)
    assert mean_abs_diff(frames[len(frames) // 2 - 2], expected_tail) > 20  # first half untouched


def test_ten_second_clip_has_240_frames(tmp_path):
    first = write_picture(tmp_path / "first.png", 320, 320)
    info = render_video(first, tmp_path / "clip.mp4", camera="tilt_down", duration=10)
    assert (info["frames"], info["duration"]) == (240, 10.0)
    assert len(frames_of(tmp_path / "clip.mp4")) == 240


def test_render_video_stops_when_asked(tmp_path):
    first = write_picture(tmp_path / "first.png")
    seen = []
    with pytest.raises(local_render.RenderCancelled):
        render_video(first, tmp_path / "clip.mp4", progress=lambda done, total: seen.append(done),
                     should_stop=lambda: len(seen) >= 10)
    assert seen == list(range(1, 11))
    assert list(tmp_path.iterdir()) == [first]


# ---- render_images


def test_images_have_the_asked_count_aspect_and_looks(tmp_path):
    reference = write_picture(tmp_path / "ref.png", 480, 320)
    paths = render_images(reference, tmp_path / "out", n=9, aspect_ratio="4:3", fidelity=0.5)
    assert [p.name for p in paths] == [f"image-{i}.png" for i in range(1, 10)]
    pictures = [cv2.imread(str(p)) for p in paths]
    assert all(p.shape == (320, 427, 3) for p in pictures)
    for i in range(9):
        for j in range(i + 1, 9):
            assert mean_abs_diff(pictures[i], pictures[j]) > 1.0, (local_render.LOOKS[i], local_render.LOOKS[j])


def test_more_variations_than_looks_is_refused(tmp_path):
    reference = write_picture(tmp_path / "ref.png", 480, 320)
    with pytest.raises(ValueError):
        render_images(reference, tmp_path / "out", n=len(local_render.LOOKS) + 1)


def test_fidelity_one_gives_the_centre_crop(tmp_path):
    reference = write_picture(tmp_path / "ref.png", 480, 320)
    (path,) = render_images(reference, tmp_path / "out", n=1, aspect_ratio="1:1", fidelity=1.0)
    assert np.array_equal(cv2.imread(str(path)), cv2.imread(str(reference))[:, 80:400])


def test_far_aspect_is_padded_with_the_whole_picture(tmp_path):
    reference = write_picture(tmp_path / "ref.png", 480, 320)
    (path,) = render_images(reference, tmp_path / "out", n=1, aspect_ratio="9:16", fidelity=1.0)
    picture = cv2.imread(str(path))
    assert picture.shape == (853, 480, 3)
    top = (853 - 320) // 2
    assert np.array_equal(picture[top:top + 320], cv2.imread(str(reference)))


def test_images_long_side_is_capped(tmp_path):
    reference = write_picture(tmp_path / "ref.png", 2000, 1200)
    (path,) = render_images(reference, tmp_path / "out", n=1, aspect_ratio="16:9")
    assert cv2.imread(str(path)).shape == (864, 1536, 3)


# ---- the provider


@pytest.fixture
def provider(tmp_path):
    engine = LocalProvider({"DATA_DIR": tmp_path})
    yield engine
    engine.close()


def make_task(data_dir, task_id="20261122T101500123Z-3f9c2a", kind="video", params=None, tail=False,
              size=(480, 320)):
    role = "first" if kind == "video" else "reference"
    inputs = [{"role": role, "path": f"inputs/{task_id}/{role}.png", "width": size[0], "height": size[1]}]
    write_picture(data_dir / inputs[0]["path"], *size)
    if tail:
        inputs.append({"role": "tail", "path": f"inputs/{task_id}/tail.png", "width": size[0],
                       "height": size[1]})
        write_picture(data_dir / inputs[1]["path"], *size, disc=(60, 60, 40), seed=3)
    defaults = ({"prompt": "zoom out slowly", "mode": "std", "duration": "5", "camera": "auto"}
                if kind == "video" else {"prompt": "", "aspect_ratio": "1:1", "n": 2, "image_fidelity": 0.5})
    return {"id": task_id, "kind": kind, "model": "local-motion" if kind == "video" else "local-filters",
            "params": {**defaults, **(params or {})}, "inputs": inputs}


def wait_for(engine, task, states, deadline=30.0, min_progress=0):
    """Poll until the task reaches one of `states` (with at least `min_progress`); return every
    status seen."""
    seen = []
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        seen.append(engine.query(task))
        if seen[-1].state in states and (seen[-1].progress or 0) >= min_progress:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"task still {seen[-1].state} at {seen[-1].progress} % after {deadline} s")


@pytest.fixture
def paused_renders(monkeypatch):
    """Make renders stop after their 5th frame until `.set()` is called (never longer than 20 s)."""
    gate = threading.Event()
    real_render = local_render.render_video

    def render_with_pause(*args, progress=None, **kwargs):
        def progress_then_pause(done, total):
            progress(done, total)
            if done == 5:
                gate.wait(20)
        return real_render(*args, progress=progress_then_pause, **kwargs)

    monkeypatch.setattr(local_render, "render_video", render_with_pause)
    yield gate
    gate.set()


def test_every_offered_value_is_one_the_engine_can_make(provider, tmp_path):
    """The table is what the page offers: each camera move is one the renderer knows, and each
    aspect ratio comes out as that ratio."""
    video, image = provider.capabilities()["models"]
    assert set(video["cameras"]) == {"auto", *local_render.CAMERAS}
    for i, ratio in enumerate(image["aspect_ratios"]):
        task = make_task(tmp_path, task_id=f"20261122T101500123Z-{i:06x}", kind="image",
                         params={"n": 1, "aspect_ratio": ratio})
        provider.submit(task)
        (output,) = wait_for(provider, task, {SUCCEEDED, FAILED})[-1].outputs
        width, height = media.probe_media(tmp_path / output.path)["width"], media.probe_media(tmp_path / output.path)[
            "height"]
        w, h = map(int, ratio.split(":"))
        assert abs(width / height - w / h) < 0.02, (ratio, width, height)


def test_constructing_starts_nothing(tmp_path):
    threads = threading.active_count()
    engine = LocalProvider({"DATA_DIR": tmp_path, "LOCAL_WORKERS": 64})
    assert engine._pool is None and threading.active_count() == threads
    assert 1 <= engine.workers <= (os.cpu_count() or 1)
    assert engine.reconcile({"id": "x"}) is None


def test_video_task_runs_to_success_with_progress(provider, tmp_path, paused_renders):
    task = make_task(tmp_path, tail=True)
    assert provider.submit(task) == "local-20261122T101500123Z-3f9c2a"
    running = wait_for(provider, task, {RUNNING}, min_progress=4)[-1]  # paused at frame 5 of 120
    assert running.progress == 4
    paused_renders.set()
    seen = wait_for(provider, task, {SUCCEEDED, FAILED})
    assert seen[-1].state == SUCCEEDED, seen[-1].message
    assert [s.progress for s in seen] == sorted(s.progress for s in seen)
    (output,) = seen[-1].outputs
    assert output.kind == "video" and output.path == f"outputs/{task['id']}/video.mp4"
    assert output.meta["duration"] == 5.0 and output.meta["camera"] == "zoom_out"  # from the prompt
    info = media.probe_media(tmp_path / output.path)
    assert (info["width"], info["height"]) == (480, 320)
    done = json.loads((tmp_path / "outputs" / task["id"] / "done.json").read_text())
    assert done["outputs"][0]["path"] == output.path
    leftovers = [p.name for p in (tmp_path / "outputs" / task["id"]).iterdir()]
    assert sorted(leftovers) == [".render.lock", "done.json", "video.mp4"]


def test_image_task_writes_n_pictures(provider, tmp_path):
    task = make_task(tmp_path, kind="image", params={"n": 3, "aspect_ratio": "16:9"})
    provider.submit(task)
    status = wait_for(provider, task, {SUCCEEDED, FAILED})[-1]
    assert status.state == SUCCEEDED, status.message
    assert [o.path for o in status.outputs] == [f"outputs/{task['id']}/image-{i}.png" for i in (1, 2, 3)]
    assert all(o.kind == "image" for o in status.outputs)
    assert cv2.imread(str(tmp_path / status.outputs[0].path)).shape == (270, 480, 3)


def test_cancel_a_running_render(provider, tmp_path, paused_renders):
    task = make_task(tmp_path)
    provider.submit(task)
    wait_for(provider, task, {RUNNING})
    assert provider.cancel(task) is True
    assert provider.query(task).state == CANCELLED
    paused_renders.set()
    provider.close()  # wait for the worker to notice and clean up
    out_dir = tmp_path / "outputs" / task["id"]
    assert sorted(p.name for p in out_dir.iterdir()) == [".cancelled", ".render.lock"]
    assert provider.cancel(task) is False
    assert LocalProvider({"DATA_DIR": tmp_path}).query(task).state == CANCELLED  # also after a restart


def test_cancel_a_queued_render(tmp_path, paused_renders):
    engine = LocalProvider({"DATA_DIR": tmp_path, "LOCAL_WORKERS": 1})
    try:
        running, waiting = make_task(tmp_path, "task-a"), make_task(tmp_path, "task-b")
        engine.submit(running)
        engine.submit(waiting)
        wait_for(engine, running, {RUNNING})
        assert engine.query(waiting).state == QUEUED
        assert engine.cancel(waiting) is True
        paused_renders.set()
        assert wait_for(engine, running, {SUCCEEDED})[-1].state == SUCCEEDED
        assert engine.query(waiting).state == CANCELLED
        assert not (tmp_path / "outputs" / "task-b" / "video.mp4").exists()
    finally:
        paused_renders.set()
        engine.close()


def test_cancel_from_another_process_stops_the_render(provider, tmp_path, paused_renders):
    task = make_task(tmp_path)
    provider.submit(task)
    wait_for(provider, task, {RUNNING})
    assert LocalProvider({"DATA_DIR": tmp_path}).cancel(task) is True  # knows the job only from disk
    paused_renders.set()
    assert wait_for(provider, task, {CANCELLED, SUCCEEDED})[-1].state == CANCELLED
    assert not (tmp_path / "outputs" / task["id"] / "video.mp4").exists()


def test_cancel_after_success_is_refused(provider, tmp_path):
    task = make_task(tmp_path, params={"duration": "5"}, size=(320, 320))
    provider.submit(task)
    assert wait_for(provider, task, {SUCCEEDED})[-1].state == SUCCEEDED
    assert provider.cancel(task) is False
    assert LocalProvider({"DATA_DIR": tmp_path}).cancel(task) is False


def test_restart_reports_success_from_done_json(provider, tmp_path):
    task = make_task(tmp_path, kind="image", params={"n": 1})
    provider.submit(task)
    finished = wait_for(provider, task, {SUCCEEDED})[-1]
    restarted = LocalProvider({"DATA_DIR": tmp_path})
    status = restarted.query(task)
    assert status.state == SUCCEEDED
    assert [(o.kind, o.path) for o in status.outputs] == [(o.kind, o.path) for o in finished.outputs]
    assert restarted._pool is None  # answered from disk, nothing rendered


def test_restart_without_result_renders_again(tmp_path):
    task = make_task(tmp_path, params={"camera": "pan_left"})
    stale = tmp_path / "outputs" / task["id"] / ".partial-dead"
    stale.mkdir(parents=True)
    (stale / "video.mp4.part").write_bytes(b"half a clip")
    restarted = LocalProvider({"DATA_DIR": tmp_path})
    try:
        first = restarted.query(task)
        assert first.state == RUNNING and first.raw_status == "restarted"
        status = wait_for(restarted, task, {SUCCEEDED, FAILED})[-1]
        assert status.state == SUCCEEDED, status.message
        assert status.outputs[0].meta["camera"] == "pan_left"
        assert not stale.exists()
    finally:
        restarted.close()


def test_a_broken_input_fails_with_a_message(provider, tmp_path):
    task = make_task(tmp_path)
    (tmp_path / task["inputs"][0]["path"]).write_bytes(b"this is not a picture")
    provider.submit(task)
    status = wait_for(provider, task, {SUCCEEDED, FAILED})[-1]
    assert status.state == FAILED
    assert status.message.startswith("The local render failed") and status.error_code == "local_render_failed"
    assert str(tmp_path) not in status.message                  # the studio's paths stay in its log
    assert not (tmp_path / "outputs" / task["id"] / "done.json").exists()


def test_a_full_disk_while_rendering_says_so(provider, tmp_path, monkeypatch):
    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "outputs"))
    monkeypatch.setattr(local_render, "render_video", no_room)
    task = make_task(tmp_path)
    provider.submit(task)
    status = wait_for(provider, task, {SUCCEEDED, FAILED})[-1]
    assert status.error_code == "disk_full" and "disk was full" in status.message
    assert str(tmp_path) not in status.message


@pytest.mark.parametrize(("change", "words"), [
    (lambda task: task["inputs"].clear(), "first frame"),
    (lambda task: task.update(kind="image", model="local-filters", inputs=[]), "reference picture"),
    (lambda task: task.update(model="kling-v1-6"), "no video model"),
    (lambda task: task["params"].update(camera="spin"), "camera"),
    (lambda task: task.update(id="../escape"), "folder"),
])
def test_submit_refuses_what_cannot_be_rendered(provider, tmp_path, change, words):
    task = make_task(tmp_path)
    change(task)
    with pytest.raises(ProviderRejected) as caught:
        provider.submit(task)
    assert words in caught.value.message
    assert provider._pool is None


# ---- stopping: delete, time limit, clock steps


def test_deleting_a_cancelled_running_render_stops_it_and_removes_its_files(app, png_b64, paused_renders):
    client, store = app.test_client(), app.extensions["task_store"]
    engine = app.extensions["providers"]["local"]
    task_id = client.post("/generate", json={"image": png_b64}).get_json()["task_id"]
    task_query.dispatch(store, app.extensions["providers"])
    task = store.get(task_id)
    wait_for(engine, task, {RUNNING})
    assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 200
    assert client.delete(f"/api/tasks/{task_id}").status_code == 204    # before the poller stops it
    paused_renders.set()
    ended = wait_for(engine, task, {CANCELLED, SUCCEEDED, FAILED})[-1]
    assert ended.state == CANCELLED and ended.progress < 50             # stopped, not rendered to the end
    engine.close()
    assert not (app.config["DATA_DIR"] / Path("outputs") / task_id).exists()


def test_the_running_time_limit_is_measured_on_the_monotonic_clock(tmp_path, paused_renders):
    engine = LocalProvider({"DATA_DIR": tmp_path, "LOCAL_MAX_RUNNING_MINUTES": 1})
    monotonic = [100.0]
    engine.monotonic = lambda: monotonic[0]
    try:
        task = make_task(tmp_path)
        engine.submit(task)
        wait_for(engine, task, {RUNNING})
        monotonic[0] += 59
        assert engine.query(task).state == RUNNING
        monotonic[0] += 2
        status = engine.query(task)
        assert (status.state, status.error_code) == (FAILED, "timeout")
        assert "1 minutes" in status.message
    finally:
        paused_renders.set()
        engine.close()
    assert not (tmp_path / "outputs" / task["id"] / "video.mp4").exists()


def test_a_wall_clock_step_forward_does_not_time_out_a_local_render(app, png_b64, paused_renders):
    client, store, providers = app.test_client(), app.extensions["task_store"], app.extensions["providers"]
    task_id = client.post("/generate", json={"image": png_b64}).get_json()["task_id"]
    task_query.dispatch(store, providers)
    wait_for(providers["local"], store.get(task_id), {RUNNING})
    task_query.poll(store, providers, clock=lambda: utcnow() + timedelta(hours=2))
    assert store.get(task_id)["status"] in ("submitted", "running"), store.get(task_id).get("error")
    paused_renders.set()
    assert run_pipeline(app, task_id, skip_waits=True)["status"] == "succeeded"
