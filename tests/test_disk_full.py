"""A full disk under DATA_DIR, for real: a 2 MB tmpfs filled to the last page.

Checks the guarantees of the store's append (whole or not at all, never acknowledged half
written) and of `POST /generate` (507 `disk_full`, no input folder, nothing half stored, and
work accepted again once space returns). Mounting needs root; elsewhere the tests skip, and
tests/test_task_store.py covers the same paths through the store's write seam.
"""

import errno
import os
import subprocess

import pytest

from app import create_app
from errors import InsufficientStorage
from task_store import TaskStore
from tests.conftest import b64, picture

PAGE = os.sysconf("SC_PAGE_SIZE")   # tmpfs counts space in whole pages


@pytest.fixture
def disk(tmp_path):
    """A fresh 2 MB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Filler:
    """One file that takes all the space on the disk but `leave` pages, and gives it back."""

    def __init__(self, disk):
        self.path = disk / "filler"

    def fill(self, leave=0):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            os.ftruncate(fd, os.fstat(fd).st_size - leave * PAGE)
        finally:
            os.close(fd)
        assert free_bytes(self.path.parent) == leave * PAGE

    def free(self):
        self.path.unlink()


def test_an_append_the_disk_cuts_short_is_rolled_back_and_raises(disk):
    store = TaskStore(disk / "data")
    # The first line ends 100 bytes short of a page: the next line's write gets 100 bytes in.
    head = {"id": "t0", "status": "succeeded", "pad": ""}
    head["pad"] = "x" * (PAGE - 100 - len(b'{"id":"t0","status":"succeeded","pad":""}\n'))
    store.create(head)
    assert store.path.stat().st_size == PAGE - 100
    filler = Filler(disk)
    filler.fill()

    with pytest.raises(InsufficientStorage):
        store.create({"id": "t1", "status": "queued", "pad": "y" * 1000})
    assert store.path.stat().st_size == PAGE - 100  # the 100 bytes that fitted are gone again
    with pytest.raises(InsufficientStorage):        # a status update is never silently lost
        store.update("t0", {"status": "queued", "pad": "z" * 2000})
    assert store.path.stat().st_size == PAGE - 100
    for view in (store, TaskStore(disk / "data")):  # every acknowledged record, no partial one
        assert view.list(limit=10) == ([head], 1) and view.unreadable == 0

    filler.free()
    store.create({"id": "t1", "status": "queued"})
    store.update("t0", {"status": "running"})
    fresh = TaskStore(disk / "data")
    assert [(r["id"], r["status"]) for r in fresh.list()[0]] == [("t1", "queued"), ("t0", "running")]


def _studio(disk, tmp_path, monkeypatch):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "DATA_DIR": str(disk / "data"), "BACKUP_DIR": str(tmp_path / "backups"),
                      "SECRET_KEY": "test"})
    return app, app.test_client()


def _task_folders(disk):
    inputs = disk / "data" / "inputs"
    return sorted(p.name for p in inputs.iterdir()) if inputs.exists() else []


# Where the disk runs out: the request's first write (the rate limiter's window file, one
# page), the spending ledger's line (one page), the picture, or the task record once the
# picture (whole pages) has been written.
ROOM = {"nothing": lambda png: 0, "limiter only": lambda png: 1, "limiter and ledger": lambda png: 2,
        "limiter, ledger and picture": lambda png: 2 + -(-len(png) // PAGE)}


@pytest.mark.parametrize("room", list(ROOM))
def test_generate_on_a_full_disk_answers_507_and_keeps_nothing(disk, tmp_path, monkeypatch, room):
    app, client = _studio(disk, tmp_path, monkeypatch)
    store = app.extensions["task_store"]
    png = picture()
    appends = []

    def write(fd, data):        # the real write, counted: proves which step met the full disk
        appends.append(len(data))
        return os.write(fd, data)

    store._write = write
    filler = Filler(disk)
    filler.fill(leave=ROOM[room](png))

    answer = client.post("/generate", json={"image": b64(png), "prompt": "harbour at dawn"})
    assert answer.status_code == 507, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == "disk_full" and "disk is full" in error["message"]
    # Which step met the full disk: the limiter wrote its file unless there was no room at all.
    assert (disk / "data" / "ratelimits.json").exists() == (room != "nothing")
    assert bool(appends) == (room == "limiter, ledger and picture"), "the full disk met another step"
    assert app.extensions["ledger"].spent_today("admin", "video") == 0        # nothing was spent
    assert _task_folders(disk) == []
    assert store.path.stat().st_size == 0
    assert len(TaskStore(disk / "data")) == 0 and client.get("/api/tasks").get_json()["total"] == 0

    filler.free()
    answer = client.post("/generate", json={"image": b64(png), "prompt": "harbour at dawn"})
    assert answer.status_code == 202, answer.get_json()
    task_id = answer.get_json()["task_id"]
    found = client.get(f"/api/tasks/{task_id}")
    assert found.status_code == 200 and found.get_json()["status"] == "queued"
    assert _task_folders(disk) == [task_id]
    assert TaskStore(disk / "data").get(task_id)["status"] == "queued"


def test_tasks_in_progress_say_the_disk_is_full_while_it_is(disk, tmp_path, monkeypatch):
    # With no room the pipeline cannot even record a problem on the task: the API says it instead.
    app, client = _studio(disk, tmp_path, monkeypatch)
    task_id = client.post("/generate", json={"image": b64(picture()), "prompt": "harbour"}).get_json()["task_id"]
    assert client.get(f"/api/tasks/{task_id}").get_json().get("problem") is None
    filler = Filler(disk)
    filler.fill()
    problem = client.get(f"/api/tasks/{task_id}").get_json()["problem"]
    assert problem["code"] == "disk_full" and "disk is full" in problem["message"]
    assert client.get("/api/tasks").get_json()["tasks"][0]["problem"]["code"] == "disk_full"
    filler.free()
    assert client.get(f"/api/tasks/{task_id}").get_json().get("problem") is None
