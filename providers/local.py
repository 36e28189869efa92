"""The built-in local engine: an offline effects engine, not an AI model.

It needs no key and no network. `local-motion` makes a clip by moving a virtual camera over the
first frame (zoom, pan or tilt, eased, optionally blending into a tail frame) and encodes it with
`media.Mp4Writer`; `local-filters` makes variations of a reference picture by cropping it to the
asked aspect ratio and giving each copy a different OpenCV look. Renders run in a small thread pool:
OpenCV and x264 work outside the GIL (two renders in threads run as fast as in two processes).
Everything is deterministic, so a render lost with its process is simply rendered again. Per task,
`DATA_DIR/outputs/<id>/` holds the results, a `done.json` marker written last, a `.render.lock` that
one process holds while rendering, and a `.cancelled` marker so a cancel works from any process.
"""

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

import media
from errors import ProviderRejected
from providers.base import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Provider,
    ProviderStatus,
    RemoteOutput,
)

log = logging.getLogger(__name__)

FPS = 24
ZOOM = 1.2          # the camera moves in (or out) by 20 %; pans and tilts travel inside a 1.2x crop
STYLE_SIDE = 768    # the slow OpenCV looks run at this long side and are scaled up afterwards
MIN_KEPT = 0.5      # a crop keeping less than half of the picture is padded instead
ASPECT_RATIOS = ["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"]
CAMERAS = ["zoom_in", "zoom_out", "pan_left", "pan_right", "tilt_up", "tilt_down"]
DONE, LOCK, CANCEL_MARKER = "done.json", ".render.lock", ".cancelled"

# Prompt phrases that pick a camera move; the phrase that comes first in the prompt wins.
_CAMERA_PHRASES = {
    "zoom_in": r"\bzoom(?:s|ing)?[\s-]*in(?:to)?\b|\bpush(?:es|ing)?[\s-]*in\b|\bdolly(?:ing)?[\s-]*in\b|"
               r"推近|拉近|推镜|镜头推进|放大",
    "zoom_out": r"\bzoom(?:s|ing)?[\s-]*out\b|\bpull(?:s|ing)?[\s-]*(?:back|out)\b|"
                r"\bdolly(?:ing)?[\s-]*out\b|拉远|镜头拉开|缩小",
    "pan_left": r"\bpan(?:s|ning)?[\s-]*(?:to\s+the\s+)?left\b|左移|左摇|向左",
    "pan_right": r"\bpan(?:s|ning)?[\s-]*(?:to\s+the\s+)?right\b|右移|右摇|向右",
    "tilt_up": r"\btilt(?:s|ing)?[\s-]*up\b|上摇|向上",
    "tilt_down": r"\btilt(?:s|ing)?[\s-]*down\b|下摇|向下",
}


class RenderCancelled(Exception):
    """The render was asked to stop; its partial files are dropped."""


def camera_from_prompt(prompt):
    """The camera move a prompt asks for (first phrase mentioned), else a gentle zoom in."""
    text = (prompt or "").lower()
    found = [(match.start(), camera) for camera, pattern in _CAMERA_PHRASES.items()
             if (match := re.search(pattern, text))]
    return min(found)[1] if found else "zoom_in"


def _smoothstep(t):
    t = min(max(t, 0.0), 1.0)
    return t * t * (3 - 2 * t)


def _window(camera, eased):
    """Crop window (fraction of the picture, centre x, centre y) at eased progress 0..1."""
    if camera == "zoom_in":
        return 1 / (1 + (ZOOM - 1) * eased), 0.5, 0.5
    if camera == "zoom_out":
        return 1 / (ZOOM - (ZOOM - 1) * eased), 0.5, 0.5
    crop = 1 / ZOOM
    travel = (1 - crop) / 2 * (1 - 2 * eased)   # from one edge of the margin to the other
    # Panning left shows what lies to the left: the window moves left, the content moves right.
    return {"pan_left": (crop, 0.5 + travel, 0.5), "pan_right": (crop, 0.5 - travel, 0.5),
            "tilt_up": (crop, 0.5, 0.5 + travel), "tilt_down": (crop, 0.5, 0.5 - travel)}[camera]


