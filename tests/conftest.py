"""Shared fixtures: an app on tmp_path with the scheduler off, pictures, and a pipeline driver."""

import base64
import functools
import io
import os
import time
from datetime import timedelta

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

import accounts
import task_query
from app import create_app
from clock import parse_iso
from tasks import Task, utcnow

ADMIN_PASSWORD = "admin-password-for-tests"
ADMIN_KEY = "sk-test-admin-key-0123456789"


class AdminClient(FlaskClient):
    """A test client that calls as the admin, with the API key from API_KEYS (no CSRF needed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.environ_base.setdefault("HTTP_AUTHORIZATION", f"Bearer {ADMIN_KEY}")


class UnixClock:
    """A clock in Unix seconds that stands still until a test moves it (`clock.t += 30`)."""

    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, start the `slow` tests first, spread over the workers.

    `--dist worksteal` hands each worker one contiguous share of the list at the start and later
    moves the tail of a busy worker's share to an idle one. Collected in file order, the slow
    tests landed wherever their file fell, two of them often on one worker and late, and the
    run waited for them at its end. Here each share begins with its own slow tests.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    slow = [item for item in items if item.get_closest_marker("slow")]
    if workers < 2 or not slow:
        return
    rest = [item for item in items if not item.get_closest_marker("slow")]
    heads = [slow[k::workers] for k in range(workers)]
    ordered, remaining = [], len(items)
    for k in range(workers):
        share = remaining // (workers - k)          # how worksteal sizes the first shares
        take = max(0, share - len(heads[k]))
        ordered += heads[k] + rest[:take]
        rest = rest[take:]
        remaining -= share
    items[:] = ordered + rest


@pytest.fixture(autouse=True)
def signed_in_as_admin(monkeypatch):
    """Login is always on: every app a test builds knows the admin key and password, and its test
    clients call as the admin unless a test asks for an anonymous FlaskClient itself."""
    monkeypatch.setenv("API_KEYS", ADMIN_KEY)
    monkeypatch.setenv("ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setattr(Flask, "test_client_class", AdminClient)
    # Cheaper scrypt in-process (N=2^10 instead of 2^15): the studio's own strength is in accounts.py.
    monkeypatch.setattr(accounts, "PASSWORD_METHOD", "scrypt:1024:8:1")


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test"})


@pytest.fixture
def client(app):
    return app.test_client()


@functools.cache
def picture(width=640, height=400, fmt="PNG", seed=0):
    """Encoded bytes of a photo-like picture (gradient + shapes + noise); made once per process
    for each set of arguments (the suite asks for the same few pictures a thousand times)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                    (x + y) * 255 // max(1, width + height - 2)], axis=-1).astype(np.int16)
    img[height // 4: height // 2, width // 4: width // 2] = (220, 40, 40)
    img += rng.integers(-12, 12, img.shape)
    out = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(out, fmt)
    return out.getvalue()


def b64(data, data_uri=None):
    text = base64.b64encode(data).decode()
    return f"data:{data_uri};base64,{text}" if data_uri else text


@pytest.fixture
def png_b64():
    return b64(picture())


def run_pipeline(app, task_id, until=("succeeded", "failed", "cancelled"), timeout=60, skip_waits=False,
                 real_time=False):
    """Call the pipeline jobs directly until the task reaches one of `until`.

    The jobs see a clock that jumps to the task's next_check_at whenever that is ahead of it, so a
    test waits for nothing the pipeline itself would wait for (poll intervals, backoff) and time
    still moves by exactly those waits. With `skip_waits` it jumps 10 minutes every round instead,
    past any backoff; with `real_time` it never jumps, for a test that compares the times the
    record holds with the real clock. Result-link expiry still uses the real clock; local renders
    run for real.
    """
    store = app.extensions["task_store"]
    providers = app.extensions["providers"]
    deadline = time.monotonic() + timeout
    ahead = timedelta()

    def clock():
        return utcnow() + ahead

    while time.monotonic() < deadline:
        if skip_waits:
            ahead += timedelta(minutes=10)
        task_query.dispatch(store, providers, clock)
        task_query.poll(store, providers, clock)
        task_query.download(store, providers, clock)
        task = store.get(task_id)
        Task.model_validate(task)           # every field the pipeline wrote is a documented one
        if task["status"] in until:
            return task
        due = parse_iso(task.get("next_check_at"))
        if due is not None and due > clock() and not real_time:
            ahead += due - clock()
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} stuck in {store.get(task_id)['status']}")
