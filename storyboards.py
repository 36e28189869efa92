"""Storyboards: one video made of scenes, each a task of its own, joined when all have succeeded.

A video request with `scenes` (the platform API's `scenes[]`; `POST /generate` and
`POST /api/v1/videos/generate`) becomes a storyboard task (kind "video", the request's provider
and model; `params.scenes` holds each scene's prompt, duration, first-frame choice and checked
settings; `scene_task_ids` lists the task of each scene) and one scene task per scene (fields
`storyboard_id`, `scene_index`), each queued through validation.queue_task like any other video
and charged as one. The storyboard itself costs nothing and is never sent to a provider: the
dispatcher and the poller leave it alone.

A scene with `first_frame: "previous_last"` starts where the previous scene ended: its task is
created only when that scene has succeeded, with the last frame of its clip as first frame
(video_join.last_frame). `advance` (a pipeline job, scheduler.py) moves every storyboard on:
it creates those scenes, fails the storyboard naming the first scene that failed or was cancelled,
and when every scene has succeeded joins the clips (video_join.join: one size, the fps of
`video_config`, optional crossfade) into `outputs/<id>/storyboard.mp4`. The storyboard is then
`downloading` with that file as its output, so the download job verifies and thumbnails it like
any result. Each scene's clip stays in its own task. Cancelling the storyboard cancels its scenes
(`cancel_scenes`); retrying it (`retry`) makes a new storyboard that keeps the scenes that did not
fail and runs only the others again.
"""

import io
import logging
import re
from pathlib import Path
from typing import Literal

from flask import current_app
from PIL import Image
from pydantic import BaseModel, Field, field_validator

import access
import errors
import fileio
import ledger
import media
import metrics
import tasks
import video_join
from errors import N_, ValidationError
from tasks import ACTIVE, CANCELLED, FAILED, QUEUED, SUCCEEDED
from validation import STRICT, Text

log = logging.getLogger(__name__)

MAX_SCENES = 20
OUTPUT_NAME = "storyboard.mp4"
# What a chained scene's first frame is while its request is checked: the picture comes later.
_LATER = "(the previous scene's last frame)"
_RESOLUTION = re.compile(r"([1-9][0-9]{1,3})x([1-9][0-9]{1,3})")


# ---- the request --------------------------------------------------------------------------

class Scene(BaseModel):
    """One scene of a storyboard."""

    model_config = STRICT

    prompt: Text = Field(max_length=2500)
    duration: Text | None = Field(None, description='Seconds, as the model offers them ("5", "10").')
    image: Text | None = Field(None, description="Its own first frame (Base64 or URL), with first_frame 'own'.")
    first_frame: Literal["own", "previous_last"] = Field(
        "own", description="'own': the scene's image (or none: text-to-video); 'previous_last': the last "
                           "frame of the previous scene's clip.")

    @field_validator("duration", mode="before")
    @classmethod
    def duration_as_text(cls, value):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class VideoConfig(BaseModel):
    """How the scenes' clips are joined."""

    model_config = STRICT

    fps: int = Field(video_join.DEFAULT_FPS, ge=1, le=60)
    resolution: Text | None = Field(None, description='"WIDTHxHEIGHT", e.g. "1280x720"; the first clip\'s '
                                                      'size when left out.')
    crossfade: float = Field(0, ge=0, le=2, description="Seconds each scene blends into the next.")

    @field_validator("resolution")
    @classmethod
    def size_in_pixels(cls, value):
        match = _RESOLUTION.fullmatch(value) if value is not None else None
        if value is not None and (match is None or not all(16 <= int(side) <= 4096 for side in match.groups())):
            raise ValueError('must be "WIDTHxHEIGHT" with sides of 16–4096 pixels')
        return value


def is_storyboard(task):
    """Whether a task record is a storyboard (not a scene: those are ordinary provider tasks)."""
    return task.get("scene_task_ids") is not None


