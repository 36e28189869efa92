"""The JSON task store: an append-only log of task records, safe across processes.

`DATA_DIR/tasks.jsonl` holds one full task record per line; the last line for an id wins and a
`{"id": ..., "_deleted": true}` line removes it. Writers serialise on an exclusive `fcntl` lock
on `tasks.lock`, catch up with what others appended, append one line with a single `write`,
fsync, and release — so read-modify-write updates are never lost, whichever process makes them.
Every process keeps an in-memory index and, before answering, reads only the bytes appended
since its last offset, so an update costs the same at 1k and 100k tasks. A crash can leave at
most one torn last line: readers ignore it and the next writer truncates it. Compaction rewrites
the live records into a new file and `os.replace`s it; other processes notice the new inode and
reload.

The index keeps each record as its raw JSON line plus the few fields listing filters on, which
costs a fraction of the memory of parsed dicts at 100k tasks.
"""

import fcntl
import json
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    line: bytes         # the record's JSON line, without the newline
    status: str
    kind: str
    provider: str
    owner: str | None
    text: str           # lower-cased prompt, for text search


def _entry(record, line):
    params = record.get("params") or {}
    return _Entry(line, record.get("status", ""), record.get("kind", ""), record.get("provider", ""),
                  record.get("owner"), (params.get("prompt") or "").lower())


