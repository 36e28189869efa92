"""Tests for task_store: cross-process safety with real processes, crash safety under SIGKILL,
compaction, listing, and the small API contracts.

Processes are real interpreters running `tests/store_worker.py`, because the guarantees under
test (flock, one index per process, kill -9) do not exist between threads of one process.
"""

import contextlib
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import task_backup
import tasks
from app import StartupRefused, create_app
from errors import InsufficientStorage
from task_store import StoreCorrupt, TaskStore

ROOT = Path(__file__).resolve().parent.parent


# ---- helpers -------------------------------------------------------------------------------

def worker(*args, **popen_kwargs):
    """Start `python -m tests.store_worker ARGS` from the repo root."""
    cmd = [sys.executable, "-m", "tests.store_worker", *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, text=True, **popen_kwargs)


def run_worker(*args):
    """Run a worker command to completion and return its stdout."""
    cmd = [sys.executable, "-m", "tests.store_worker", *map(str, args)]
    done = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_ops(data_dir, *ops):
    """Apply store operations in another process; returns their results."""
    return json.loads(run_worker("ops", data_dir, json.dumps(ops)))


def kill_if_alive(proc):
    if proc.poll() is None:
        proc.kill()


def all_records(store):
    return store.list(limit=10**6)[0]


def plain(record):
    """`record` without the `updated_at` stamp that update() adds."""
    return None if record is None else {k: v for k, v in record.items() if k != "updated_at"}


def file_records(path):
    """Every line of a JSON-lines file, parsed; fails if any line is not complete JSON."""
    data = Path(path).read_bytes()
    assert data == b"" or data.endswith(b"\n"), "file does not end with a newline"
    return [json.loads(line) for line in data.splitlines()]


# ---- concurrency ---------------------------------------------------------------------------

