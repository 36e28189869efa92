"""Timestamped backups of the task store: take, verify, prune, list, restore.

A backup is `BACKUP_DIR/tasks-YYYYmmddTHHMMSSZ.jsonl.gz`: the live task records, taken under the
store's lock (so it is one consistent moment), written to a temporary name, read back and
checked, then renamed into place. Retention keeps the `BACKUP_KEEP` newest plus the newest of
each of the last 7 days. Task records hold no secrets (provider keys live only in the
environment), so neither do backups.

    python task_backup.py list
    python task_backup.py verify FILE
    python task_backup.py restore FILE     # keeps a safety copy of the current store first
"""

import argparse
import gzip
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from task_store import TaskStore, fsync_dir

log = logging.getLogger(__name__)

NAME = re.compile(r"^tasks-(\d{8}T\d{6}Z)\.jsonl\.gz$")
DAILY_DAYS = 7


class BackupError(Exception):
    """A backup file is missing, unreadable or inconsistent."""


def backup_time(path):
    match = NAME.match(Path(path).name)
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) if match else None


def list_backups(backup_dir):
    """Backup files, newest first."""
    folder = Path(backup_dir)
    found = [p for p in folder.glob("tasks-*.jsonl.gz") if backup_time(p)] if folder.is_dir() else []
    return sorted(found, key=lambda p: (backup_time(p), p.name), reverse=True)


def read_backup(path):
    """The records in a backup; BackupError if any line is unreadable or the count is wrong."""
    try:
        with gzip.open(path, "rb") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError) as exc:
        raise BackupError(f"{path}: cannot be read ({exc})") from None
    if not lines or not lines[0].startswith(b'{"_backup"'):
        raise BackupError(f"{path}: no backup header")
    header = json.loads(lines[0])["_backup"]
    try:
        records = [json.loads(line) for line in lines[1:]]
    except ValueError:
        raise BackupError(f"{path}: a record is not valid JSON") from None
    if len(records) != header["count"] or any(not isinstance(r, dict) or "id" not in r for r in records):
        raise BackupError(f"{path}: expected {header['count']} records, found {len(records)}")
    return records


def take_backup(store, backup_dir, now=None):
    """Snapshot the store into a verified gzip file; returns its path."""
    now = now or datetime.now(UTC)
    folder = Path(backup_dir)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"tasks-{now:%Y%m%dT%H%M%SZ}.jsonl.gz"
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        raw = Path(tmp) / "snapshot.jsonl"
        count = store.snapshot(raw)
        part = Path(tmp) / dest.name
        header = json.dumps({"_backup": {"taken_at": now.isoformat(), "count": count}}).encode()
        with open(raw, "rb") as src, gzip.open(part, "wb") as out:
            out.write(header + b"\n")
            for line in src:
                out.write(line)
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        read_backup(part)                   # verify before it counts as a backup
        os.replace(part, dest)
    fsync_dir(folder)
    log.info("backup %s: %d tasks", dest.name, count)
    return dest


def prune(backup_dir, keep, now=None):
    """Delete backups beyond the `keep` newest, except the newest of each of the last 7 days."""
    now = now or datetime.now(UTC)
    backups = list_backups(backup_dir)
    kept = set(backups[:keep])
    days = set()
    for path in backups:
        day = backup_time(path).date()
        if now - backup_time(path) <= timedelta(days=DAILY_DAYS) and day not in days:
            days.add(day)
            kept.add(path)
    removed = [p for p in backups if p not in kept]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def newest_good_backup(backup_dir):
    """The newest backup that verifies, or None."""
    for path in list_backups(backup_dir):
        try:
            read_backup(path)
            return path
        except BackupError:
            continue
    return None


def restore(store_dir, backup_dir, path):
    """Replace the task store with a backup's records, after a safety backup of the current one."""
    records = read_backup(path)
    store = TaskStore(store_dir, check=False)
    # The safety copy is the raw log, byte for byte: if the store is damaged, every readable
    # line is still there to be recovered by hand.
    folder = Path(backup_dir)
    folder.mkdir(parents=True, exist_ok=True)
    safety = folder / f"pre-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-tasks.jsonl"
    shutil.copy2(store.path, safety)
    store.replace_all(records)
    return safety, len(records)


def backup_job(backup_dir, keep):
    """A scheduler job (store, providers) that takes a backup and prunes old ones."""
    def backup(store, providers=None):
        take_backup(store, backup_dir)
        prune(backup_dir, keep)
    return backup


def main(argv=None):
    from dotenv import dotenv_values

    settings = {**dotenv_values(".env"), **os.environ}
    parser = argparse.ArgumentParser(description="Backups of the AIAPI Studio task store.")
    parser.add_argument("--data-dir", default=settings.get("DATA_DIR") or "data")
    parser.add_argument("--backup-dir", default=settings.get("BACKUP_DIR") or "backups")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list backups, newest first")
    sub.add_parser("verify", help="check that a backup reads back whole").add_argument("file")
    sub.add_parser("restore", help="replace the task store with a backup").add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "list":
        for path in list_backups(args.backup_dir):
            print(f"{path.name}\t{path.stat().st_size} bytes")
        return 0
    try:
        if args.command == "verify":
            print(f"{args.file}: OK, {len(read_backup(args.file))} tasks")
        else:
            safety, count = restore(args.data_dir, args.backup_dir, args.file)
            print(f"restored {count} tasks from {args.file}; the previous store is kept in {safety}")
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
