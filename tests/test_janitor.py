"""The janitor removes what no task owns, and only once it has been left alone for an hour."""

import os
from datetime import timedelta

import janitor
from task_store import TaskStore
from tasks import utcnow


def old(path, now, hours=2):
    stamp = (now - timedelta(hours=hours)).timestamp()
    os.utime(path, (stamp, stamp))


def make(path, now, hours=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    old(path, now, hours)
    old(path.parent, now, hours)
    return path


def test_janitor_removes_orphans_and_keeps_what_tasks_own(tmp_path):
    data = tmp_path / "data"
    store = TaskStore(data)
    now = utcnow()
    for task_id, status in (("t-done", "succeeded"), ("t-dl", "downloading")):
        store.create({"id": task_id, "status": status, "kind": "video", "provider": "local", "params": {}})
    kept = [make(data / "inputs/t-done/first.png", now), make(data / "outputs/t-done/video.mp4", now),
            make(data / "outputs/t-dl/video.mp4.part", now),            # a download that may resume
            make(data / "inputs/t-fresh/first.png", now, hours=0),      # a create in progress
            make(data / "inputs/t-done/tail.png.part", now, hours=0)]   # an upload still being written
    gone = [make(data / "inputs/t-done/first.png.part", now), make(data / "outputs/t-done/video.mp4.part", now),
            make(data / "inputs/t-lost/first.png", now), make(data / "outputs/t-lost/video.mp4", now),
            make(data / "tasks.jsonl.rewrite", now)]
    old(data / "inputs/t-done", now)
    removed = janitor.sweep(store.dir, store, now)
    assert sorted(removed) == sorted(["inputs/t-done/first.png.part", "outputs/t-done/video.mp4.part",
                                      "inputs/t-lost", "outputs/t-lost", "tasks.jsonl.rewrite"])
    assert all(p.exists() for p in kept) and not any(p.exists() for p in gone)
    assert janitor.sweep(data, store, now) == []
