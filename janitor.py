"""The janitor: removes files under DATA_DIR that no task owns any more.

What it removes, each only when nothing in it changed for `min_age` (an hour), so nothing being
written right now is touched:

- `inputs/<id>/` and `outputs/<id>/` of ids the task store does not know (a create that failed
  after its pictures were written, a process killed mid-create, a delete cut short);
- `inputs/<id>/*.part`: uploads cut before they were renamed into place;
- `outputs/<id>/*.part` of tasks no longer downloading (a downloading task may resume from it);
- `tasks.jsonl.rewrite`, left by a compaction killed before its rename.

A pure function of the data directory, the store and the time; the pipeline (scheduler.py) runs it
every 30 minutes.
"""

import logging
import os
import shutil
from datetime import timedelta
from pathlib import Path

import fileio
from tasks import DOWNLOADING

log = logging.getLogger(__name__)

MIN_AGE = timedelta(hours=1)


def sweep(data_dir, store, now, min_age=MIN_AGE):
    """Remove orphaned files; returns the removed paths (relative to MEDIA_DIR, or to `data_dir`)."""
    data_dir = Path(data_dir)
    cutoff = now.timestamp() - min_age.total_seconds()
    removed, media = [], fileio.media_root(data_dir)
    for area in ("inputs", "outputs"):
        folder = media / area
        task_dirs = [d for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []
        for task_dir in task_dirs:
            removed += _sweep_task_dir(task_dir, store.get(task_dir.name), area, cutoff)
    removed = [p.relative_to(media).as_posix() for p in removed]
    rewrite = data_dir / "tasks.jsonl.rewrite"
    if rewrite.exists() and _mtime(rewrite) < cutoff:
        rewrite.unlink(missing_ok=True)
        removed.append(rewrite.name)
    if removed:
        log.info("janitor removed %d orphaned file(s) or folder(s): %s", len(removed), ", ".join(removed[:20]))
    return removed


def _sweep_task_dir(task_dir, task, area, cutoff):
    """What to remove of one task's folder: all of it when no task owns it, else stale .part files."""
    if task is None:
        if _newest_mtime(task_dir) < cutoff:
            shutil.rmtree(task_dir, ignore_errors=True)
            return [task_dir]
        return []
    if area == "outputs" and task["status"] == DOWNLOADING:
        return []               # its .part files are resumed downloads
    stale = [part for part in task_dir.glob("*.part") if _mtime(part) < cutoff]
    for part in stale:
        part.unlink(missing_ok=True)
    return stale


def _mtime(path):
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")         # gone meanwhile: nothing to do


def _newest_mtime(folder):
    newest = _mtime(folder)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            newest = max(newest, _mtime(Path(root) / name))
    return newest