def _even_fit(width, height, max_side):
    """Even output size with the picture's aspect, long side at most max_side, never upscaled."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _cover(img, width, height):
    """Scale and centre-crop `img` to exactly width×height."""
    h, w = img.shape[:2]
    scale = max(width / w, height / h)
    resized = cv2.resize(img, (max(width, round(w * scale)), max(height, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return resized[top:top + height, left:left + width]


def render_video(first, out, *, tail=None, camera="zoom_in", duration=5, fps=FPS, max_side=1280,
                 progress=None, should_stop=None):
    """Render a camera move over `first` (blending into `tail`) as an H.264 MP4 at `out`."""
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera move {camera!r}; expected one of {', '.join(CAMERAS)}")
    picture = media.load_bgr(first)
    src_h, src_w = picture.shape[:2]
    width, height = _even_fit(src_w, src_h, max_side)
    # Keep up to ZOOM times the output resolution, so the closest framing is still sharp.
    extra = min(ZOOM, max(1.0, max(src_w, src_h) / max(width, height)))
    work = cv2.resize(picture, (round(width * extra), round(height * extra)), interpolation=cv2.INTER_AREA)
    work_h, work_w = work.shape[:2]
    tail_frame = _cover(media.load_bgr(tail), width, height) if tail else None

    frames = int(duration * fps)
    with media.Mp4Writer(out, width, height, fps) as writer:
        for index in range(frames):
            if should_stop and should_stop():
                raise RenderCancelled
            t = index / max(1, frames - 1)
            crop, cx, cy = _window(camera, _smoothstep(t))
            # Inverse map (output pixel -> work pixel, pixel centres aligned): float offsets give
            # sub-pixel motion, so slow moves glide instead of stepping a whole pixel at a time.
            sx, sy = crop * work_w / width, crop * work_h / height
            x0, y0 = (cx - crop / 2) * work_w, (cy - crop / 2) * work_h
            matrix = np.float32([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]])
            frame = cv2.warpAffine(work, matrix, (width, height),
                                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_REPLICATE)
            if tail_frame is not None and t > 0.5:
                alpha = _smoothstep((t - 0.5) * 2)  # the tail fades in over the second half
                frame = cv2.addWeighted(frame, 1 - alpha, tail_frame, alpha, 0)
            writer.write(frame)
            if progress:
                progress(index + 1, frames)
    return {"width": width, "height": height, "frames": frames, "fps": fps, "duration": frames / fps}


# ---- image looks: each takes a BGR picture and returns a restyled one of the same size

def _at_style_size(look):
    """Run a slow look at STYLE_SIDE and scale the result back up smoothly."""
    def run(img):
        h, w = img.shape[:2]
        scale = STYLE_SIDE / max(h, w)
        if scale >= 1:
            return look(img)
        small = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        return cv2.resize(look(small), (w, h), interpolation=cv2.INTER_CUBIC)
    run.__name__ = look.__name__
    return run


@_at_style_size
def painterly(img):
    return cv2.stylization(img, sigma_s=60, sigma_r=0.45)


@_at_style_size
def colour_pencil(img):
    return cv2.pencilSketch(img, sigma_s=50, sigma_r=0.07, shade_factor=0.05)[1]


@_at_style_size
def detail(img):
    return cv2.detailEnhance(img, sigma_s=10, sigma_r=0.15)


@_at_style_size
def soft(img):
    return cv2.edgePreservingFilter(img, flags=cv2.RECURS_FILTER, sigma_s=60, sigma_r=0.4)


@_at_style_size
def cartoon(img):
    smooth = img
    for _ in range(3):
        smooth = cv2.bilateralFilter(smooth, 9, 60, 60)
    step = 40  # few colour levels give flat, cel-shaded areas
    flat = (smooth // step * step + step // 2).astype(np.uint8)
    gray = cv2.medianBlur(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), 7)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return cv2.bitwise_and(flat, flat, mask=edges)


def _split_tone(img, shadows_bgr, highlights_bgr):
    """Push dark areas towards one tint and bright areas towards another."""
    luma = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)[..., None] / 255
    shift = (1 - luma) * np.float32(shadows_bgr) + luma * np.float32(highlights_bgr)
    return np.clip(img + shift, 0, 255).astype(np.uint8)


def warm(img):
    return _split_tone(img, (-18, 4, 22), (-30, 6, 28))


def cool(img):
    return _split_tone(img, (28, 8, -20), (22, 4, -24))


def teal_orange(img):
    return _split_tone(img, (30, 14, -26), (-34, 8, 32))


def sepia(img):
    return cv2.transform(img, np.float32([[0.131, 0.534, 0.272],     # B from (B, G, R)
                                          [0.168, 0.686, 0.349],     # G
                                          [0.189, 0.769, 0.393]]))   # R


# One look per variation, most striking first; n_max in capabilities() is len(LOOKS).
LOOKS = [painterly, teal_orange, colour_pencil, cartoon, warm, detail, cool, soft, sepia]


def _fit_aspect(img, aspect_ratio, max_side):
    """Centre-crop to the ratio; when that would keep less than MIN_KEPT of the picture (a portrait
    photo asked for 21:9), show the whole picture on a blurred, darkened copy of itself instead."""
    rw, rh = (int(part) for part in aspect_ratio.split(":"))
    target = rw / rh
    h, w = img.shape[:2]
    crop_w, crop_h = (round(h * target), h) if w / h > target else (w, round(w / target))
    if crop_w * crop_h >= MIN_KEPT * w * h:
        scale = min(1.0, max_side / max(crop_w, crop_h))
        return _cover(img, max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
    # The smallest canvas of the ratio that holds the whole picture, never larger than max_side.
    canvas_w, canvas_h = (round(h * target), h) if w / h < target else (w, round(w / target))
    scale = min(1.0, max_side / max(canvas_w, canvas_h))
    canvas_w, canvas_h = max(1, round(canvas_w * scale)), max(1, round(canvas_h * scale))
    backdrop = cv2.GaussianBlur(_cover(img, max(1, canvas_w // 8), max(1, canvas_h // 8)), (0, 0), 4)
    canvas = cv2.resize(cv2.convertScaleAbs(backdrop, alpha=0.55), (canvas_w, canvas_h),
                        interpolation=cv2.INTER_CUBIC)
    fg_w, fg_h = min(canvas_w, max(1, round(w * scale))), min(canvas_h, max(1, round(h * scale)))
    left, top = (canvas_w - fg_w) // 2, (canvas_h - fg_h) // 2
    canvas[top:top + fg_h, left:left + fg_w] = cv2.resize(img, (fg_w, fg_h), interpolation=cv2.INTER_AREA)
    return canvas


def render_images(reference, out_dir, *, n=1, aspect_ratio="1:1", fidelity=0.5, max_side=1536,
                  progress=None, should_stop=None):
    """Write `n` looks of `reference` as out_dir/image-1.png … image-n.png; return their paths.

    `fidelity` blends each look with the cropped original: 1.0 gives the crop itself.
    """
    if not 1 <= n <= len(LOOKS):
        raise ValueError(f"n must be 1 to {len(LOOKS)}, one variation per look")
    if aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f"unknown aspect ratio {aspect_ratio!r}; expected one of {', '.join(ASPECT_RATIOS)}")
    fidelity = min(max(float(fidelity), 0.0), 1.0)
    base = _fit_aspect(media.load_bgr(reference), aspect_ratio, max_side)
    paths = []
    for index in range(n):
        if should_stop and should_stop():
            raise RenderCancelled
        picture = cv2.addWeighted(base, fidelity, LOOKS[index](base), 1 - fidelity, 0)
        ok, png = cv2.imencode(".png", picture, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise RuntimeError("PNG encoding failed")
        path = Path(out_dir) / f"image-{index + 1}.png"
        media.save_bytes_atomic(png.tobytes(), path)
        paths.append(path)
        if progress:
            progress(index + 1, n)
    return paths


# ---- the provider

@dataclass
class _Job:
    """One render as this process knows it; fields guarded by LocalProvider._lock."""

    task_id: str
    state: str = QUEUED
    progress: int = 0
    message: str | None = None
    outputs: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)  # checked between frames


class LocalProvider(Provider):
    """Renders locally in a lazily created thread pool; see the module docstring."""

    name = "local"

    def __init__(self, config):
        super().__init__(config)
        self.poll_interval = 1  # in-process: asking costs nothing, and progress should feel live
        cores = os.cpu_count() or 1
        self.workers = max(1, min(int(config.get("LOCAL_WORKERS") or min(2, cores)), cores))
        self._lock = threading.Lock()
        self._jobs = {}
        self._pool = None  # created on the first submit: constructing the provider starts nothing

    def capabilities(self):
        combos = [{"mode": "std", "duration": "5"}, {"mode": "std", "duration": "10"}]
        return {
            "name": "local", "label": "Local effects engine", "configured": True,
            "description": "Offline effects engine built into the studio: camera moves and looks made "
                           "from your own pictures with OpenCV. Not an AI model; needs no key and no "
                           "network.",
            "models": [
                {"id": "local-motion", "kind": "video", "label": "Local motion (camera move)",
                 "image_to_video": True, "text_to_video": False,
                 "modes": ["std"], "durations": ["5", "10"],
                 "combos": combos, "tail_combos": [dict(combo) for combo in combos],
                 "cfg_scale": False, "cameras": ["auto", *CAMERAS],
                 "aspect_ratios": [], "max_prompt": 2500},
                {"id": "local-filters", "kind": "image",
                 "label": "Local filters (variations of your picture)",
                 "text_to_image": False, "image_to_image": True,
                 "aspect_ratios": list(ASPECT_RATIOS),
                 "n_min": 1, "n_max": len(LOOKS), "image_fidelity": True, "human_fidelity": False,
                 "image_reference": [], "negative_prompt_with_image": True, "max_prompt": 2500},
            ],
        }

    def output_dir(self, task_id):
        return self.data_dir / "outputs" / task_id

    def submit(self, task):
        """Queue the render and return "local-<task id>"; submitting again renders again."""
        task_id = self._task_id(task)
        self._check(task)
        (self.output_dir(task_id) / CANCEL_MARKER).unlink(missing_ok=True)  # a retry lifts a cancel
        self._start(task, fresh=True)
        return f"local-{task_id}"

    def query(self, task):
        """Report the render; after a restart, answer from disk or render the task again."""
        task_id = self._task_id(task)
        with self._lock:
            job = self._jobs.get(task_id)
            if job is not None:
                state, progress, message, outputs = job.state, job.progress, job.message, job.outputs
                if state in (SUCCEEDED, FAILED, CANCELLED):
                    # Reported once, then forgotten: done.json or the cancel marker answer later
                    # queries, and the table stays small in a long-running server.
                    del self._jobs[task_id]
        if job is None:
            return self._recover(task)
        if state == SUCCEEDED:
            return ProviderStatus(SUCCEEDED, raw_status="done", progress=100, outputs=list(outputs))
        if state == FAILED:
            return ProviderStatus(FAILED, raw_status="failed", progress=progress, message=message,
                                  error_code="local_render_failed")
        return ProviderStatus(state, raw_status=state, progress=progress)

    def cancel(self, task):
        """Stop a pending or running render, from any process; True if it had not finished."""
        task_id = self._task_id(task)
        out_dir = self.output_dir(task_id)
        with self._lock:
            job = self._jobs.get(task_id)
            if job is not None:
                if job.state not in (QUEUED, RUNNING):
                    return False
                job.state = CANCELLED
                job.stop.set()
            elif not out_dir.is_dir() or (out_dir / DONE).exists() or (out_dir / CANCEL_MARKER).exists():
                return False  # never queued, finished, or already cancelled
        # The marker stops a render another process runs and keeps a restarted one from resuming.
        media.save_bytes_atomic(b"cancelled\n", out_dir / CANCEL_MARKER)
        return True

    def reconcile(self, task):
        """A render that died with its process certainly does not exist: it may be submitted again."""
        return None

    def close(self):
        """Stop every render and wait for the workers (shutdown, tests). Nothing is marked cancelled:
        an unfinished task is rendered again when it is next queried."""
        with self._lock:
            jobs, self._jobs = self._jobs, {}
            pool, self._pool = self._pool, None
        for job in jobs.values():
            job.stop.set()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)

    # ---- internals

    @staticmethod
    def _task_id(task):
        task_id = str(task.get("id") or "")
        # The id names a folder under DATA_DIR: refuse anything that could climb out of it.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", task_id):
            raise ProviderRejected(f"task id {task_id!r} is not usable as a folder name", provider="local")
        return task_id

    def _check(self, task):
        """Refuse, before queueing, what the render could never do."""
        kind, model = task.get("kind"), task.get("model")
        expected, role = {"video": ("local-motion", "first"), "image": ("local-filters", "reference")}.get(
            kind, (None, None))
        if expected is None or model not in (None, expected):
            raise ProviderRejected(f"the local engine has no {kind} model {model!r}", provider="local")
        path = self.input_path(task, role)
        if path is None or not path.is_file():
            what = "a first frame" if role == "first" else "a reference picture"
            raise ProviderRejected(f"the local engine needs {what}: it does not generate from text",
                                   provider="local")
        camera = (task.get("params") or {}).get("camera") or "auto"
        if kind == "video" and camera != "auto" and camera not in CAMERAS:
            raise ProviderRejected(f"unknown camera move {camera!r}", provider="local")

    def _recover(self, task):
        """Status of a task this process never rendered: from disk, or by rendering it again."""
        task_id = task["id"]
        status = self._status_from_disk(task_id)
        if status:
            return status
        try:
            self._check(task)
        except ProviderRejected as exc:
            return ProviderStatus(FAILED, raw_status="rejected", message=exc.message, error_code=exc.code)
        log.info("local task %s: not rendering here and no result on disk; rendering it again", task_id)
        self._start(task, fresh=False)
        return ProviderStatus(RUNNING, raw_status="restarted", progress=0)

    def _start(self, task, *, fresh):
        """Queue a render unless one is already pending or running for this task.

        `fresh` renders even when a result exists; otherwise (recovery) a result that another
        process finished while this one waited for the task's lock is adopted as it is.
        """
        task_id = task["id"]
        self.output_dir(task_id).mkdir(parents=True, exist_ok=True)  # cancel() reads it as "queued"
        with self._lock:
            job = self._jobs.get(task_id)
            if job is not None and job.state in (QUEUED, RUNNING):
                return
            job = self._jobs[task_id] = _Job(task_id)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="local-render")
            self._pool.submit(self._run, job, dict(task), fresh)

    def _status_from_disk(self, task_id):
        """CANCELLED from the marker, SUCCEEDED from a done.json whose files exist, else None."""
        out_dir = self.output_dir(task_id)
        if (out_dir / CANCEL_MARKER).exists():
            return ProviderStatus(CANCELLED, raw_status="cancelled")
        try:
            done = json.loads((out_dir / DONE).read_text())
            outputs = [RemoteOutput(kind=item["kind"], path=item["path"], meta=item.get("meta") or {})
                       for item in done["outputs"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not outputs or not all((self.data_dir / item.path).is_file() for item in outputs):
            return None
        return ProviderStatus(SUCCEEDED, raw_status="done", progress=100, outputs=outputs)

    @contextmanager
    def _render_lock(self, out_dir):
        """Hold the task's lock file: one renderer per task across processes, freed if we die."""
        with open(out_dir / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process still renders it
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _run(self, job, task, fresh):
        """Worker: render into a private staging folder, then publish the files and done.json."""
        out_dir = self.output_dir(job.task_id)
        marker = out_dir / CANCEL_MARKER
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            with self._render_lock(out_dir):
                with self._lock:
                    if job.stop.is_set():
                        return
                    job.state = RUNNING
                done = None if fresh else self._status_from_disk(job.task_id)
                if done and done.state == SUCCEEDED:
                    with self._lock:
                        job.state, job.progress, job.outputs = SUCCEEDED, 100, done.outputs
                    return
                (out_dir / DONE).unlink(missing_ok=True)
                for stale in out_dir.glob(".partial-*"):  # left by a process that died mid-render
                    shutil.rmtree(stale, ignore_errors=True)
                staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=out_dir))
                try:
                    outputs = self._render(job, task, staging, lambda: job.stop.is_set() or marker.exists())
                    self._publish(job, out_dir, staging, outputs)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            log.info("local task %s rendered: %d output(s)", job.task_id, len(outputs))
        except RenderCancelled:
            log.info("local task %s stopped", job.task_id)
            with self._lock:
                job.state = CANCELLED
        except Exception as exc:  # a worker must record every failure, or the task would hang
            log.exception("local task %s failed", job.task_id)
            with self._lock:
                if not job.stop.is_set():  # a failure while stopping is still a cancel
                    job.state, job.message = FAILED, f"local render failed: {exc}"

    def _render(self, job, task, staging, should_stop):
        """Run the task's model into `staging`; return [(file name, kind, meta)]."""
        params = task.get("params") or {}

        def progress(done, total):
            with self._lock:
                job.progress = min(99, done * 100 // total)

        if task["kind"] == "video":
            camera = params.get("camera") or "auto"
            if camera == "auto":
                camera = camera_from_prompt(params.get("prompt"))
            info = render_video(self.input_path(task, "first"), staging / "video.mp4",
                                tail=self.input_path(task, "tail"), camera=camera,
                                duration=int(params.get("duration") or 5),
                                progress=progress, should_stop=should_stop)
            return [("video.mp4", "video", {**info, "camera": camera})]
        fidelity = params.get("image_fidelity")
        paths = render_images(self.input_path(task, "reference"), staging, n=int(params.get("n") or 1),
                              aspect_ratio=params.get("aspect_ratio") or "1:1",
                              fidelity=0.5 if fidelity is None else fidelity,
                              progress=progress, should_stop=should_stop)
        return [(path.name, "image", {"look": LOOKS[i].__name__}) for i, path in enumerate(paths)]

    def _publish(self, job, out_dir, staging, outputs):
        """Move finished files into place and write done.json last, unless stopped meanwhile."""
        with self._lock:  # cancel() takes this lock too: either it wins, or the task succeeds
            if job.stop.is_set() or (out_dir / CANCEL_MARKER).exists():
                raise RenderCancelled
            results = []
            for name, kind, meta in outputs:
                os.replace(staging / name, out_dir / name)
                results.append(RemoteOutput(kind=kind, path=f"outputs/{job.task_id}/{name}", meta=meta))
            done = {"task_id": job.task_id, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "outputs": [{"kind": r.kind, "path": r.path, "meta": r.meta} for r in results]}
            media.save_bytes_atomic(json.dumps(done, indent=1).encode(), out_dir / DONE)
            job.state, job.progress, job.outputs = SUCCEEDED, 100, results
