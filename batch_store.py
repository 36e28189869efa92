"""Where batch records are kept: one JSON file per batch under `DATA_DIR/batches/`.

Its own module so that the PostgreSQL backend (batch_store_pg.py, chosen by `open_batches` when
the tasks are in PostgreSQL) stands beside it behind the same small interface (`create`, `get`,
`update`, `list`, `find`, `adding`, and `export`/`replace_all` for `flask store copy`). A record
is small (settings and, per item, a name, a key, a task id and a refusal), because the tasks are
the truth about progress: counts, ETA and cost are computed from the task records (batches.py).
Writes replace the file atomically (fileio.atomic_write) under one lock file, so readers never see
half a record and two processes changing one batch never lose each other's change.
"""

import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

from fileio import atomic_write, locked

BATCH_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


class BatchStore:
    """Batch records as JSON files; ids are tasks.new_task_id() ids prefixed `b`."""

    def __init__(self, data_dir):
        self.dir = Path(data_dir) / "batches"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = self.dir / ".lock"

    def _path(self, batch_id):
        return self.dir / f"{batch_id}.json" if BATCH_ID.fullmatch(batch_id or "") else None

    def get(self, batch_id):
        """The record, or None (also for an id that could not be a batch's)."""
        path = self._path(batch_id)
        try:
            return json.loads(path.read_text()) if path else None
        except FileNotFoundError:
            return None

    def create(self, record):
        with locked(self._lock):
            atomic_write(self._path(record["id"]), json.dumps(record, ensure_ascii=False))
        return record

    def update(self, batch_id, change):
        """Apply `change(record)` (a function that edits it in place) under the lock; the new record."""
        with locked(self._lock):
            record = self.get(batch_id)
            if record is None:
                raise KeyError(batch_id)
            change(record)
            atomic_write(self._path(batch_id), json.dumps(record, ensure_ascii=False))
        return record

    def list(self, owner=None):
        """Every record (of `owner` when given), newest first."""
        records = []
        for name in sorted(os.listdir(self.dir), reverse=True):
            if name.endswith(".json"):
                record = self.get(name[:-5])
                if record and (owner is None or record.get("owner") == owner):
                    records.append(record)
        return records

    @contextmanager
    def adding(self, owner, name):
        """Held while items are added to the owner's batch `name`: two uploads into one named batch
        (or two creating it) take turns, so neither queues an item the other is queuing. A batch
        without a name is always new and needs no turn."""
        if not name:
            yield
            return
        digest = hashlib.sha256(f"{owner}\0{name}".encode()).hexdigest()[:32]
        with locked(self.dir / f".adding-{digest}.lock"):
            yield

    def find(self, owner, name):
        """The owner's newest batch of this name, or None."""
        return next((r for r in self.list(owner) if r.get("name") == name), None)

    def export(self):
        """{id: record} of every batch (`flask store copy`)."""
        return {record["id"]: record for record in reversed(self.list())}

    def replace_all(self, records):
        """Make the folder hold exactly `records` ({id: record})."""
        with locked(self._lock):
            for name in os.listdir(self.dir):
                if name.endswith(".json") and name[:-5] not in records:
                    (self.dir / name).unlink()
            for batch_id, record in records.items():
                atomic_write(self._path(batch_id), json.dumps(record, ensure_ascii=False))


def open_batches(store):
    """The batch records beside a task store: in PostgreSQL when the tasks are there, else files."""
    if getattr(store, "conninfo", None):
        from batch_store_pg import PgBatchStore

        return PgBatchStore(store)
    return BatchStore(store.dir)
