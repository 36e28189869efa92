"""The JSON task store: an append-only log of task records, safe across processes.

`DATA_DIR/tasks.jsonl` holds one full task record per line; the last line for an id wins and a
`{"id": ..., "_deleted": true}` line removes it. Writers serialise on an exclusive `fcntl` lock
on `tasks.lock`, catch up with what others appended, append one line, fsync, and release — so
read-modify-write updates are never lost, whichever process makes them. Every process keeps an
in-memory index and, before answering, reads only the bytes appended since its last offset, so
an update costs the same at 1k and 100k tasks. A crash can leave at most one torn last line:
readers ignore it and the next writer truncates it. Compaction rewrites the live records into
`tasks.jsonl.rewrite` and `os.replace`s it; other processes notice the new inode and reload; a
rewrite file left by a killed compaction is removed at the next open.

An append is written whole or not at all: partial writes are continued, and any failure
(a full disk above all) rolls the file back to its old length and raises, so a call that
returns has its record on disk (fsync'd) and a call that raises left nothing. A line can be
whole when its fsync fails, and another process may have read it by then: every catch-up
re-reads the last line it consumed, so such a process sees the rollback and reloads.

`tasks.length` is the store's high-water mark: the log's length after the last append, so a
log found shorter than it was truncated and the store refuses to open instead of starting with
tasks missing or old states back. The mark may lag the log but never exceed its durable length:
an append writes it only after the log's fsync (without an fsync of its own: a mark lost in a
power cut is merely older), and a compaction lowers it durably before the swap and raises it
after. It is compared under the lock only, where no append or swap can run in between.

The index keeps each record as its raw JSON line plus the few fields listing filters on, which
costs a fraction of the memory of parsed dicts at 100k tasks.
"""

import errno
import fcntl
import json
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clock import iso, utcnow
from errors import InsufficientStorage
from fileio import fsync_dir

log = logging.getLogger(__name__)


FILTER_FIELDS = ("status", "kind", "provider", "owner", "favourite")


@dataclass(slots=True)
class _Entry:
    line: bytes         # the record's JSON line, without the newline
    status: str
    kind: str
    provider: str
    owner: str | None
    favourite: bool     # starred by its owner (tasks.Task.favourite)
    text: str           # lower-cased prompt, for text search


def _text(value):
    return value if isinstance(value, str) else ""


def _entry(record, line):
    params = record.get("params")
    prompt = params.get("prompt") if isinstance(params, dict) else None
    owner = record.get("owner")
    return _Entry(line, _text(record.get("status")), _text(record.get("kind")),
                  _text(record.get("provider")), owner if isinstance(owner, str) else None,
                  record.get("favourite") is True, _text(prompt).lower())


class StoreCorrupt(Exception):
    """The log has lines that are not task records (not merely a torn last line), or it is
    shorter than its high-water mark says it was."""


MARK_FORMAT = b"%020d\n"   # fixed width: rewritten in place, never longer or shorter


