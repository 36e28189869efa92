"""Tests for task_store: cross-process safety with real processes, crash safety under SIGKILL,
compaction, listing, and the small API contracts.

Processes are real interpreters running `tests/store_worker.py`, because the guarantees under
test (flock, one index per process, kill -9) do not exist between threads of one process.
"""

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from task_store import TaskStore

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

        store = TaskStore(data)  # must load whatever the kill left behind
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
