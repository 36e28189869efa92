"""The submit journal: an append-only record of every submit attempt, `DATA_DIR/submits.jsonl`.

One JSON line per event, `{task_id, provider, at}` written (and fsynced) before a submit is sent,
then `{task_id, provider, at, provider_task_id}` once the provider's id is known, or
`{task_id, provider, at, outcome: "not_created"}` when the provider certainly made nothing.
Appends take an exclusive `flock`, so gunicorn workers never interleave lines.

It lives beside the task store but is never replaced by a restore or a compaction: a task brought
back from a backup as `queued` is looked up here, and if it was ever sent it is reconciled (its
provider id known: adopted and polled; unknown: reconciled like an ambiguous submit), never sent
again. Only the pipeline writes it; readers see new lines as the file grows.
"""

import fcntl
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "submits.jsonl"
NOT_CREATED = "not_created"

_journals = {}
_journals_lock = threading.Lock()


@dataclass
class Attempts:
    """What the journal knows about one task's submits."""

    count: int = 0                  # attempts sent
    first_at: str | None = None     # when the first attempt was sent (ISO 8601 UTC)
    last_at: str | None = None      # when the latest attempt was sent
    provider_task_id: str | None = None     # the provider's id once known
    open: bool = False              # the latest attempt's outcome is unknown


class SubmitJournal:
    """Appends and lookups on one data directory's journal (one instance per directory and process)."""

    def __init__(self, data_dir):
        self.path = Path(data_dir) / FILE_NAME
        self._mutex = threading.Lock()
        self._offset = 0            # bytes of the file folded into the index
        self._index = {}            # task id -> Attempts
        self._claimed = set()       # provider task ids some task owns

    def sent(self, task_id, provider, at):
        """Record an attempt about to be sent (durable before the request goes out)."""
        self._append({"task_id": task_id, "provider": provider, "at": at})

    def created(self, task_id, provider, at, provider_task_id):
        """Record the provider's id for the task's latest attempt."""
        self._append({"task_id": task_id, "provider": provider, "at": at, "provider_task_id": provider_task_id})

    def not_created(self, task_id, provider, at):
        """Record that the latest attempt certainly made nothing at the provider."""
        self._append({"task_id": task_id, "provider": provider, "at": at, "outcome": NOT_CREATED})

    def lookup(self, task_id):
        """The task's Attempts, or None if it was never sent."""
        with self._mutex:
            self._catch_up()
            found = self._index.get(task_id)
            return Attempts(**vars(found)) if found else None

    def claimed(self):
        """Every provider task id that some studio task owns."""
        with self._mutex:
            self._catch_up()
            return set(self._claimed)

    def _append(self, entry):
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line        # end a line torn by a crash, so this one stays readable
            written = 0
            while written < len(line):      # a short write is finished, never left torn
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)

    def _catch_up(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1     # a line still being written is read next time
        for raw in data[:end].splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue                # a torn line from a crash mid-append carries nothing usable
            if isinstance(entry, dict) and entry.get("task_id"):
                self._fold(entry)
        self._offset += end

    def _fold(self, entry):
        found = self._index.setdefault(entry["task_id"], Attempts())
        if entry.get("provider_task_id"):
            found.provider_task_id = str(entry["provider_task_id"])
            found.open = False
            self._claimed.add(found.provider_task_id)
        elif entry.get("outcome") == NOT_CREATED:
            found.open = False
        else:
            found.count += 1
            found.first_at = found.first_at or entry.get("at")
            found.last_at = entry.get("at")
            found.open = True


def for_dir(data_dir):
    """The process's journal for a data directory."""
    key = str(Path(data_dir).resolve())
    with _journals_lock:
        if key not in _journals:
            _journals[key] = SubmitJournal(data_dir)
        return _journals[key]
