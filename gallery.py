"""The gallery: the `/gallery` page and the bulk download of results as one zip.

`GET /gallery` renders the page (its script lists succeeded tasks through /api/tasks, with the
tasks page's filters). `POST /api/tasks/download.zip` {"task_ids": [...]} streams a zip of those
tasks' result files. Every file is found through its task's record, exactly as /media serves it
(task_query.listed_files / open_listed): only the caller's own tasks (the admin's: any), never a
path from the request. Caps on the number of tasks and on the total size keep one request from
tying up the disk and the worker (ZIP_MAX_TASKS, ZIP_MAX_MB in config.py); the names inside are
the ones /media gives as attachment.
"""

import time
import zipfile
from typing import Annotated

from flask import Blueprint, Response, current_app, render_template
from pydantic import BaseModel, Field

import access
import fileio
import task_query
from clock import utcnow
from errors import N_, PayloadTooLarge, ValidationError
from validation import STRICT, Text, parse_body

bp = Blueprint("gallery", __name__)

_CHUNK = 1024 * 1024


@bp.get("/gallery")
def page():
    """The gallery page; the results are fetched from /api/tasks by the page's script."""
    return render_template("gallery.html", user_id=access.owner_id(), admin=access.is_admin())


class ZipRequest(BaseModel):
    model_config = STRICT
    task_ids: list[Annotated[Text, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=1000)


@bp.post("/api/tasks/download.zip")
def download_zip():
    """A zip of the result files of the given tasks (the caller's own; any unknown id is a 404)."""
    ids = list(dict.fromkeys(parse_body(ZipRequest).task_ids))     # each task once, in the order given
    most = current_app.config["ZIP_MAX_TASKS"]
    if len(ids) > most:
        raise PayloadTooLarge(N_("At most %(max)s tasks fit in one download; %(count)s were chosen."),
                              code="too_many_tasks", field="task_ids", params={"max": most, "count": len(ids)})
    store = current_app.extensions["task_store"]
    entries = _entries([access.task_or_404(store, task_id) for task_id in ids])
    stream = ZipStream(fileio.media_root(current_app.config["DATA_DIR"]), entries)
    name = f"studio_{utcnow():%Y%m%d_%H%M%S}_{len(ids)}-tasks.zip"
    response = Response(stream, mimetype="application/zip", direct_passthrough=True)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _entries(records):
    """(task, stored path, name in the zip, size) of every result file, within the size cap."""
    entries, total = [], 0
    data_dir = fileio.media_root(current_app.config["DATA_DIR"])
    for task in records:
        listed = task_query.listed_files(task)
        for out in task.get("outputs") or []:
            rel = out.get("path")
            if not rel or rel not in listed or not out.get("sha256"):      # not saved (yet)
                continue
            fh, info = task_query.open_listed(data_dir, "outputs", task["id"], rel)
            fh.close()
            total += info.st_size
            entries.append((task, rel, task_query.download_name(task, rel, rel.rsplit("/", 1)[-1])))
    if not entries:
        raise ValidationError(N_("None of these tasks has a saved result to download."), code="no_results",
                              field="task_ids", status=422)
    most = current_app.config["ZIP_MAX_MB"] * 1024 ** 2
    if total > most:
        raise PayloadTooLarge(N_("These results hold %(mb)s MB; one download takes at most %(max)s MB. "
                                 "Choose fewer."), code="download_too_large", field="task_ids",
                              params={"mb": f"{total / 1024 ** 2:.1f}", "max": f"{most / 1024 ** 2:.0f}"})
    return entries


class _Sink:
    """What zipfile writes to: kept until the stream hands it on (zipfile copes with no seek/tell)."""

    def __init__(self):
        self.parts = []

    def write(self, data):
        self.parts.append(bytes(data))
        return len(data)

    def flush(self):
        pass

    def drain(self):
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class ZipStream:
    """The zip as an iterable of chunks, written while it is sent (stored, not deflated: pictures
    and videos are compressed already). close() is the WSGI server's, also after a dropped client."""

    def __init__(self, data_dir, entries):
        self._data_dir = data_dir
        self._entries = entries
        self._open = None

    def __iter__(self):
        sink = _Sink()
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for task, rel, name in self._entries:
                yield from self._one(archive, sink, task, rel, name)
        yield sink.drain()

    def _one(self, archive, sink, task, rel, name):
        self._open, info = task_query.open_listed(self._data_dir, "outputs", task["id"], rel)
        with self._open as fh:
            entry = zipfile.ZipInfo(name, date_time=time.gmtime(info.st_mtime)[:6])
            with archive.open(entry, "w", force_zip64=info.st_size >= zipfile.ZIP64_LIMIT) as member:
                while chunk := fh.read(_CHUNK):
                    member.write(chunk)
                    yield sink.drain()
        self._open = None
        yield sink.drain()

    def close(self):
        if self._open is not None:
            self._open.close()
            self._open = None