class TaskStore:
    """Append-only JSON-lines store of task records with an in-memory index per process."""

    def __init__(self, data_dir):
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "tasks.jsonl"
        self.lock_path = self.dir / "tasks.lock"
        self._mutex = threading.RLock()     # flock is per process; threads need their own lock
        self._lock_fd = None
        self._lock_depth = 0
        self._entries = {}                  # id -> _Entry
        self._order = []                    # ids ascending; ids sort by creation time
        self._order_dirty = False
        self._read_fd = None
        self._inode = None
        self._offset = 0                    # bytes of self.path consumed into the index
        self._lines = 0                     # lines in the file, live or superseded
        self.path.touch(exist_ok=True)
        with self._mutex:
            self._catch_up()

    # ---- reading -------------------------------------------------------------------------

    def get(self, task_id):
        """The current record for `task_id`, or None."""
        with self._mutex:
            self._catch_up()
            entry = self._entries.get(task_id)
            return json.loads(entry.line) if entry else None

    def __len__(self):
        with self._mutex:
            self._catch_up()
            return len(self._entries)

    def list(self, *, status=None, kind=None, provider=None, text=None, owner=None,
             offset=0, limit=50):
        """Newest-first page of records matching every given filter, and the total that match.

        `status` may be one value or a collection of values.
        """
        statuses = {status} if isinstance(status, str) else set(status) if status else None
        needle = text.lower() if text else None
        with self._mutex:
            self._catch_up()
            order = self._sorted_ids()
            unfiltered = not (statuses or kind or provider or needle or owner)
            if unfiltered:
                total = len(order)
                end = total - offset
                ids = order[max(0, end - limit):max(0, end)][::-1]
                return [json.loads(self._entries[i].line) for i in ids], total
            page, total = [], 0
            for task_id in reversed(order):
                e = self._entries[task_id]
                if ((statuses and e.status not in statuses) or (kind and e.kind != kind)
                        or (provider and e.provider != provider) or (owner and e.owner != owner)
                        or (needle and needle not in e.text)):
                    continue
                if offset <= total < offset + limit:
                    page.append(json.loads(e.line))
                total += 1
            return page, total

    def ids_with_status(self, statuses):
        """Ids (oldest first) of every task in one of `statuses`; used by the pipeline."""
        wanted = set(statuses)
        with self._mutex:
            self._catch_up()
            return [i for i in self._sorted_ids() if self._entries[i].status in wanted]

    # ---- writing -------------------------------------------------------------------------

    def create(self, record):
        """Add a new record (it must carry a fresh `id`)."""
        with self._locked():
            if record["id"] in self._entries:
                raise KeyError(f"task {record['id']} exists")
            self._append(record)
        return record

    def update(self, task_id, change):
        """Apply `change` to the current record under the lock and store the result.

        `change` is a dict of fields to set, or a function that receives the current record
        (a fresh copy) and mutates it in place; it may raise to abort without writing.
        `updated_at` is stamped. Returns the stored record; KeyError if the task does not exist.
        """
        with self._locked():
            entry = self._entries.get(task_id)
            if entry is None:
                raise KeyError(task_id)
            record = json.loads(entry.line)
            if callable(change):
                change(record)
            else:
                record.update(change)
            record["id"] = task_id
            record["updated_at"] = _now_iso()
            self._append(record)
            return record

    def delete(self, task_id):
        """Remove a record; returns the removed record or None."""
        with self._locked():
            entry = self._entries.get(task_id)
            if entry is None:
                return None
            self._append({"id": task_id, "_deleted": True})
            return json.loads(entry.line)

    def compact(self):
        """Rewrite the log with only live records; returns (lines before, lines after)."""
        with self._locked():
            before = self._lines
            tmp = self.path.with_name(self.path.name + ".compact")
            with open(tmp, "wb") as f:
                for task_id in self._sorted_ids():
                    f.write(self._entries[task_id].line + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.dir)
            self._reload()
            log.info("task store compacted: %d lines -> %d", before, self._lines)
            return before, self._lines

    def garbage_ratio(self):
        """Share of lines in the log that are superseded or deleted (0 when empty)."""
        with self._mutex:
            self._catch_up()
            return 1 - len(self._entries) / self._lines if self._lines else 0.0

    def line_count(self):
        """Lines in the log, live or superseded."""
        with self._mutex:
            self._catch_up()
            return self._lines

    def snapshot(self, dest):
        """Copy the live records to `dest` consistently (under the lock); returns the count."""
        with self._locked():
            with open(dest, "wb") as f:
                for task_id in self._sorted_ids():
                    f.write(self._entries[task_id].line + b"\n")
                f.flush()
                os.fsync(f.fileno())
            return len(self._entries)

    # ---- internals -----------------------------------------------------------------------

    @contextmanager
    def _locked(self):
        """Exclusive lock across threads and processes, with the index caught up."""
        with self._mutex:
            if self._lock_depth == 0:
                if self._lock_fd is None:
                    self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                if self._lock_depth == 1:
                    self._catch_up(writer=True)
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _append(self, record):
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            # One write call: a reader sees the line whole or not at all (unterminated).
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._offset += len(line) + 1
        self._lines += 1
        self._apply(record, line)

    def _apply(self, record, line):
        task_id = record.get("id")
        if not isinstance(task_id, str):
            return
        if record.get("_deleted"):
            if self._entries.pop(task_id, None) is not None:
                self._order_dirty = True
            return
        if task_id not in self._entries:
            if self._order and task_id < self._order[-1]:
                self._order_dirty = True
            self._order.append(task_id)
        self._entries[task_id] = _entry(record, line)

    def _sorted_ids(self):
        if self._order_dirty:
            self._order = sorted(self._entries)
            self._order_dirty = False
        return self._order

    def _reload(self):
        self._inode = None
        self._catch_up()

    def _catch_up(self, writer=False):
        """Read what other processes appended since our offset (everything after a compaction)."""
        st = os.stat(self.path)
        if self._read_fd is None or st.st_ino != self._inode or st.st_size < self._offset:
            # Holding the indexed file open keeps its inode allocated, so a compacted file can
            # never reuse the number and pass for the file we have already read.
            if self._read_fd is not None:
                os.close(self._read_fd)
                log.debug("task store file replaced; reloading")
            self._read_fd = os.open(self.path, os.O_RDONLY)
            st = os.fstat(self._read_fd)
            self._entries, self._order, self._order_dirty = {}, [], False
            self._inode, self._offset, self._lines = st.st_ino, 0, 0
        if st.st_size == self._offset:
            return
        chunk = os.pread(self._read_fd, st.st_size - self._offset, self._offset)
        end = chunk.rfind(b"\n") + 1
        for line in chunk[:end].splitlines():
            self._lines += 1
            try:
                record = json.loads(line)
            except ValueError:
                log.error("task store: skipping unreadable line near byte %d", self._offset)
                continue
            if isinstance(record, dict):
                self._apply(record, line)
        self._offset += end
        if end < len(chunk) and writer:
            # Under the lock nobody else is writing, so an unterminated tail is a torn write
            # from a writer that died: cut it off so the next append starts on a fresh line.
            log.warning("task store: truncating a torn last line (%d bytes)", len(chunk) - end)
            os.truncate(self.path, self._offset)


def _now_iso():
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