def _check_request(req):
    """Each scene checked as a video request of its own; returns (provider, model, [scene entry])."""
    for name in ("image", "image_tail", "prompt", "duration"):
        if getattr(req, name) is not None:
            raise ValidationError(N_("With scenes, give %(field)s per scene (or leave it out)."),
                                  code="invalid_field", field=name, params={"field": name})
    if not 1 <= len(req.scenes) <= MAX_SCENES:
        raise ValidationError(N_("A storyboard has 1 to %(max)s scenes."), code="invalid_field",
                              field="scenes", status=422, params={"max": MAX_SCENES})
    from video_extend import check_video_request

    entries, checked = [], None
    for index, scene in enumerate(req.scenes):
        where = f"scenes.{index}"
        chained = scene.first_frame == "previous_last"
        if chained and (index == 0 or scene.image is not None):
            raise ValidationError(N_("The first scene has no previous scene.") if index == 0 else
                                  N_("A scene starting from the previous scene's last frame takes no image."),
                                  code="invalid_field", field=f"{where}.first_frame", status=422)
        one = req.model_copy(update={"prompt": scene.prompt, "duration": scene.duration, "scenes": None,
                                     "video_config": None, "image": _LATER if chained else scene.image})
        try:
            checked = check_video_request(one)
        except ValidationError as exc:
            exc.field = f"{where}.{exc.field}" if exc.field else where
            raise
        entries.append({"prompt": scene.prompt, "duration": checked[2]["duration"],
                        "first_frame": scene.first_frame, "params": checked[2]})
    return checked[0], checked[1], entries


def queue_storyboard(req):
    """Check a request with scenes and queue its storyboard and the scenes that can start now;
    returns the storyboard's record. Anything refused leaves no task behind."""
    from validation import queue_task

    provider, model, entries = _check_request(req)
    config = (req.video_config or VideoConfig()).model_dump()
    store = current_app.extensions["task_store"]
    params = {**entries[0]["params"], "prompt": " | ".join(e["prompt"] for e in entries)[:2500],
              "duration": str(sum(int(float(e["duration"])) for e in entries)), "scenes": entries,
              "video_config": config}
    parent = access.create_within_limits(store, "video", params, lambda task_id: tasks.create_task(
        store, current_app.config["DATA_DIR"], kind="video", provider=provider.name, model=model["id"],
        params=params, images={}, owner=access.owner_id(), task_id=task_id,
        callback_url=getattr(req, "callback_url", None),        # v1 only
        scene_task_ids=[None] * len(entries)))
    made = []
    try:
        for index, (scene, entry) in enumerate(zip(req.scenes, entries, strict=True)):
            if entry["first_frame"] == "previous_last":
                made.append(None)
                continue
            pictures = {"first": (f"scenes.{index}.image", scene.image)}
            made.append(queue_task("video", provider, model, dict(entry["params"]), pictures,
                                   fields={"storyboard_id": parent["id"], "scene_index": index})["id"])
    except BaseException:
        _remove([parent["id"], *(task_id for task_id in made if task_id)])
        raise
    return store.update(parent["id"], {"scene_task_ids": made})


def _remove(task_ids):
    """Take back tasks made for a request that was refused halfway: records, files and spends."""
    store, spent = current_app.extensions["task_store"], current_app.extensions["ledger"]
    for task_id in task_ids:
        record = store.delete(task_id)
        tasks.remove_files(current_app.config["DATA_DIR"], task_id)
        if record and record.get("owner"):
            spent.refund(record["owner"], "video", task_id)


# ---- what the API shows -------------------------------------------------------------------

def scene_counts(store, parent):
    """How many scenes are in each state; "waiting" for a chained scene not created yet."""
    counts = {}
    for task_id in parent.get("scene_task_ids") or []:
        record = store.get(task_id) if task_id else None
        state = record["status"] if record else "waiting"
        counts[state] = counts.get(state, 0) + 1
    return counts


# ---- the pipeline job ---------------------------------------------------------------------

def advance(store, providers, clock=tasks.utcnow, stopping=None, spent=None):
    """Move every storyboard in progress on (see the module docstring); `stopping` ends the pass
    after the storyboard in hand. `spent` is the studio's ledger (the JSON one by default)."""
    spent = spent or ledger.Ledger(store.dir)
    for task_id in store.ids_with_status((QUEUED, tasks.RUNNING)):
        if stopping is not None and stopping.is_set():
            return
        parent = store.get(task_id)
        if parent is None or not is_storyboard(parent) or parent["status"] not in (QUEUED, tasks.RUNNING):
            continue
        try:
            _advance_one(store, providers, parent, clock(), spent, stopping)
        except Exception:           # one broken storyboard must not stop the others
            log.exception("storyboard %s could not be advanced", task_id)


