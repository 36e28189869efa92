"""Rate limits shared by every worker process: generate calls, and sign-in attempts.

The counters live in `DATA_DIR/ratelimits.json` under an exclusive file lock, so a limit holds
for the whole studio, not per gunicorn worker, and every check records in the same locked step
(40 parallel requests cannot all pass a check made before any of them is counted). Keys are
stored as keyed hashes: the file never holds what people typed as user names or their addresses.

Sign-in attempts are slowed rather than locked out: the first few failures are free, then each
attempt must wait a delay that doubles with every further failure, up to a cap. A guesser gets a
handful of tries an hour, while the real owner waits seconds, not a quarter of an hour, and a
browser that has signed in before is throttled on its own (see auth.py).
"""

import hashlib
import hmac
import json
import time
from contextlib import contextmanager
from pathlib import Path

from fileio import atomic_write, locked

FORGET_AFTER = 3600         # seconds after which an event no longer counts
MAX_DELAY = 900


def login_delay(failures, free):
    """Seconds an attempt must wait after the last failure, once `free` failures are spent."""
    return 0 if failures < free else min(MAX_DELAY, 2 ** (failures - free))


class RateLimiter:
    def __init__(self, data_dir, secret, clock=time.time):
        self.path = Path(data_dir) / "ratelimits.json"
        self.lock_path = Path(data_dir) / "ratelimits.lock"
        self._secret = (secret or "").encode()
        self.clock = clock

    def _name(self, key):
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()[:32]

    @contextmanager
    def _windows(self):
        """The stored events under the lock, old ones forgotten; what is left is written back."""
        with locked(self.lock_path):
            try:
                windows = json.loads(self.path.read_text())
            except (FileNotFoundError, ValueError):
                windows = {}
            before = json.dumps(windows)
            now = self.clock()
            windows = {k: [t for t in v if now - t < FORGET_AFTER] for k, v in windows.items()}
            yield windows, now
            if json.dumps(windows) != before:
                atomic_write(self.path, json.dumps({k: v for k, v in windows.items() if v}))

    def hit(self, key, limit, window):
        """Count one event for `key` if fewer than `limit` happened in the last `window` seconds.
        Returns None when it was allowed (and counted), else the seconds until it would be."""
        name = self._name(key)
        with self._windows() as (windows, now):
            recent = [t for t in windows.get(name, []) if now - t < window]
            if len(recent) >= limit:
                return max(1, int(window - (now - recent[0])) + 1)
            windows[name] = [*windows.get(name, []), now]
            return None

    def attempt(self, keys):
        """One sign-in attempt against several counters ({key: free failures}), checked and
        recorded in one step. Returns None when it may go ahead (it is counted as a failure until
        `forgive` says otherwise), else the seconds to wait."""
        names = {self._name(key): free for key, free in keys.items()}
        with self._windows() as (windows, now):
            wait = 0
            for name, free in names.items():
                events = windows.get(name, [])
                if events:
                    wait = max(wait, events[-1] + login_delay(len(events), free) - now)
            if wait > 0:
                return max(1, int(wait + 0.999))
            for name in names:
                windows[name] = [*windows.get(name, []), now]
            return None

    def forgive(self, keys):
        """A successful sign-in: forget the failures counted for these keys."""
        with self._windows() as (windows, _now):
            for key in keys:
                windows.pop(self._name(key), None)
