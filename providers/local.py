"""The built-in local engine: an offline effects engine, not an AI model.

It needs no key and no network. `local-motion` makes a clip by moving a virtual camera over the
first frame (zoom, pan or tilt, eased, optionally blending into a tail frame) and encodes it with
`media.Mp4Writer`; `local-filters` makes variations of a reference picture by cropping it to the
asked aspect ratio and giving each copy a different OpenCV look. Renders run in a small thread pool:
OpenCV and x264 work outside the GIL (two renders in threads run as fast as in two processes).
Everything is deterministic, so a render lost with its process is simply rendered again. Per task,
`DATA_DIR/outputs/<id>/` holds the results, a `done.json` marker written last, a `.render.lock` that
one process holds while rendering, and a `.cancelled` marker so a cancel works from any process.
A render stops between frames when it is cancelled, when its task is deleted (its folder is gone;
what it had made is removed), when it runs longer than its limit, or when the provider is closed
(a stopping studio: the task is rendered again after the restart).

The running-time limit (LOCAL_MAX_RUNNING_MINUTES) is measured here on the monotonic clock: the
pipeline's own limit compares wall-clock times from the task record, which a clock step forward
would turn into a timeout of a render that ran for seconds.
"""

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import fileio
import media
from errors import N_, ProviderRejected, ProviderUnavailable
from providers import local_render as render
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
from providers.local_render import ASPECT_RATIOS, CAMERAS, LOOKS, RenderCancelled

log = logging.getLogger(__name__)

DONE, LOCK, CANCEL_MARKER = "done.json", ".render.lock", ".cancelled"


# ---- the provider


def _stopping():
    """What a closed engine answers: retryable, so the pipeline keeps the task for the next start."""
    return ProviderUnavailable(N_("the studio is stopping; the render starts after its restart"), provider="local")


@dataclass
class _Job:
    """One render as this process knows it; fields guarded by LocalProvider._lock."""

    task_id: str
    state: str = QUEUED
    progress: int = 0
    message: str | None = None
    error_code: str = "local_render_failed"
    outputs: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)  # checked between frames
    queued_at: float = 0.0  # LocalProvider.monotonic() when queued, for the running-time limit