def test_concurrent_read_modify_write_loses_no_update(tmp_path):
    store = TaskStore(tmp_path)
    ids = [f"shared-{i}" for i in range(5)]
    for task_id in ids:
        store.create({"id": task_id, "tokens": []})

    with contextlib.ExitStack() as stack:
        procs = []
        for w in range(4):
            proc = stack.enter_context(worker("rmw", tmp_path, w, 250, ",".join(ids),
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            stack.callback(kill_if_alive, proc)  # runs before Popen.__exit__ waits on it
            procs.append(proc)
        # Release all four only once every one has loaded: their updates overlap in time.
        for proc in procs:
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.close()
        for proc in procs:
            assert proc.stdout.read() == "done\n"
            assert proc.wait(timeout=60) == 0

    wanted = sorted(f"w{w}-{i:03d}" for w in range(4) for i in range(250))
    for view in (store, TaskStore(tmp_path)):  # the old index catches up; a new one agrees
        per_task = {task_id: view.get(task_id)["tokens"] for task_id in ids}
        assert sorted(t for tokens in per_task.values() for t in tokens) == wanted
        for tokens in per_task.values():
            for w in range(4):  # updates were serialised, so each worker's order survives
                mine = [t for t in tokens if t.startswith(f"w{w}-")]
                assert mine == sorted(mine)
    assert len(file_records(store.path)) == 5 + 1000
    assert store.garbage_ratio() == pytest.approx(1 - 5 / 1005)


def test_second_process_sees_writes_and_deletes(tmp_path):
    store = TaskStore(tmp_path)
    store.create({"id": "t1", "status": "queued"})
    store.create({"id": "t2", "status": "queued"})

    run_ops(tmp_path, ["create", {"id": "t3", "status": "queued"}],
            ["update", "t1", {"status": "running", "progress": 40}], ["delete", "t2"])
    assert plain(store.get("t1")) == {"id": "t1", "status": "running", "progress": 40}
    assert store.get("t2") is None
    assert store.get("t3") == {"id": "t3", "status": "queued"}
    assert len(store) == 2
    assert [r["id"] for r in all_records(store)] == ["t3", "t1"]

    # And the other way round; the update builds on the record the other process wrote.
    store.update("t3", lambda r: r.update(status="failed", seen=r["status"]))
    t3, t2, count = run_ops(tmp_path, ["get", "t3"], ["get", "t2"], ["__len__"])
    assert (plain(t3), t2, count) == ({"id": "t3", "status": "failed", "seen": "queued"}, None, 2)


def test_replaced_file_is_detected_by_inode(tmp_path):
    store = TaskStore(tmp_path)
    for i in range(3):
        store.create({"id": f"t{i}", "n": 0})
    store.update("t0", {"n": 1})

    # Another process compacts: new inode. Our index follows and our next write lands in it.
    inode = os.stat(store.path).st_ino
    assert run_ops(tmp_path, ["compact"]) == [[4, 3]]
    assert os.stat(store.path).st_ino != inode
    assert store.garbage_ratio() == 0.0
    store.update("t1", {"n": 5})
    assert [r["n"] for r in file_records(store.path)] == [1, 0, 0, 5]
    assert plain(run_ops(tmp_path, ["get", "t1"])[0]) == {"id": "t1", "n": 5}

    # A restore swaps in a *bigger* file: its size says nothing, only the inode does.
    restored = tmp_path / "restore.tmp"
    restored.write_text("".join(json.dumps({"id": f"r{i:02d}", "pad": "x" * 100}) + "\n"
                                for i in range(20)))
    assert restored.stat().st_size > store.path.stat().st_size
    os.replace(restored, store.path)
    assert len(store) == 20
    assert store.get("t0") is None
    assert store.get("r07") == {"id": "r07", "pad": "x" * 100}


# ---- crash safety --------------------------------------------------------------------------

def _wait_for_ready(log_path, proc):
    deadline = time.monotonic() + 20
    while not log_path.read_text().startswith("ready\n"):
        assert proc.poll() is None, f"writer exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "writer never got ready"
        time.sleep(0.001)


def _applied(state, op, task_id, value):
    state = dict(state)
    if op == "delete":
        state.pop(task_id, None)
    elif op in ("create", "update"):
        state[task_id] = value
    return state


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path):
    data = tmp_path / "data"
    rng = random.Random(20261122)
    expected = {}       # id -> value, as the store must hold it after the kill
    acknowledged = killed_mid_call = 0
    for round_no in range(50):
        log_path = tmp_path / f"writer-{round_no}.log"
        with open(log_path, "w") as out, worker("crash", data, round_no, stdout=out) as proc:
            try:
                _wait_for_ready(log_path, proc)
                time.sleep(rng.uniform(0.003, 0.1))
            finally:
                proc.kill()

        # Only whole lines count: the kill may cut the last one.
        pending = None
        for line in log_path.read_text().split("\n")[1:-1]:
            phase, op, task_id, value = line.split(" ")
            if phase == "B":
                pending = (op, task_id, value)
            else:
                assert pending == (op, task_id, value)
                expected = _applied(expected, op, task_id, value)
                acknowledged += 1
                pending = None

        # Must load whatever the kill left behind: a kill between an append and its mark, or
        # inside a compaction, never makes the store look truncated (StoreCorrupt).
        store = TaskStore(data)
        assert not (data / "tasks.jsonl.rewrite").exists()
        assert int((data / "tasks.length").read_bytes()) <= store.path.stat().st_size
        got = {r["id"]: r["value"] for r in all_records(store)}
        assert len(got) == len(store)
        # The call in flight when the kill landed may or may not have reached the disk.
        allowed = [expected] + ([_applied(expected, *pending)] if pending else [])
        assert got in allowed, (
            f"round {round_no}: in flight {pending}; "
            f"missing {sorted(expected.keys() - got.keys())[:5]}, "
            f"extra {sorted(got.keys() - expected.keys())[:5]}, "
            f"changed {[k for k in expected.keys() & got.keys() if expected[k] != got[k]][:5]}")
        killed_mid_call += pending is not None
        expected = got

    assert acknowledged > 200, "the writer barely wrote; the test proved little"
    assert killed_mid_call > 20, "kills mostly landed between calls; the test proved little"
    # Whatever the last kill left, the next write leaves a file that parses line by line.
    store = TaskStore(data)
    store.create({"id": "zz-final", "value": "final"})
    on_disk = {}
    for record in file_records(store.path):
        on_disk = _applied(on_disk, "delete" if record.get("_deleted") else "update",
                           record["id"], record.get("value"))
    assert on_disk == {**expected, "zz-final": "final"}


@pytest.mark.parametrize("tail", [b'{"id":"torn","value":"half a li', b'{"id":"torn","value":9}'])
def test_torn_last_line_is_ignored_then_truncated(tmp_path, tail):
    store = TaskStore(tmp_path)
    for i in range(3):
        store.create({"id": f"t{i}", "value": i})
    with open(store.path, "ab") as f:
        f.write(tail)  # a writer died mid-line: no newline, so never committed

    fresh = TaskStore(tmp_path)
    assert len(fresh) == 3 and fresh.get("torn") is None
    assert len(store) == 3 and store.get("torn") is None

    fresh.create({"id": "t3", "value": 3})  # truncates the torn tail, then appends
    assert file_records(store.path) == [{"id": f"t{i}", "value": i} for i in range(4)]
    assert store.get("t3") == {"id": "t3", "value": 3}
    assert len(TaskStore(tmp_path)) == 4


# ---- compaction ----------------------------------------------------------------------------

def test_compaction_keeps_exactly_the_live_records(tmp_path):
    store = TaskStore(tmp_path)
    for i in range(100):
        store.create({"id": f"t{i:03d}", "status": "queued", "n": 0})
    for n in (1, 2, 3):
        for i in range(100):
            store.update(f"t{i:03d}", {"n": n})
    for i in range(0, 100, 3):
        store.delete(f"t{i:03d}")
    live = all_records(store)
    assert len(live) == 66
    assert store.garbage_ratio() == pytest.approx(1 - 66 / 434)
    assert store.line_count() == 434

    inode = os.stat(store.path).st_ino
    assert store.compact() == (434, 66)
    assert os.stat(store.path).st_ino != inode
    assert file_records(store.path) == live[::-1]  # one line per live record, oldest first
    assert all_records(store) == live
    assert all_records(TaskStore(tmp_path)) == live
    assert store.garbage_ratio() == 0.0
    assert store.line_count() == 66
    assert not store.path.with_name("tasks.jsonl.compact").exists()

    store.update("t001", {"n": 9})
    assert TaskStore(tmp_path).get("t001")["n"] == 9
    assert store.compact() == (67, 66)


def test_compaction_is_safe_while_another_process_reads(tmp_path):
    store = TaskStore(tmp_path)
    for i in range(300):
        store.create({"id": f"a-{i:04d}", "status": "stable", "value": i})
    for i in range(100):
        store.create({"id": f"c-{i:04d}", "status": "churn", "value": 0})

    with worker("reader", tmp_path, 300, 30, stdout=subprocess.PIPE) as reader:
        try:
            assert reader.stdout.readline() == "ready\n"
            for k in range(30):
                store.create({"id": f"n-{k:04d}", "status": "new", "value": k})
                for j in range(5):
                    store.update(f"c-{50 + (5 * k + j) % 50:04d}", {"value": k})
                store.delete(f"c-{k:04d}")
                store.compact()
                time.sleep(0.02)  # let the reader run a few loops on this generation
            # The reader stops only once it sees a record written after the last compaction.
            store.create({"id": "z-stop", "status": "new", "value": -1})
            report = json.loads(reader.stdout.readline())
            assert reader.wait(timeout=30) == 0
        finally:
            kill_if_alive(reader)

    assert report["problems"] == []
    assert report["swaps"] >= 10, "the reader did not overlap the compactions"
    assert report["seen_new"] == [f"n-{k:04d}" for k in range(30)]
    assert report["final_ids"] == sorted(r["id"] for r in all_records(store))


# ---- listing -------------------------------------------------------------------------------

STATUSES = ["queued", "submitted", "running", "downloading", "succeeded", "failed", "cancelled"]
PROVIDERS = ["local", "kling", "ai302", "dashscope", "liblib"]
PROMPTS = ["A Cat on a roof", "dog in the rain", "CATHEDRAL at dusk", None, "caterpillar", ""]


def _task(i):
    """Task i, created at 10:15 plus i*37.5 s; the cycles make every filter combination occur."""
    at = datetime(2026, 11, 22, 10, 15, tzinfo=UTC) + timedelta(milliseconds=37_500 * i)
    task_id = f"{at:%Y%m%dT%H%M%S}{at.microsecond // 1000:03d}Z-{i * 7919 % 16**6:06x}"
    params = {"prompt": PROMPTS[i % 6]} if i % 6 != 5 else None
    return {"id": task_id, "kind": ["video", "image"][i % 2], "provider": PROVIDERS[i % 5],
            "status": STATUSES[i % 7], "owner": ["u1", "u2", None][i % 3], "params": params}


def _expected(records, status=None, kind=None, provider=None, owner=None, text=None):
    statuses = {status} if isinstance(status, str) else set(status or ())
    return [r for r in sorted(records, key=lambda r: r["id"], reverse=True)
            if (not statuses or r["status"] in statuses)
            and (kind is None or r["kind"] == kind)
            and (provider is None or r["provider"] == provider)
            and (owner is None or r["owner"] == owner)
            and (text is None or text.lower() in ((r["params"] or {}).get("prompt") or "").lower())]


FILTERS = [
    {},
    {"status": "queued"},
    {"status": ["queued", "running"]},
    {"status": ("failed", "cancelled", "succeeded")},
    {"kind": "image"},
    {"provider": "kling"},
    {"owner": "u2"},
    {"text": "CAT"},
    {"text": "dusk"},
    {"status": ["queued", "running"], "kind": "video", "provider": "kling", "text": "cAt"},
    {"status": "queued", "owner": "u1", "kind": "image"},
    {"provider": "nobody"},
]


def _check_listing(store, records):
    for filters in FILTERS:
        want = _expected(records, **filters)
        if filters and filters != {"provider": "nobody"}:
            assert 0 < len(want) < len(records), filters  # every filter must really filter
        got = []
        for offset in range(0, len(want), 7):
            page, total = store.list(offset=offset, limit=7, **filters)
            assert total == len(want), filters
            assert page == want[offset:offset + 7], (filters, offset)  # so pages never overlap
            got += page
        assert got == want, filters
        for offset in (len(want), len(want) + 100):
            assert store.list(offset=offset, limit=7, **filters) == ([], len(want)), filters
        assert store.list(**filters) == (want[:50], len(want)), filters  # default page of 50


def test_listing_newest_first_with_filters_and_paging(tmp_path):
    early = TaskStore(tmp_path)  # open before the writes: it learns them by catching up
    records = [_task(i) for i in range(120)]
    for record in random.Random(7).sample(records, len(records)):  # created out of order
        early.create(record)
    for store in (early, TaskStore(tmp_path)):
        _check_listing(store, records)

    # Changes reach listings: status moves, deletes, and a late record with an old id.
    for record in records[::4]:
        record.update(early.update(record["id"], {"status": "succeeded"}))  # with its stamp
    for record in records[1::10]:
        early.delete(record["id"])
    records = [r for r in records if r not in records[1::10]]
    old = _task(500) | {"id": "20261122T090000000Z-000001"}
    early.create(old)
    records.append(old)
    for store in (early, TaskStore(tmp_path)):
        _check_listing(store, records)
    assert early.ids_with_status(["queued"]) == [
        r["id"] for r in sorted(records, key=lambda r: r["id"]) if r["status"] == "queued"]


# ---- contracts -----------------------------------------------------------------------------

def test_failed_update_writes_nothing(tmp_path):
    store = TaskStore(tmp_path)
    store.create({"id": "t1", "status": "queued", "tags": ["a"]})
    on_disk = store.path.read_bytes()

    def half_done(record):
        record["tags"].append("b")
        record["status"] = "running"
        raise ZeroDivisionError("changed my mind")

    with pytest.raises(ZeroDivisionError):
        store.update("t1", half_done)
    with pytest.raises(KeyError):
        store.update("missing", {"status": "running"})
    assert store.delete("missing") is None
    with pytest.raises(KeyError):
        store.create({"id": "t1", "status": "other"})

    assert store.path.read_bytes() == on_disk
    assert store.get("t1") == {"id": "t1", "status": "queued", "tags": ["a"]}
    assert TaskStore(tmp_path).get("t1") == {"id": "t1", "status": "queued", "tags": ["a"]}


def test_update_returns_the_stored_record_and_keeps_the_id(tmp_path):
    store = TaskStore(tmp_path)
    record = store.create({"id": "t1", "status": "queued"})
    record["status"] = "mutated by the caller"  # the store keeps its own copy
    before = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    stored = store.update("t1", {"status": "running", "id": "other", "updated_at": "1999"})
    after = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert plain(stored) == {"id": "t1", "status": "running"}
    # ISO 8601 UTC with milliseconds, so stamps compare correctly as strings.
    assert before <= stored["updated_at"] <= after
    assert datetime.fromisoformat(stored["updated_at"]).utcoffset() == timedelta(0)
    fetched = store.get("t1")
    fetched["status"] = "mutated again"
    assert store.get("t1") == stored
    assert store.get("other") is None
    assert store.update("t1", {"n": 1})["updated_at"] >= stored["updated_at"]


def test_duplicate_create_is_refused_even_if_another_process_made_it(tmp_path):
    store = TaskStore(tmp_path)
    run_ops(tmp_path, ["create", {"id": "t1", "by": "other"}])
    with pytest.raises(KeyError):
        store.create({"id": "t1", "by": "me"})  # our index had not seen it yet
    assert store.get("t1") == {"id": "t1", "by": "other"}
    assert len(file_records(store.path)) == 1


def test_garbage_ratio_and_snapshot(tmp_path):
    store = TaskStore(tmp_path)
    assert store.garbage_ratio() == 0.0
    for i in range(10):
        store.create({"id": f"t{i}", "n": 0})
    assert store.garbage_ratio() == 0.0
    updated = [store.update(f"t{i}", {"n": 1}) for i in range(10)]
    assert store.garbage_ratio() == pytest.approx(0.5)
    for i in range(5):
        store.delete(f"t{i}")
    assert store.garbage_ratio() == pytest.approx(1 - 5 / 25)

    log_before = store.path.read_bytes()
    dest = tmp_path / "snap.jsonl"
    assert store.snapshot(dest) == 5
    assert file_records(dest) == updated[5:]
    assert store.path.read_bytes() == log_before
    # A snapshot is a valid store directory's log in its own right.
    other = tmp_path / "restored"
    other.mkdir()
    os.replace(dest, other / "tasks.jsonl")
    assert all_records(TaskStore(other)) == all_records(store)


# ---- regressions ---------------------------------------------------------------------------

def test_one_odd_record_does_not_make_the_store_unloadable(tmp_path):
    """A non-string prompt (or non-dict params) must neither raise nor brick later loads."""
    store = TaskStore(tmp_path)
    store.create({"id": "a", "params": {"prompt": "ok"}})
    store.create({"id": "b", "params": {"prompt": 123}})
    store.create({"id": "c", "params": "not a dict", "owner": 7})
    fresh = TaskStore(tmp_path)
    assert fresh.get("a") == {"id": "a", "params": {"prompt": "ok"}}
    assert len(fresh) == 3 and fresh.list(text="ok")[1] == 1


def test_forked_processes_do_not_share_the_lock(tmp_path):
    """flock belongs to the open file description: a forked child must open its own."""
    assert run_worker("forkrace", tmp_path) == "1000\n"


# ---- short writes and a full disk ------------------------------------------------------------

class FillingDisk:
    """Stands in for `TaskStore._write`: the disk fills up after `room` more bytes. A write that
    does not fit is short (as a real one is); the next one raises ENOSPC."""

    def __init__(self, room):
        self.room = room
        self.calls = 0

    def __call__(self, fd, data):
        self.calls += 1
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = os.write(fd, bytes(data[:self.room]))
        self.room -= written
        return written


def test_append_cut_short_by_a_full_disk_is_rolled_back_and_raises(tmp_path):
    store = TaskStore(tmp_path)
    for i in range(3):
        store.create({"id": f"t{i}", "value": i})
    before = store.path.read_bytes()

    store._write = disk = FillingDisk(room=40)      # half of the next line fits
    with pytest.raises(InsufficientStorage) as full:
        store.create({"id": "t3", "value": 3, "pad": "x" * 60})
    assert disk.calls == 2, "the short write was not continued"
    assert full.value.status == 507 and full.value.code == "disk_full"
    assert "disk is full" in full.value.message
    assert full.value.errno == errno.ENOSPC and isinstance(full.value, OSError)
    assert store.path.read_bytes() == before        # rolled back: no partial line left
    assert store.get("t3") is None and len(store) == 3
    with pytest.raises(InsufficientStorage):         # an update is never silently lost either
        store.update("t1", {"value": "changed"})
    assert store.get("t1") == {"id": "t1", "value": 1}
    assert store.path.read_bytes() == before
    fresh = TaskStore(tmp_path)                      # every acknowledged record, no partial one
    assert all_records(fresh) == [{"id": f"t{i}", "value": i} for i in (2, 1, 0)]

    del store._write                                 # space again: the next writes go through
    store.create({"id": "t3", "value": 3})
    store.update("t1", {"value": "changed"})
    assert plain(TaskStore(tmp_path).get("t1")) == {"id": "t1", "value": "changed"}
    assert [r["id"] for r in file_records(store.path)] == ["t0", "t1", "t2", "t3", "t1"]


def test_short_writes_are_continued_until_the_line_is_whole(tmp_path):
    store = TaskStore(tmp_path)
    calls = []

    def dribble(fd, data):      # a disk (or signal) that accepts 7 bytes per call
        calls.append(len(data))
        return os.write(fd, bytes(data[:7]))

    store._write = dribble
    record = {"id": "t1", "value": "v" * 50}
    store.create(record)
    assert len(calls) > 5
    assert file_records(store.path) == [record]
    assert TaskStore(tmp_path).get("t1") == record


def test_a_failed_fsync_rolls_the_append_back(tmp_path, monkeypatch):
    store = TaskStore(tmp_path)
    store.create({"id": "t1", "value": 1})
    before = store.path.read_bytes()
    real_fsync = os.fsync
    failing = {store.path.stat().st_ino}

    def fsync(fd):
        if os.fstat(fd).st_ino in failing:
            failing.clear()         # the rollback's own fsync works
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as failed:
        store.create({"id": "t2", "value": 2})
    assert failed.value.errno == errno.EIO and not isinstance(failed.value, InsufficientStorage)
    assert store.path.read_bytes() == before
    assert store.get("t2") is None and TaskStore(tmp_path).get("t2") is None


def test_another_process_that_read_a_rolled_back_line_drops_it(tmp_path, monkeypatch):
    """A line can be whole in the file when its fsync fails: a reader may index it before the
    rollback, and a line of the same length may then take its place (a retried create)."""
    writer, reader = TaskStore(tmp_path), TaskStore(tmp_path)   # two indexes, as two processes
    writer.create({"id": "t1", "value": 1})
    real_fsync, seen = os.fsync, []

    def write_then_let_the_reader_look(fd, data):
        written = os.write(fd, data)
        seen.append(reader.get("t2"))        # whole and newline-terminated: the reader indexes it
        return written

    def failing_fsync(fd):
        monkeypatch.setattr(os, "fsync", real_fsync)
        raise OSError(errno.EIO, "Input/output error")

    writer._write = write_then_let_the_reader_look
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        writer.create({"id": "t2", "value": "phantom"})
    assert seen == [{"id": "t2", "value": "phantom"}]
    del writer._write
    writer.create({"id": "t3", "value": "realone"})     # exactly as long as the rolled-back line
    assert file_records(writer.path) == [{"id": "t1", "value": 1}, {"id": "t3", "value": "realone"}]
    assert reader.get("t2") is None and reader.get("t3") == {"id": "t3", "value": "realone"}
    assert [r["id"] for r in all_records(reader)] == ["t3", "t1"]


# ---- truncation: the high-water mark ---------------------------------------------------------

def _store_with_history(data_dir, n=10):
    store = TaskStore(data_dir)
    for i in range(n):
        store.create({"id": f"t{i:02d}", "status": "queued"})
    for i in range(n):
        store.update(f"t{i:02d}", {"status": "succeeded"})
    return store


@pytest.mark.parametrize("share", [0, 0.6])
def test_truncated_store_refuses_to_start_naming_the_backup(tmp_path, share, monkeypatch):
    data, backups = tmp_path / "data", tmp_path / "backups"
    store = _store_with_history(data)
    good = task_backup.take_backup(store, backups)
    size = store.path.stat().st_size
    os.truncate(store.path, int(size * share))      # truncate -s 0 / a cut at 60 %

    with pytest.raises(StoreCorrupt, match="truncated"):
        TaskStore(data)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    config = {"TESTING": True, "DATA_DIR": str(data), "BACKUP_DIR": str(backups), "SECRET_KEY": "t"}
    with pytest.raises(StartupRefused) as refused:
        create_app(config)
    assert "truncated" in str(refused.value) and str(good) in str(refused.value)
    # A process already running refuses to write over it (that would move the mark down).
    with pytest.raises(StoreCorrupt):
        store.update("t00", {"status": "queued"})
    with pytest.raises(StoreCorrupt):
        store.compact()
    assert store.path.stat().st_size == int(size * share)

    task_backup.restore(data, backups, good)         # the way out the refusal names
    restored = create_app(config).extensions["task_store"]
    assert {r["status"] for r in all_records(restored)} == {"succeeded"} and len(restored) == 10


def test_a_store_killed_between_append_and_mark_still_loads(tmp_path):
    store = _store_with_history(tmp_path, 3)
    done = subprocess.run([sys.executable, "-m", "tests.store_worker", "die-before-mark", tmp_path, "t99"],
                          cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    mark = int(store.mark_path.read_bytes())
    assert mark < store.path.stat().st_size          # the mark lags the log, as after the kill
    fresh = TaskStore(tmp_path)
    assert fresh.get("t99") == {"id": "t99", "value": "unacknowledged"} and len(fresh) == 4
    fresh.update("t00", {"status": "queued"})         # writing catches the mark up
    assert int(store.mark_path.read_bytes()) == store.path.stat().st_size


def test_a_compaction_killed_before_the_swap_leaves_a_loadable_store(tmp_path):
    store = _store_with_history(tmp_path, 5)
    before = all_records(store)
    done = subprocess.run([sys.executable, "-m", "tests.store_worker", "die-in-compaction", tmp_path],
                          cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert store.rewrite_path.exists()               # what a killed compaction leaves behind
    assert int(store.mark_path.read_bytes()) < store.path.stat().st_size

    fresh = TaskStore(tmp_path)                      # the mark was lowered first: no false refusal
    assert not store.rewrite_path.exists()           # ... and the leftover rewrite is gone
    assert all_records(fresh) == before
    assert fresh.compact() == (10, 5)
    assert all_records(TaskStore(tmp_path)) == before


def test_compaction_resets_the_mark_and_the_check_holds_after_it(tmp_path):
    store = _store_with_history(tmp_path, 20)
    assert int(store.mark_path.read_bytes()) == store.path.stat().st_size
    store.compact()
    size = store.path.stat().st_size
    assert int(store.mark_path.read_bytes()) == size
    assert len(TaskStore(tmp_path)) == 20            # a shorter log after compaction is fine
    # A restore of a bigger backup moves the mark up too.
    store.replace_all([{"id": f"r{i:03d}", "pad": "x" * 100} for i in range(50)])
    assert int(store.mark_path.read_bytes()) == store.path.stat().st_size > size
    os.truncate(store.path, store.path.stat().st_size * 6 // 10)
    with pytest.raises(StoreCorrupt):
        TaskStore(tmp_path)
    assert 0 < len(TaskStore(tmp_path, check=False)) < 50   # what is left can still be read


def test_leftover_rewrite_is_removed_at_open_and_a_store_without_a_mark_gets_one(tmp_path):
    store = _store_with_history(tmp_path, 3)
    store.close()
    rewrite = tmp_path / "tasks.jsonl.rewrite"
    rewrite.write_bytes(b'{"id":"half a compac')    # a compaction killed while writing
    (tmp_path / "tasks.length").unlink(missing_ok=True)   # a store written before marks existed
    fresh = TaskStore(tmp_path)
    assert not rewrite.exists()
    assert int(store.mark_path.read_bytes()) == store.path.stat().st_size
    assert len(fresh) == 3
    # A deleted log is app.py's to judge against the backups; a new one starts a new mark.
    store.path.unlink()
    assert len(TaskStore(tmp_path)) == 0
    assert int(store.mark_path.read_bytes()) == 0


# ---- task ids ------------------------------------------------------------------------------

ID_FORMAT = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{6}$")


def test_task_ids_strictly_increase_in_creation_order_and_are_unique():
    ids = [tasks.new_task_id() for _ in range(5000)]
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False)), "ids out of creation order"
    assert all(ID_FORMAT.match(i) for i in ids)
    first = datetime.strptime(ids[0][:18] + "000", "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    assert abs(first - datetime.now(UTC)) < timedelta(seconds=5)  # still a creation time

    per_thread = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def make(out):
        start.wait()
        out.extend(tasks.new_task_id() for _ in range(5000))

    threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for out in per_thread:
        assert all(a < b for a, b in zip(out, out[1:], strict=False))
    together = [i for out in per_thread for i in out] + ids
    assert len(set(together)) == 25_000


def test_task_ids_for_a_given_moment_are_that_moments():
    at = datetime(2026, 11, 22, 10, 15, 0, 123456, tzinfo=UTC)
    assert tasks.new_task_id(at).startswith("20261122T101500123Z-")
    assert tasks.new_task_id(at) != tasks.new_task_id(at)
