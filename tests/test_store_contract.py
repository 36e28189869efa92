"""One contract for both task stores: every test runs on the JSON store and on PostgreSQL.

A `backend` is a way to open the same store again, as another process would (`backend.open()`),
and to name it to a subprocess (`backend.name`, `backend.target`). PostgreSQL is a real throwaway
server (tests/pg_server.py), one fresh database per test. The JSON store's own file-level
properties (torn lines, compaction, kill -9) stay in tests/test_task_store.py.
"""

import contextlib
import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import task_backup
from task_store import TaskStore
from task_store_pg import PgTaskStore
from tests.test_task_store import _check_listing, _task, plain

pytest_plugins = ["tests.pg_server"]     # pg_server, pg_url: a throwaway PostgreSQL

ROOT = Path(__file__).resolve().parent.parent


class Backend:
    def __init__(self, name, target, data_dir):
        self.name, self.target, self.data_dir = name, target, data_dir
        self.opened = []

    def open(self):
        store = (TaskStore(self.target) if self.name == "json"
                 else PgTaskStore(self.target, self.data_dir, migrate=False))
        self.opened.append(store)
        return store


@pytest.fixture(params=["json", "pg"])
def backend(request, tmp_path):
    if request.param == "json":
        made = Backend("json", tmp_path / "store", tmp_path / "store")
    else:
        made = Backend("pg", request.getfixturevalue("pg_url"), tmp_path / "data")
    yield made
    for store in made.opened:
        store.close()


def test_create_get_update_delete(backend):
    store, other = backend.open(), backend.open()
    record = store.create({"id": "t1", "status": "queued", "tags": ["a"], "params": {"prompt": "Ü x"}})
    record["status"] = "changed by the caller"          # the store keeps its own copy
    assert other.get("t1") == {"id": "t1", "status": "queued", "tags": ["a"], "params": {"prompt": "Ü x"}}
    with pytest.raises(KeyError):
        other.create({"id": "t1", "status": "again"})   # made by another "process"
    stored = other.update("t1", {"status": "running", "id": "other", "updated_at": "1999"})
    assert plain(stored) == {"id": "t1", "status": "running", "tags": ["a"], "params": {"prompt": "Ü x"}}
    assert stored["updated_at"] > "2000" and stored["updated_at"].endswith("Z")
    assert store.get("t1") == stored and store.get("other") is None
    assert store.update("t1", lambda r: r["tags"].append("b"))["tags"] == ["a", "b"]
    assert len(store) == 1
    store.ping()                                        # readable: /readyz says "ok"
    assert store.delete("t1")["tags"] == ["a", "b"]
    assert other.get("t1") is None and store.delete("t1") is None and len(other) == 0


def test_a_change_that_raises_writes_nothing(backend):
    store = backend.open()
    store.create({"id": "t1", "status": "queued", "tags": ["a"]})

    def half_done(record):
        record["tags"].append("b")
        record["status"] = "running"
        raise ZeroDivisionError("changed my mind")

    with pytest.raises(ZeroDivisionError):
        store.update("t1", half_done)
    with pytest.raises(KeyError):
        store.update("missing", {"status": "running"})
    assert backend.open().get("t1") == {"id": "t1", "status": "queued", "tags": ["a"]}


def test_filters_paging_text_search_and_since(backend):
    writer = backend.open()
    records = [_task(i) for i in range(120)]
    for record in random.Random(7).sample(records, len(records)):  # created out of order
        writer.create(record)
    for record in records[::4]:
        record.update(writer.update(record["id"], {"status": "succeeded"}))
    for record in records[1::10]:
        writer.delete(record["id"])
    records = [r for r in records if r not in records[1::10]]
    reader = backend.open()
    _check_listing(reader, records)
    ordered = sorted(r["id"] for r in records)
    since = ordered[60]
    page, total = reader.list(since=since, limit=1000)
    assert [r["id"] for r in page] == ordered[60:][::-1] and total == len(ordered) - 60
    page, total = reader.list(since=since, status="queued", limit=1000)
    assert [r["id"] for r in page] == [r["id"] for r in sorted(records, key=lambda r: r["id"], reverse=True)
                                       if r["id"] >= since and r["status"] == "queued"]
    assert reader.ids_with_status(["queued"]) == [i for i in ordered if next(
        r for r in records if r["id"] == i)["status"] == "queued"]
    assert reader.ids_with_status(["queued", "succeeded"], since=since) == [
        i for i in ordered[60:] if next(r for r in records if r["id"] == i)["status"] in ("queued", "succeeded")]
    assert reader.ids_with_status([]) == []


