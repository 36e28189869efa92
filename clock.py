"""The studio's one clock and its one timestamp format.

Wall-clock time in UTC (`utcnow`) for what is recorded and shown, written as ISO 8601 with
milliseconds and a Z (`iso`, e.g. 2026-11-22T10:15:00.123Z) and read back by `parse_iso`, which
also takes the providers' own forms. Durations measured within one process use `monotonic`, which
a step of the wall clock cannot move. Its own module because the store, the ledger and the task
model all need it and none of them may import the others.
"""

import time
from datetime import UTC, datetime

monotonic = time.monotonic


def utcnow():
    return datetime.now(UTC)


def iso(moment):
    """ISO 8601 UTC with a Z, e.g. 2026-11-22T10:15:00.123Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