def _advance_one(store, providers, parent, now, spent, stopping=None):
    ids = list(parent["scene_task_ids"])
    scenes = [store.get(task_id) if task_id else None for task_id in ids]
    for index, scene in enumerate(scenes):
        if (scene is None and ids[index]) or (scene is not None and scene["status"] in (FAILED, CANCELLED)):
            _fail(store, parent["id"], index, scene, now)
            _give_back_reserved(spent, parent)
            return
    for index in range(len(ids)):
        previous = scenes[index - 1] if index else None
        if ids[index] is None and previous is not None and previous["status"] == SUCCEEDED:
            scenes[index] = _create_chained(store, providers, parent, index, previous, now, spent)
            ids[index] = scenes[index]["id"]
    done = sum(1 for scene in scenes if scene is not None and scene["status"] == SUCCEEDED)
    if done == len(scenes):
        _join(store, parent, scenes, now, stopping)
        return

    def progress(record):
        if record["status"] not in (QUEUED, tasks.RUNNING):
            return
        if record["status"] == QUEUED:      # under way: its scenes are the provider's tasks
            tasks.submitted(record, None, now)
            tasks.running(record, now)
        record.update(scene_task_ids=ids, progress=done * 100 // len(scenes))
    record = store.update(parent["id"], progress)
    if record["status"] not in ACTIVE:      # cancelled meanwhile: so are the scenes just made
        cancel_scenes(store, record, now)


def _fail(store, parent_id, index, scene, now):
    """End the storyboard because of its scene `index` (failed, cancelled, or its task deleted: None)."""
    what = _scene_end(index, scene)

    def change(record):
        if record["status"] in (QUEUED, tasks.RUNNING):
            tasks.fail(record, "scene_failed", what, now)
    store.update(parent_id, metrics.counting_finish(change))
    log.info("storyboard %s failed: %s", parent_id, what)


def _scene_end(index, scene):
    """Why the storyboard ends, as a Text: the scene's own reason quoted in the reader's language
    too (errors._nested), or as it was stored when it is plain text."""
    error = (scene or {}).get("error") or {}
    if scene is None:
        return errors.Text(N_("Scene %(scene)s was deleted."), scene=index + 1)
    if scene["status"] == CANCELLED:
        return errors.Text(N_("Scene %(scene)s was cancelled."), scene=index + 1)
    if not (error.get("template") or error.get("message")):
        return errors.Text(N_("Scene %(scene)s failed with no reason given."), scene=index + 1)
    reason = {"template": error.get("template") or error["message"], "params": error.get("params")}
    return errors.Text(N_("Scene %(scene)s failed: %(reason)s"), scene=index + 1, reason=reason)


def _give_back_reserved(spent, parent):
    """A storyboard that ended early: the units it reserved for scenes never made go back."""
    if parent.get("owner"):
        spent.refund(parent["owner"], "video", parent["id"])


def _create_chained(store, providers, parent, index, previous, now, spent):
    """The task of a scene that starts from the previous scene's last frame, queued; its unit moves
    from the storyboard's reservation (checked against the quota when the storyboard was made)."""
    data_dir = Path(store.dir)
    rgb = video_join.last_frame(fileio.media_root(data_dir) / previous["outputs"][0]["path"])
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    picture = media.check_image_bytes(buffer.getvalue(), "image", label="the previous scene's last frame")
    provider = providers.get(parent["provider"])
    picture = media.fit_image(picture, getattr(provider, "max_image_bytes", media.PROVIDER_MAX_BYTES))
    task_id = tasks.new_task_id()
    with spent.locked():
        if parent.get("owner"):
            spent.record(parent["owner"], "video", -1, parent["id"], now)
            spent.record(parent["owner"], "video", 1, task_id, now)
        record = tasks.create_task(store, data_dir, kind="video", provider=parent["provider"],
                                   model=parent["model"], params=dict(parent["params"]["scenes"][index]["params"]),
                                   images={"first": picture}, owner=parent.get("owner"), task_id=task_id,
                                   storyboard_id=parent["id"], scene_index=index)
    log.info("storyboard %s: scene %d queued as %s", parent["id"], index + 1, task_id)
    return metrics.task_created(record)


def _join(store, parent, scenes, now, stopping=None):
    """Join the scenes' clips into the storyboard's output; the download job verifies it. A
    stopping studio drops the join between frames; it is done again after the restart."""
    data_dir = fileio.media_root(store.dir)         # the clips and the joined film are media
    config = parent["params"].get("video_config") or {}
    clips = [data_dir / scene["outputs"][0]["path"] for scene in scenes]
    size = _RESOLUTION.fullmatch(config["resolution"]).groups() if config.get("resolution") else None
    size = tuple(int(side) for side in size) if size else video_join.clip_info(clips[0])[:2]
    rel = Path("outputs") / parent["id"] / OUTPUT_NAME
    try:
        video_join.join(clips, data_dir / rel, size, config.get("fps") or video_join.DEFAULT_FPS,
                        config.get("crossfade") or 0, should_stop=stopping.is_set if stopping else None)
    except video_join.JoinStopped:
        return

    def finished(record):
        if record["status"] not in (QUEUED, tasks.RUNNING):
            return
        if record["status"] == QUEUED:
            tasks.submitted(record, None, now)
        tasks.downloading(record, [{"kind": "video", "path": rel.as_posix(), "remote_url": None,
                                    "remote_expires_at": None, "meta": {"scenes": len(scenes)}}], now)
    store.update(parent["id"], finished)
    log.info("storyboard %s joined from %d scenes", parent["id"], len(scenes))


# ---- cancel and retry ---------------------------------------------------------------------

def cancel_scenes(store, parent, now, spent=None):
    """Cancel every scene of a storyboard that has not finished (a result being saved finishes);
    scenes no provider saw get their spend back when `spent` (the ledger) is given."""
    for task_id in parent.get("scene_task_ids") or []:
        scene = store.get(task_id) if task_id else None
        if scene is None or scene["status"] not in (QUEUED, tasks.SUBMITTED, tasks.RUNNING):
            continue

        def change(record):
            if record["status"] in (QUEUED, tasks.SUBMITTED, tasks.RUNNING):
                tasks.cancel(record, now)
        record = store.update(task_id, metrics.counting_finish(change))
        if spent is not None and not record.get("submit_started_at") and record.get("owner"):
            spent.refund(record["owner"], "video", task_id)


def retry(store, old):
    """A new storyboard like `old` that keeps its scenes that did not fail (succeeded or still
    running) and queues the failed or cancelled ones again; returns the new storyboard's record."""
    data_dir = current_app.config["DATA_DIR"]
    parent = access.create_within_limits(store, "video", old["params"], lambda task_id: tasks.create_task(
        store, data_dir, kind="video", provider=old["provider"], model=old["model"], params=old["params"],
        images={}, owner=old.get("owner"), retry_of=old["id"], task_id=task_id,
        callback_url=old.get("callback_url"), scene_task_ids=[None] * len(old["scene_task_ids"])))
    ids = []
    for index, task_id in enumerate(old["scene_task_ids"]):
        scene = store.get(task_id) if task_id else None
        chained = old["params"]["scenes"][index]["first_frame"] == "previous_last"
        if scene is not None and scene["status"] not in (FAILED, CANCELLED):
            ids.append(task_id)
        elif scene is None or (chained and ids[index - 1] != old["scene_task_ids"][index - 1]):
            ids.append(None)        # starts from a previous scene made again: created when that one succeeds
        else:
            ids.append(_copy_scene(store, data_dir, scene, parent, index)["id"])
    return store.update(parent["id"], {"scene_task_ids": ids})


def _copy_scene(store, data_dir, scene, parent, index):
    return access.create_within_limits(store, "video", scene["params"], lambda task_id: tasks.create_task(
        store, data_dir, kind="video", provider=scene["provider"], model=scene["model"], params=scene["params"],
        images={entry["role"]: entry for entry in scene["inputs"]}, owner=scene.get("owner"),
        retry_of=scene["id"], task_id=task_id, storyboard_id=parent["id"], scene_index=index))