class TaskStore:
    """Append-only JSON-lines store of task records with an in-memory index per process."""

    def __init__(self, data_dir, check=True):
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "tasks.jsonl"
        self.lock_path = self.dir / "tasks.lock"
        self.mark_path = self.dir / "tasks.length"
        self.rewrite_path = self.path.with_name(self.path.name + ".rewrite")
        self._check = check
        self._mutex = threading.RLock()     # flock is per process; threads need their own lock
        self._lock_fd = None
        self._lock_depth = 0
        self._entries = {}                  # id -> _Entry
        self._by = {f: {} for f in FILTER_FIELDS}   # field -> value -> set of ids
        self._texts = {}                    # id -> lower-cased prompt
        self._order = []                    # ids ascending; ids sort by creation time
        self._order_dirty = False
        self._pid = os.getpid()             # descriptors are reopened in a forked child
        self._read_fd = None
        self._mark_fd = None
        self._inode = None
        self._offset = 0                    # bytes of self.path consumed into the index
        self._tail = b""                    # the last line consumed, with its newline
        self._lines = 0                     # lines in the file, live or superseded
        self.unreadable = 0                 # lines that did not parse as a record
        existed = self.path.exists()
        self.path.touch(exist_ok=True)
        with self._mutex, self._flock():
            # Reading at open under the lock sees the log and its mark from the same moment.
            self._catch_up()
            self.rewrite_path.unlink(missing_ok=True)   # under the lock nobody is compacting
            if not existed or self._read_mark() is None:
                # A new log (or one from before marks existed) starts its mark at its length;
                # a missing log is app.py's to judge, against the backups.
                self._write_mark(self._offset)
            elif check:
                self._check_length()
        if check and self.unreadable:
            raise StoreCorrupt(f"{self.path} has {self.unreadable} unreadable line(s)")

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

    def ping(self):
        """Raise OSError unless the log can be read (for /readyz)."""
        len(self)

    def list(self, *, status=None, kind=None, provider=None, text=None, owner=None, since=None,
             favourite=None, offset=0, limit=50):
        """Newest-first page of records matching every given filter, and the total that match.

        `status` may be one value or a collection of values; `since` keeps ids >= it (ids sort
        by creation time, so that means "created since"); `favourite=True` keeps the starred ones.
        """
        wanted = {"status": {status} if isinstance(status, str) else set(status or ()),
                  "kind": {kind} - {None}, "provider": {provider} - {None}, "owner": {owner} - {None},
                  "favourite": {favourite} - {None}}
        needle = text.lower() if text else None
        with self._mutex:
            self._catch_up()
            order = self._sorted_ids()
            matches = self._matching({f: v for f, v in wanted.items() if v}, needle)
            if since:
                pool = self._entries if matches is None else matches
                matches = {i for i in pool if i >= since}
            if matches is None:
                total = len(order)
                end = total - offset
                ids = order[max(0, end - limit):max(0, end)][::-1]
            elif len(matches) * 4 > len(order):
                # Dense matches: walk newest-first and stop once the page is full.
                total, ids, skipped = len(matches), [], 0
                for task_id in reversed(order):
                    if task_id in matches:
                        if skipped < offset:
                            skipped += 1
                        else:
                            ids.append(task_id)
                            if len(ids) == limit:
                                break
            else:
                total = len(matches)
                ids = sorted(matches, reverse=True)[offset:offset + limit]
            return [json.loads(self._entries[i].line) for i in ids], total

    def _matching(self, wanted, needle):
        """Ids matching every filter (None when there is no filter), from the per-field sets."""
        if not wanted and not needle:
            return None
        per_field = []
        for field, values in wanted.items():
            sets = [self._by[field].get(v, set()) for v in values]
            per_field.append(sets[0] if len(sets) == 1 else set().union(*sets))
        per_field.sort(key=len)
        matches = set(per_field[0]) if per_field else None
        for ids in per_field[1:]:
            matches &= ids
        if needle:
            texts = self._texts     # a plain dict scans several times faster than entry attributes
            if matches is None:
                matches = {i for i, text in texts.items() if needle in text}
            else:
                matches = {i for i in matches if needle in texts[i]}
        return matches

    def ids_with_status(self, statuses, since=None):
        """Ids (oldest first) of every task in one of `statuses`, optionally only ids >= `since`
        (ids sort by creation time, so that means "created since"); used by the pipeline."""
        with self._mutex:
            self._catch_up()
            ids = set().union(*(self._by["status"].get(s, ()) for s in statuses))
            return sorted(i for i in ids if since is None or i >= since)

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
            record["updated_at"] = iso(utcnow())
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
            self._rewrite(self._entries[task_id].line for task_id in self._sorted_ids())
            log.info("task store compacted: %d lines -> %d", before, self._lines)
            return before, self._lines

    def replace_all(self, records):
        """Make `records` the whole content of the store (restoring a backup)."""
        with self._locked():
            self._rewrite(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() for r in records)

    def _rewrite(self, lines):
        """Write a new log beside the old one and swap it in atomically; other processes reload."""
        tmp = self.rewrite_path
        try:
            with open(tmp, "wb") as f:
                for line in lines:
                    f.write(line + b"\n")
                f.flush()
                os.fsync(f.fileno())
                length = f.tell()
            # The mark must fit the old log until the swap and the new one after it: lower it
            # (durably) first, raise it once the swap is durable. A crash in between leaves a
            # mark below both, which only weakens the check until the next append.
            self._write_mark(min(self._read_mark() or 0, length), durable=True)
            os.replace(tmp, self.path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            full = InsufficientStorage.from_os_error(exc)
            if full is not None and full is not exc:
                raise full from exc
            raise
        fsync_dir(self.dir)
        self._write_mark(length)
        self.unreadable = 0
        self._reload()

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

    def _after_fork(self):
        """A forked child shares its parent's open file descriptions, and flock belongs to
        those: reusing them would let parent and child "hold" the lock at once."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            for fd in (self._lock_fd, self._read_fd, self._mark_fd):
                if fd is not None:
                    os.close(fd)    # the parent keeps its own descriptor, and its lock
            self._lock_fd = self._read_fd = self._mark_fd = self._inode = None
            self._lock_depth = 0

    def close(self):
        """Release the file descriptors this store holds."""
        with self._mutex:
            for fd in (self._lock_fd, self._read_fd, self._mark_fd):
                if fd is not None and self._pid == os.getpid():
                    os.close(fd)
            self._lock_fd = self._read_fd = self._mark_fd = self._inode = None

    @contextmanager
    def _flock(self):
        """The exclusive lock across processes (re-entrant; the caller holds self._mutex)."""
        self._after_fork()
        if self._lock_depth == 0:
            if self._lock_fd is None:
                self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def _locked(self):
        """Exclusive lock across threads and processes, with the index caught up."""
        with self._mutex, self._flock():
            if self._lock_depth == 1:
                self._catch_up()
                if self._check:
                    self._check_length()    # before cutting anything, and before an append moves the mark
                self._cut_torn_tail()
            yield

    def _write(self, fd, data):
        """One `os.write`: the seam tests replace to make the disk fill up mid-line."""
        return os.write(fd, data)

    def _append(self, record):
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        data = line + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:     # a short write (the disk filling up) is continued, never ignored
                    written = self._write(fd, view)
                    if written <= 0:
                        raise OSError(errno.ENOSPC, "no progress writing the task store")
                    view = view[written:]
                os.fsync(fd)
            except OSError as exc:
                self._roll_back(fd, start)
                full = InsufficientStorage.from_os_error(exc)
                if full is not None and full is not exc:
                    raise full from exc
                raise
        finally:
            os.close(fd)
        self._offset += len(data)
        self._tail = data
        self._lines += 1
        self._apply(record, line)
        self._write_mark(self._offset)  # after the fsync: the mark never exceeds the durable log

    def _roll_back(self, fd, length):
        """Cut a failed append off again, so the caller's "not written" is true."""
        try:
            os.ftruncate(fd, length)
            os.fsync(fd)
        except OSError:
            # Left unterminated, the partial line is ignored by readers and cut by the next writer.
            log.exception("task store: could not roll back a failed append in %s", self.path)

    def _mark_descriptor(self):
        if self._mark_fd is None:
            self._mark_fd = os.open(self.mark_path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._mark_fd

    def _read_mark(self):
        """The high-water mark in bytes, or None when there is none yet (or it is unreadable)."""
        data = os.pread(self._mark_descriptor(), 64, 0).strip()
        if not data:
            return None
        try:
            return int(data)
        except ValueError:
            log.warning("task store: ignoring an unreadable high-water mark in %s", self.mark_path)
            return None

    def _write_mark(self, length, durable=False):
        try:
            os.pwrite(self._mark_descriptor(), MARK_FORMAT % length, 0)
            if durable:
                os.fsync(self._mark_fd)
        except OSError:
            if durable:
                raise
            # The record is already durable: a mark left behind only weakens the check.
            log.warning("task store: could not update the high-water mark %s", self.mark_path, exc_info=True)

    def _check_length(self):
        """StoreCorrupt if the log holds fewer bytes than it did (it was truncated)."""
        mark = self._read_mark()
        if mark is not None and self._offset < mark:
            raise StoreCorrupt(
                f"{self.path} is shorter than it was ({self._offset} of {mark} bytes): it has been "
                f"truncated, and the tasks or changes in the missing part would be lost (to accept "
                f"the file as it is, delete {self.mark_path.name})")

    def _apply(self, record, line):
        task_id = record.get("id")
        if not isinstance(task_id, str):
            return
        old = self._entries.pop(task_id, None)
        if old is not None:
            for field in FILTER_FIELDS:
                self._by[field][getattr(old, field)].discard(task_id)
        if record.get("_deleted"):
            if old is not None:
                self._order_dirty = True
                del self._texts[task_id]
            return
        if old is None:
            if self._order and task_id < self._order[-1]:
                self._order_dirty = True
            self._order.append(task_id)
        entry = self._entries[task_id] = _entry(record, line)
        self._texts[task_id] = entry.text
        for field in FILTER_FIELDS:
            self._by[field].setdefault(getattr(entry, field), set()).add(task_id)

    def _sorted_ids(self):
        if self._order_dirty:
            self._order = sorted(self._entries)
            self._order_dirty = False
        return self._order

    def _reload(self):
        self._inode = None
        self._catch_up()

    def _open_log(self):
        """(Re)open the log and empty the index, to read it from the start."""
        # Holding the indexed file open keeps its inode allocated, so a compacted file can
        # never reuse the number and pass for the file we have already read.
        if self._read_fd is not None:
            os.close(self._read_fd)
            log.debug("task store file replaced; reloading")
        self._read_fd = os.open(self.path, os.O_RDONLY)
        self._entries, self._order, self._order_dirty = {}, [], False
        self._by = {f: {} for f in FILTER_FIELDS}
        self._texts = {}
        st = os.fstat(self._read_fd)
        self._inode, self._offset, self._lines, self._tail = st.st_ino, 0, 0, b""
        return st

    def _catch_up(self):
        """Read what other processes appended since our offset (everything after a compaction)."""
        self._after_fork()
        st = os.stat(self.path)
        if self._read_fd is None or st.st_ino != self._inode or st.st_size < self._offset:
            st = self._open_log()
        # Re-read the last line we indexed along with what follows: if it is no longer there,
        # its append was rolled back (its fsync failed after we read it) and other lines now
        # fill its place, so our index would keep a record nobody stored and skip real ones.
        start = self._offset - len(self._tail)
        chunk = os.pread(self._read_fd, st.st_size - start, start)
        if chunk.startswith(self._tail):
            chunk = chunk[len(self._tail):]
        else:
            log.warning("task store: a line this process read was rolled back; reloading")
            st = self._open_log()
            chunk = os.pread(self._read_fd, st.st_size, 0)
        end = chunk.rfind(b"\n") + 1
        if not end:
            return
        self._tail = chunk[chunk.rfind(b"\n", 0, end - 1) + 1:end]
        for line in chunk[:end].splitlines():
            self._lines += 1
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                self._apply(record, line)
            else:
                self.unreadable += 1
                log.error("task store: skipping an unreadable line in %s", self.path)
        self._offset += end

    def _cut_torn_tail(self):
        """Under the lock nobody else is writing, so an unterminated tail is a torn write from a
        writer that died: cut it off so the next append starts on a fresh line."""
        size = os.fstat(self._read_fd).st_size
        if size > self._offset:
            log.warning("task store: truncating a torn last line (%d bytes)", size - self._offset)
            os.truncate(self.path, self._offset)