def test_the_favourite_filter_keeps_the_starred_tasks(backend):
    store = backend.open()
    for i in range(6):
        store.create({**_task(i), "favourite": i % 3 == 0})
    store.update(_task(1)["id"], {"favourite": True})
    store.update(_task(3)["id"], {"favourite": False})
    page, total = backend.open().list(favourite=True)
    assert sorted(r["id"] for r in page) == sorted(_task(i)["id"] for i in (0, 1)) and total == 2


def test_text_search_takes_wildcards_literally(backend):
    store = backend.open()
    for i, prompt in enumerate(["100% cat", "1000 cats", "a_b", "axb", "back\\slash"]):
        store.create({"id": f"t{i}", "params": {"prompt": prompt}})
    assert [r["id"] for r in store.list(text="0%")[0]] == ["t0"]
    assert [r["id"] for r in store.list(text="a_b")[0]] == ["t2"]
    assert [r["id"] for r in store.list(text="K\\S")[0]] == ["t4"]


def test_snapshot_round_trip_through_a_backup(backend, tmp_path):
    store = backend.open()
    for i in range(10):
        store.create({"id": f"t{i:02d}", "n": i, "params": {"prompt": f"p{i}"}})
    for i in range(5):
        store.update(f"t{i:02d}", {"n": 100 + i})
    store.delete("t09")
    live = store.list(limit=100)[0][::-1]
    dest = tmp_path / "snap.jsonl"
    assert store.snapshot(dest) == 9
    assert [json.loads(line) for line in dest.read_bytes().splitlines()] == live

    backup = task_backup.take_backup(store, tmp_path / "backups")
    records = task_backup.read_backup(backup)
    assert records == live
    with gzip.open(backup, "rb") as f:
        assert json.loads(f.readline())["_backup"]["count"] == 9
    store.replace_all(records[:3])
    assert backend.open().list(limit=100)[0][::-1] == live[:3]


def test_no_update_is_lost_between_processes(backend):
    store = backend.open()
    store.create({"id": "shared", "counter": 0, "tokens": []})
    workers, count = 4, 100
    cmd = [sys.executable, "-m", "tests.contract_worker", "increment", backend.name, str(backend.target)]
    with contextlib.ExitStack() as stack:
        procs = []
        for w in range(workers):
            proc = stack.enter_context(subprocess.Popen([*cmd, str(w), str(count), "shared"], cwd=ROOT, text=True,
                                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            stack.callback(lambda p=proc: p.poll() is None and p.kill())
            procs.append(proc)
        for proc in procs:      # all loaded before any starts: their updates overlap
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.close()
        for proc in procs:
            assert proc.stdout.read() == "done\n"
            assert proc.wait(timeout=120) == 0
    record = backend.open().get("shared")
    assert record["counter"] == workers * count
    assert sorted(record["tokens"]) == sorted(f"w{w}-{i:03d}" for w in range(workers) for i in range(count))
    for w in range(workers):    # serialised: each worker's own order survives
        mine = [t for t in record["tokens"] if t.startswith(f"w{w}-")]
        assert mine == sorted(mine)


def test_compaction_never_loses_a_live_record(backend):
    store = backend.open()
    for i in range(20):
        store.create({"id": f"t{i:02d}"})
        store.update(f"t{i:02d}", {"n": i})
    before = store.list(limit=100)[0]
    store.compact()
    assert 0.0 <= store.garbage_ratio() < 1.0 and store.line_count() >= len(store) == 20
    assert backend.open().list(limit=100)[0] == before
