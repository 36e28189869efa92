"""Timestamped backups of the task store and the accounts: take, verify, prune, list, restore.

A backup is `BACKUP_DIR/tasks-YYYYmmddTHHMMSSZ.jsonl.gz`: the live task records, taken under the
store's lock (so it is one consistent moment), written to a temporary name, read back and
checked, then renamed into place. Beside it, `accounts-YYYYmmddTHHMMSSZ.json` is a copy of
`DATA_DIR/accounts.json` (users, password hashes, API key digests) taken under the accounts lock,
mode 0600, parsed back before it counts. Retention keeps the `BACKUP_KEEP` newest plus the newest
of each of the last 7 days, and the few newest `pre-restore-*` safety copies. Backups dated in the
future (a clock that was wrong when they were taken) are never taken for the newest one. Task
records hold no secrets (provider keys live only in the environment), so neither do task backups.

    flask backup list                   (or: python task_backup.py list)
    flask backup verify FILE
    flask backup restore FILE [--accounts]   # keeps safety copies of what it replaces
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

from clock import utcnow
from fileio import atomic_write, fsync_dir, locked
from task_store import TaskStore

log = logging.getLogger(__name__)

NAME = re.compile(r"^tasks-(\d{8}T\d{6}Z)\.jsonl\.gz$")
PRE_RESTORE = re.compile(r"^pre-restore-(\d{8}T\d{6}Z)-")
DAILY_DAYS = 7
PRE_RESTORE_KEEP = 3            # safety copies of replaced stores kept (each set: tasks, accounts)
FUTURE_SKEW = timedelta(minutes=5)
ACCOUNTS = "accounts.json"


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


def accounts_backup(path):
    """The accounts copy that belongs with a tasks backup."""
    path = Path(path)
    return path.with_name(path.name.replace("tasks-", "accounts-", 1).replace(".jsonl.gz", ".json"))


def read_accounts(path):
    """The accounts data in a backup copy; BackupError if it does not parse as accounts."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
        raise BackupError(f"{path}: not an accounts file")
    return data


def _accounts_lock(data_dir, shared=False):
    return locked(Path(data_dir) / "accounts.lock", shared=shared)


def _write_private(data, dest):
    """Write bytes to `dest` atomically, readable by the owner only, fsynced."""
    atomic_write(dest, data, mode=0o600)
    os.chmod(dest, 0o600)        # whatever the umask said


def _backup_accounts(data_dir, dest):
    """Copy accounts.json (if there is one) under its lock, verified; returns the copy or None."""
    source = Path(data_dir) / ACCOUNTS
    try:
        with _accounts_lock(data_dir, shared=True):     # no account change half-written meanwhile
            data = source.read_bytes()
    except FileNotFoundError:
        return None
    _write_private(data, dest)
    try:
        read_accounts(dest)
    except BackupError:
        dest.unlink(missing_ok=True)
        raise
    return dest


