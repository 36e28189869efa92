"""Backups: consistent verified snapshots, retention, restore, and refusing to start over lost data."""

import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import task_backup
from app import StartupRefused, create_app
from task_store import TaskStore

ROOT = Path(__file__).resolve().parent.parent


def fill(store, n, prefix="t"):
    for i in range(n):
        store.create({"id": f"{prefix}{i:04d}", "status": "succeeded", "kind": "video", "provider": "local",
                      "params": {"prompt": f"prompt {i}"}})


def test_backup_is_a_verified_consistent_snapshot(tmp_path):
    store = TaskStore(tmp_path / "data")
    fill(store, 20)
    store.update("t0003", {"status": "failed"})
    store.delete("t0004")
    path = task_backup.take_backup(store, tmp_path / "backups", now=datetime(2026, 11, 22, 10, 15, tzinfo=UTC))
    assert path.name == "tasks-20261122T101500Z.jsonl.gz"
    records = task_backup.read_backup(path)
    assert [r["id"] for r in records] == sorted(f"t{i:04d}" for i in range(20) if i != 4)
    assert next(r for r in records if r["id"] == "t0003")["status"] == "failed"
    assert list((tmp_path / "backups").iterdir()) == [path]       # no temporary files left


def test_damaged_backups_fail_verification(tmp_path):
    store = TaskStore(tmp_path / "data")
    fill(store, 5)
    path = task_backup.take_backup(store, tmp_path / "b")
    lines = gzip.decompress(path.read_bytes()).splitlines()
    cut = tmp_path / "b" / "tasks-20200101T000000Z.jsonl.gz"
    cut.write_bytes(gzip.compress(b"\n".join(lines[:-1]) + b"\n"))
    with pytest.raises(task_backup.BackupError, match="expected 5"):
        task_backup.read_backup(cut)
    truncated = tmp_path / "b" / "tasks-20200102T000000Z.jsonl.gz"
    truncated.write_bytes(path.read_bytes()[:40])
    with pytest.raises(task_backup.BackupError):
        task_backup.read_backup(truncated)
    assert task_backup.newest_good_backup(tmp_path / "b") == path


