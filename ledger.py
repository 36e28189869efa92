"""What each user has spent, per UTC day and kind, apart from the tasks a user can delete.

Quota used to be counted from the tasks still stored, so deleting tasks gave quota back. The
ledger is append-only: one line per accepted task (`DATA_DIR/ledger/YYYY-MM-DD.jsonl`,
`{"user", "kind", "count", "task_id", "at"}`), and a line with a negative count when a task is
cancelled before it ever reached a provider. Deleting a task touches none of it.

`charge` is the one atomic step of a create: under the ledger's file lock it checks the day's
spending and the tasks in flight, runs the create, and records the spend, so parallel requests
(threads or gunicorn workers) can never pass a limit together.
"""

import json
import os
from datetime import UTC
from pathlib import Path

from clock import iso, utcnow
from fileio import locked, write_all


class Ledger:
    def __init__(self, data_dir, clock=utcnow):
        self.dir = Path(data_dir) / "ledger"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.lock_path = self.dir / "ledger.lock"
        self.clock = clock

    def _day_file(self, moment):
        return self.dir / f"{moment.astimezone(UTC):%Y-%m-%d}.jsonl"

    def _entries(self, moment):
        try:
            lines = self._day_file(moment).read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue            # a torn last line after a crash: that spend was never acknowledged
        return entries

    def locked(self):
        """The ledger's lock: hold it around a check of spending and the spend it allows."""
        return locked(self.lock_path)

    def spent_today(self, user_id, kind, now=None):
        """Units (videos, or images) the user spent today, refunds subtracted."""
        return sum(e["count"] for e in self._entries(now or self.clock())
                   if e["user"] == user_id and e["kind"] == kind)

    def record(self, user_id, kind, count, task_id, now=None):
        """Append one spend (or refund, with a negative count); call it under `locked()`."""
        now = now or self.clock()
        line = json.dumps({"user": user_id, "kind": kind, "count": count, "task_id": task_id,
                           "at": iso(now)}) + "\n"
        fd = os.open(self._day_file(now), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            length = os.fstat(fd).st_size
            try:
                write_all(fd, line.encode())
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, length)        # whole lines only, even on a full disk
                raise
        finally:
            os.close(fd)

    def refund(self, user_id, kind, task_id, now=None):
        """Give back what a task spent today, once (a task cancelled before any provider saw it)."""
        with self.locked():
            entries = [e for e in self._entries(now or self.clock()) if e["task_id"] == task_id]
            balance = sum(e["count"] for e in entries)
            if balance > 0:
                self.record(user_id, kind, -balance, task_id, now)