class LocalProvider(Provider):
    """Renders locally in a lazily created thread pool; see the module docstring."""

    name = "local"

    def __init__(self, config):
        super().__init__(config)
        # In-process, asking costs nothing and progress should feel live: under the scheduler's
        # 1 s poll job, half a second means every round looks (with 1 s, a task due a hair after
        # a round waited for the next one).
        self.poll_interval = 0.5
        cores = os.cpu_count() or 1
        self.workers = max(1, min(int(config.get("LOCAL_WORKERS") or min(2, cores)), cores))
        # A task sent here starts at once: the dispatcher holds the rest as queued (with their place
        # in line) instead of handing them to a pool where they would wait, reported as submitted.
        self.max_concurrency = int(config.get("LOCAL_MAX_CONCURRENCY") or self.workers)
        self._lock = threading.Lock()
        self._jobs = {}
        self._pool = None  # created on the first submit: constructing the provider starts nothing
        self._closed = False
        # The engine enforces its limit itself, on the monotonic clock (see the module docstring),
        # so the pipeline's wall-clock limit is switched off for it.
        self.render_limit_seconds, self.max_running_seconds = self.max_running_seconds, float("inf")
        self.monotonic = time.monotonic

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
                 "aspect_ratios": [], "max_prompt": 2500,
                 # The prompt only picks the camera move for "auto"; nothing reads a negative prompt.
                 "uses_negative_prompt": False},
                {"id": "local-filters", "kind": "image",
                 "label": "Local filters (variations of your picture)",
                 "text_to_image": False, "image_to_image": True,
                 "aspect_ratios": list(ASPECT_RATIOS),
                 "n_min": 1, "n_max": len(LOOKS), "image_fidelity": True, "human_fidelity": False,
                 "image_reference": [], "negative_prompt_with_image": True, "max_prompt": 2500,
                 # The looks are fixed filters: the prompt is kept as the task's title, nothing more.
                 "uses_prompt": False, "uses_negative_prompt": False},
            ],
        }

    def output_dir(self, task_id):
        return fileio.media_root(self.data_dir) / "outputs" / task_id

    def submit(self, task):
        """Queue the render and return "local-<task id>"; submitting again renders again."""
        task_id = self._task_id(task)
        if self._closed:
            raise _stopping()
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
                if job.state in (QUEUED, RUNNING) and self.monotonic() - job.queued_at > self.render_limit_seconds:
                    job.stop.set()
                    job.state, job.message = FAILED, (f"the local render did not finish within "
                                                      f"{self.render_limit_seconds / 60:.0f} minutes")
                    job.error_code = "timeout"
                state, progress, message, outputs = job.state, job.progress, job.message, job.outputs
                error_code = job.error_code
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
                                  error_code=error_code)
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
        return

    def close(self):
        """Stop every render between frames, drop the pending ones and wait for the workers; later
        submits are refused as retryable. Nothing is marked cancelled or failed: the pipeline stops
        asking before it closes the provider, and an unfinished task is rendered again when the
        next process queries it."""
        with self._lock:
            self._closed = True
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
            raise ProviderRejected(N_("task id %(task_id)r is not usable as a folder name"), provider="local",
                                   params={"task_id": task_id})
        return task_id

    def _check(self, task):
        """Refuse, before queueing, what the render could never do."""
        kind, model = task.get("kind"), task.get("model")
        expected, role = {"video": ("local-motion", "first"), "image": ("local-filters", "reference")}.get(
            kind, (None, None))
        if expected is None or model not in (None, expected):
            raise ProviderRejected(N_("the local engine has no %(kind)s model %(model)r"), provider="local",
                                   params={"kind": kind, "model": model})
        path = self.input_path(task, role)
        if path is None or not path.is_file():
            what = N_("a first frame") if role == "first" else N_("a reference picture")
            raise ProviderRejected(N_("the local engine needs %(what)s: it does not generate from text"),
                                   provider="local",
                                   params={"what": what})
        camera = (task.get("params") or {}).get("camera") or "auto"
        if kind == "video" and camera != "auto" and camera not in CAMERAS:
            raise ProviderRejected(N_("unknown camera move %(camera)r"), provider="local",
                                   params={"camera": camera})

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
            if self._closed:
                raise _stopping()
            job = self._jobs.get(task_id)
            if job is not None and job.state in (QUEUED, RUNNING):
                return
            job = self._jobs[task_id] = _Job(task_id, queued_at=self.monotonic())
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="local-render")
            try:
                self._pool.submit(self._run, job, dict(task), fresh)
            except RuntimeError:  # the interpreter is exiting and has shut every pool: not the task's fault
                del self._jobs[task_id]
                raise _stopping() from None

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
        root = fileio.media_root(self.data_dir)
        if not outputs or not all((root / item.path).is_file() for item in outputs):
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
        marker, lock = out_dir / CANCEL_MARKER, out_dir / LOCK
        try:
            if not out_dir.is_dir():  # _start made it: the task was deleted while it waited
                raise RenderCancelled
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
                    # Deleting a task removes its folder, lock file first among the files it can.
                    outputs = self._render(job, task, staging,
                                           lambda: job.stop.is_set() or marker.exists() or not lock.exists())
                    self._publish(job, out_dir, staging, outputs)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            log.info("local task %s rendered: %d output(s)", job.task_id, len(outputs))
        except RenderCancelled:
            log.info("local task %s stopped", job.task_id)
            with self._lock:
                job.state = CANCELLED
            if not lock.exists():  # deleted meanwhile: remove whatever the render left behind
                shutil.rmtree(out_dir, ignore_errors=True)
        except Exception as exc:  # a worker must record every failure, or the task would hang
            log.exception("local task %s failed", job.task_id)
            with self._lock:
                if not job.stop.is_set():  # a failure while stopping is still a cancel
                    job.state, job.message = FAILED, _failure_message(exc)
                    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        job.error_code = "disk_full"

    def _render(self, job, task, staging, should_stop):
        """Run the task's model into `staging`; return [(file name, kind, meta)]."""
        params = task.get("params") or {}

        def progress(done, total):
            with self._lock:
                job.progress = min(99, done * 100 // total)

        if task["kind"] == "video":
            camera = params.get("camera") or "auto"
            if camera == "auto":
                camera = render.camera_from_prompt(params.get("prompt"))
            info = render.render_video(self.input_path(task, "first"), staging / "video.mp4",
                                tail=self.input_path(task, "tail"), camera=camera,
                                duration=int(params.get("duration") or 5),
                                progress=progress, should_stop=should_stop)
            return [("video.mp4", "video", {**info, "camera": camera})]
        fidelity = params.get("image_fidelity")
        paths = render.render_images(self.input_path(task, "reference"), staging, n=int(params.get("n") or 1),
                              aspect_ratio=params.get("aspect_ratio") or "1:1",
                              fidelity=0.5 if fidelity is None else fidelity,
                              progress=progress, should_stop=should_stop)
        return [(path.name, "image", {"look": LOOKS[i].__name__}) for i, path in enumerate(paths)]

    def _publish(self, job, out_dir, staging, outputs):
        """Move finished files into place and write done.json last, unless stopped meanwhile."""
        with self._lock:  # cancel() takes this lock too: either it wins, or the task succeeds
            if job.stop.is_set() or (out_dir / CANCEL_MARKER).exists() or not (out_dir / LOCK).exists():
                raise RenderCancelled
            results = []
            for name, kind, meta in outputs:
                os.replace(staging / name, out_dir / name)
                results.append(RemoteOutput(kind=kind, path=f"outputs/{job.task_id}/{name}", meta=meta))
            done = {"task_id": job.task_id, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "outputs": [{"kind": r.kind, "path": r.path, "meta": r.meta} for r in results]}
            media.save_bytes_atomic(json.dumps(done, indent=1).encode(), out_dir / DONE)
            job.state, job.progress, job.outputs = SUCCEEDED, 100, results


def _failure_message(exc):
    """What the task shows: never the exception's text, which names files on the studio's disk."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "The studio's disk was full while rendering: free some space, then retry the task."
    return f"The local render failed ({type(exc).__name__}); the server log has the details."