def test_retention_keeps_the_newest_and_one_per_day_for_a_week(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    made = []
    for hours in range(0, 24 * 10, 6):                  # every 6 hours for 10 days
        moment = now - timedelta(hours=hours)
        path = folder / f"tasks-{moment:%Y%m%dT%H%M%SZ}.jsonl.gz"
        path.write_bytes(b"")
        made.append(path)
    task_backup.prune(folder, keep=3, now=now)
    left = {p.name for p in folder.iterdir()}
    newest3 = {p.name for p in made[:3]}
    assert newest3 <= left
    days = {task_backup.backup_time(folder / name).date() for name in left}
    assert days == {(now - timedelta(days=d)).date() for d in range(8)}   # today + 7 days back
    assert len(left) == 3 + 7           # today's three newest, then each older day's newest


def test_restore_brings_back_an_identical_store_and_keeps_a_safety_copy(tmp_path):
    data, backups = tmp_path / "data", tmp_path / "backups"
    store = TaskStore(data)
    fill(store, 30)
    path = task_backup.take_backup(store, backups)
    before = store.list(limit=100)
    for i in range(10):
        store.delete(f"t{i:04d}")
    fill(store, 3, prefix="later")
    reader = TaskStore(data)                        # another process's view, to be refreshed
    safety, count = task_backup.restore(data, backups, path)
    assert count == 30
    assert TaskStore(data).list(limit=100) == before
    assert reader.list(limit=100) == before        # running processes follow the new file
    assert "later0000" in safety.read_text()


def test_cli_list_verify_restore(tmp_path):
    data, backups = tmp_path / "data", tmp_path / "backups"
    store = TaskStore(data)
    fill(store, 4)
    path = task_backup.take_backup(store, backups)
    env = {**os.environ, "DATA_DIR": str(data), "BACKUP_DIR": str(backups)}

    def cli(*args):
        return subprocess.run([sys.executable, "task_backup.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    listed = cli("list")
    assert listed.returncode == 0 and path.name in listed.stdout
    verified = cli("verify", str(path))
    assert verified.returncode == 0 and "4 tasks" in verified.stdout
    store.delete("t0000")
    restored = cli("restore", str(path))
    assert restored.returncode == 0, restored.stderr
    assert len(TaskStore(data)) == 4
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip")
    assert cli("verify", str(bad)).returncode == 1


def test_corrupt_store_refuses_to_start_and_names_the_newest_good_backup(tmp_path):
    data, backups = tmp_path / "data", tmp_path / "backups"
    store = TaskStore(data)
    fill(store, 3)
    good = task_backup.take_backup(store, backups)
    with open(data / "tasks.jsonl", "r+b") as f:      # damage a line in the middle
        f.seek(10)
        f.write(b"\x00garbage\x00")
    config = {"TESTING": True, "DATA_DIR": str(data), "BACKUP_DIR": str(backups), "SECRET_KEY": "t"}
    with pytest.raises(StartupRefused) as refused:
        create_app(config)
    assert str(good) in str(refused.value) and "task_backup.py restore" in str(refused.value)
    task_backup.restore(data, backups, good)
    assert len(create_app(config).extensions["task_store"]) == 3


def test_missing_store_with_backups_refuses_to_start(tmp_path):
    data, backups = tmp_path / "data", tmp_path / "backups"
    fill(TaskStore(data), 2)
    task_backup.take_backup(TaskStore(data), backups)
    (data / "tasks.jsonl").unlink()
    with pytest.raises(StartupRefused, match="missing"):
        create_app({"TESTING": True, "DATA_DIR": str(data), "BACKUP_DIR": str(backups), "SECRET_KEY": "t"})


def test_backups_hold_no_secrets(tmp_path, client, app, png_b64):
    secret = "sk-live-do-not-leak-1234567890"
    app.config["DASHSCOPE_API_KEY"] = secret
    assert client.post("/generate", json={"image": png_b64}).status_code == 202
    path = task_backup.take_backup(app.extensions["task_store"], tmp_path / "b")
    text = gzip.decompress(path.read_bytes()).decode()
    assert secret not in text and app.config["SECRET_KEY"] not in text
    assert json.loads(text.splitlines()[1])["status"] == "queued"


def test_backups_carry_the_accounts_privately_and_restore_them_on_request(tmp_path):
    from accounts import Accounts

    data, backups = tmp_path / "data", tmp_path / "backups"
    store = TaskStore(data)
    fill(store, 2)
    accounts = Accounts(data)
    accounts.ensure_admin("a long admin secret")
    alice = accounts.create_user("alice", "rabbit hole 1865")
    accounts.create_api_key(alice["id"], "laptop")
    path = task_backup.take_backup(store, backups)
    copy = task_backup.accounts_backup(path)
    assert copy.name == path.name.replace("tasks-", "accounts-").replace(".jsonl.gz", ".json")
    assert copy.stat().st_mode & 0o777 == 0o600
    assert json.loads(copy.read_text()) == json.loads((data / "accounts.json").read_text())

    accounts.delete_user(alice["id"])
    task_backup.restore(data, backups, path)                        # tasks only, unless asked
    assert accounts.check_password("alice", "rabbit hole 1865") is None
    task_backup.restore(data, backups, path, accounts=True)
    assert accounts.check_password("alice", "rabbit hole 1865")["username"] == "alice"
    assert len(accounts.api_keys(alice["id"])) == 1
    assert (data / "accounts.json").stat().st_mode & 0o777 == 0o600
    (saved,) = backups.glob("pre-restore-*-accounts.json")
    assert saved.stat().st_mode & 0o777 == 0o600 and "alice" not in saved.read_text()

    copy.write_text("{not json")
    with pytest.raises(task_backup.BackupError):
        task_backup.restore(data, backups, path, accounts=True)


def test_prune_keeps_only_a_few_pre_restore_copies(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    for day in range(1, 7):
        for part in ("tasks.jsonl", "accounts.json"):
            (folder / f"pre-restore-202611{day:02d}T120000Z-{part}").write_text("x")
    task_backup.prune(folder, keep=3, now=datetime(2026, 11, 22, tzinfo=UTC))
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(f"pre-restore-202611{day:02d}T120000Z-{part}" for day in (4, 5, 6)
                          for part in ("tasks.jsonl", "accounts.json"))


def test_backups_dated_in_the_future_are_not_taken_for_the_newest(tmp_path):
    store = TaskStore(tmp_path / "data")
    fill(store, 3)
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    good = task_backup.take_backup(store, tmp_path / "b", now=now - timedelta(hours=1))
    fill(store, 1, prefix="x")
    future = task_backup.take_backup(store, tmp_path / "b", now=now + timedelta(days=30))
    assert task_backup.newest_good_backup(tmp_path / "b", now=now) == good
    for hours in range(2, 6):
        task_backup.take_backup(store, tmp_path / "b", now=now - timedelta(hours=hours))
    task_backup.prune(tmp_path / "b", keep=2, now=now)
    assert future.exists() and good.exists()                   # the future one does not push out the newest
    assert len(task_backup.list_backups(tmp_path / "b")) == 3
