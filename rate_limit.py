"""Sliding-window rate limits shared by every worker process (login attempts, generate calls).

The windows live in `DATA_DIR/ratelimits.json` under an exclusive file lock, so the limit holds
for the whole studio, not per gunicorn worker. Only low-volume actions are limited here.
"""

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path


class RateLimiter:
    def __init__(self, data_dir, clock=time.time):
        self.path = Path(data_dir) / "ratelimits.json"
        self.lock_path = Path(data_dir) / "ratelimits.lock"
        self.clock = clock

    @contextmanager
    def _windows(self):
        """The stored windows under the lock; the dict left behind is written back atomically."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                windows = json.loads(self.path.read_text())
            except (FileNotFoundError, ValueError):
                windows = {}
            before = json.dumps(windows)
            yield windows
            if json.dumps(windows) != before:
                tmp = self.path.with_name(f"ratelimits.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({k: v for k, v in windows.items() if v}))
                os.replace(tmp, self.path)
        finally:
            os.close(fd)

    def hit(self, key, limit, window, record=True):
        """Count one event for `key` (only check, with record=False); returns None if allowed,
        else the seconds until it would be."""
        with self._windows() as windows:
            now = self.clock()
            # Forget every event older than the longest window in use (an hour).
            for name in list(windows):
                windows[name] = [t for t in windows[name] if now - t < 3600]
            recent = [t for t in windows.get(key, []) if now - t < window]
            if len(recent) >= limit:
                return max(1, int(window - (now - recent[0])) + 1)
            if record:
                windows[key] = [*windows.get(key, []), now]
            return None

    def clear(self, key):
        """Forget a key's events (a successful login clears its failures)."""
        with self._windows() as windows:
            windows.pop(key, None)