def take_backup(store, backup_dir, now=None):
    """Snapshot the store (and the accounts) into verified files; returns the tasks backup's path."""
    now = now or utcnow()
    folder = Path(backup_dir)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"tasks-{now:%Y%m%dT%H%M%SZ}.jsonl.gz"
    _backup_accounts(store.dir, accounts_backup(dest))     # first: a tasks backup implies its accounts
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
    """Delete backups beyond the `keep` newest, except the newest of each of the last 7 days, and
    safety copies beyond the PRE_RESTORE_KEEP newest. Backups dated in the future are left alone
    (not counted among the newest, not deleted): the clock may have been wrong, not the backup."""
    now = now or utcnow()
    backups = [p for p in list_backups(backup_dir) if backup_time(p) <= now + FUTURE_SKEW]
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
        accounts_backup(path).unlink(missing_ok=True)
    folder = Path(backup_dir)
    stamps = sorted({m.group(1) for p in folder.glob("pre-restore-*") if (m := PRE_RESTORE.match(p.name))},
                    reverse=True) if folder.is_dir() else []
    for stamp in stamps[PRE_RESTORE_KEEP:]:
        for path in folder.glob(f"pre-restore-{stamp}-*"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def newest_good_backup(backup_dir, now=None):
    """The newest backup that verifies and is not dated in the future, or None."""
    now = now or utcnow()
    for path in list_backups(backup_dir):
        if backup_time(path) > now + FUTURE_SKEW:
            log.warning("backup %s is dated in the future; not taken for the newest", path.name)
            continue
        try:
            read_backup(path)
            return path
        except BackupError:
            continue
    return None


def restore(store_dir, backup_dir, path, accounts=False):
    """Replace the task store with a backup's records (and, with `accounts`, the users and API
    keys with the backup's copy), after safety copies of what is replaced."""
    records = read_backup(path)
    account_data = None
    if accounts:
        account_data = read_accounts(accounts_backup(path))     # refuse before anything is replaced
    store = TaskStore(store_dir, check=False)
    # The safety copy is the raw log, byte for byte: if the store is damaged, every readable
    # line is still there to be recovered by hand.
    folder = Path(backup_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"{utcnow():%Y%m%dT%H%M%SZ}"
    safety = folder / f"pre-restore-{stamp}-tasks.jsonl"
    shutil.copy2(store.path, safety)
    store.replace_all(records)
    if account_data is not None:
        live = Path(store_dir) / ACCOUNTS
        with _accounts_lock(store_dir):
            if live.exists():
                _write_private(live.read_bytes(), folder / f"pre-restore-{stamp}-accounts.json")
            _write_private(json.dumps(account_data, indent=1).encode(), live)
    return safety, len(records)


def run_command(command, data_dir, backup_dir, file=None, accounts=False, out=sys.stdout):
    """`list`, `verify FILE` or `restore FILE`, printing what happened; returns the exit status."""
    if command == "list":
        for path in list_backups(backup_dir):
            print(f"{path.name}\t{path.stat().st_size} bytes", file=out)
        return 0
    try:
        if command == "verify":
            count = len(read_backup(file))
            companion = accounts_backup(file)
            users = f", {len(read_accounts(companion)['users'])} users" if companion.exists() else ""
            print(f"{file}: OK, {count} tasks{users}", file=out)
        else:
            safety, count = restore(data_dir, backup_dir, file, accounts=accounts)
            also = " and the accounts" if accounts else ""
            print(f"restored {count} tasks{also} from {file}; the previous store is kept in {safety}", file=out)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def init_app(app):
    """`flask backup list|verify FILE|restore FILE [--accounts]`, with the app's settings."""
    import click
    from flask import current_app

    @app.cli.group("backup")
    def backup_cli():
        """Backups of the task store and the accounts."""

    def run(command, file=None, accounts=False):
        config = current_app.config
        raise SystemExit(run_command(command, config["DATA_DIR"], config["BACKUP_DIR"], file, accounts))

    @backup_cli.command("list")
    def list_cmd():
        """List backups, newest first."""
        run("list")

    @backup_cli.command("verify")
    @click.argument("file")
    def verify_cmd(file):
        """Check that a backup reads back whole."""
        run("verify", file)

    @backup_cli.command("restore")
    @click.argument("file")
    @click.option("--accounts", is_flag=True, help="also replace the users and API keys with the backup's copy")
    def restore_cmd(file, accounts):
        """Replace the task store with a backup (the current one is kept aside)."""
        run("restore", file, accounts)


def main(argv=None):
    """`python task_backup.py ...`: the same commands, for a studio that cannot start."""
    from config import load_settings

    settings, _ = load_settings()
    parser = argparse.ArgumentParser(description="Backups of the AIAPI Studio task store.")
    parser.add_argument("--data-dir", default=settings.DATA_DIR)
    parser.add_argument("--backup-dir", default=settings.BACKUP_DIR)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list backups, newest first")
    sub.add_parser("verify", help="check that a backup reads back whole").add_argument("file")
    restore_cmd = sub.add_parser("restore", help="replace the task store with a backup")
    restore_cmd.add_argument("file")
    restore_cmd.add_argument("--accounts", action="store_true",
                             help="also replace the users and API keys with the backup's copy")
    args = parser.parse_args(argv)
    return run_command(args.command, args.data_dir, args.backup_dir, getattr(args, "file", None),
                       getattr(args, "accounts", False))


if __name__ == "__main__":
    sys.exit(main())
