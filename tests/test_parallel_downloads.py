"""Results are fetched on a bounded pool per provider: as many at once as the pool is wide, never
more, never the same task twice at once; a stopping studio starts no new download.

The result server answers slowly: each request waits until `width` requests are open at once (or
a second passes), so the peak of open connections it counts shows how many ran side by side."""

import threading
from datetime import timedelta

import pytest
from flask import Response

import scheduler
import task_query
from app import create_app
from tasks import utcnow
from tests.fakes import FakeServer, sample_png


class SlowFiles(FakeServer):
    """Serves /slow/<name>, counting the requests open at once."""

    name = "slow-files"

    def __init__(self, **kwargs):
        self.open_now = 0
        self.peak = {}                  # path prefix -> most requests open at once
        self.width = 1                  # a request waits until this many are open (or a second passed)
        self.hits = {}
        self.changed = threading.Condition()
        super().__init__(**kwargs)

    def add_routes(self, app):
        app.add_url_rule("/slow/<group>/<name>", "slow", self._slow)

    def _slow(self, group, name):
        with self.changed:
            self.open_now += 1
            self.hits[name] = self.hits.get(name, 0) + 1
            self.peak[group] = max(self.peak.get(group, 0), self._open_in(group, +1))
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.open_now >= self.width, timeout=1.0)
        try:
            return Response(sample_png(320, 240, seed=len(name) % 5), 200, mimetype="image/png")
        finally:
            with self.changed:
                self.open_now -= 1
                self._open_in(group, -1)

    def _open_in(self, group, step):
        counts = self.__dict__.setdefault("_by_group", {})
        counts[group] = counts.get(group, 0) + step
        return counts[group]


@pytest.fixture
def server():
    srv = SlowFiles()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def app(tmp_path, monkeypatch, server):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test",
                       "KLING_API_BASE": server.base_url})


def downloading(app, server, count, provider="kling", group="a"):
    store = app.extensions["task_store"]
    ids = []
    for i in range(count):
        task_id = f"20261122T1015{i:02d}000Z-{provider[:3]}{i:03d}"
        url = f"{server.base_url}/slow/{group}/{provider}-{i}.png"
        store.create({"id": task_id, "kind": "image", "provider": provider, "model": "m", "params": {"prompt": "p"},
                      "inputs": [], "status": "downloading", "error": None, "created_at": "2026-11-22T10:15:00.000Z",
                      "outputs": [{"kind": "image", "remote_url": url, "path": None, "meta": {},
                                   "remote_expires_at": (utcnow() + timedelta(days=1)).isoformat()}]})
        ids.append(task_id)
    return store, ids


def test_eight_results_are_fetched_four_at_a_time(app, server):
    store, ids = downloading(app, server, 8)
    server.width = 4
    task_query.download(store, {}, workers=4)
    assert [store.get(t)["status"] for t in ids] == ["succeeded"] * 8
    assert server.peak["a"] == 4            # side by side (one after another would be 1), and never more


def test_each_provider_has_its_own_pool(app, server):
    store, kling = downloading(app, server, 4, "kling", group="k")
    _, dashscope = downloading(app, server, 4, "dashscope", group="d")
    server.width = 4
    task_query.download(store, {}, workers=2)
    assert all(store.get(t)["status"] == "succeeded" for t in kling + dashscope)
    assert server.peak == {"k": 2, "d": 2}


def test_overlapping_passes_never_fetch_a_task_twice(app, server):
    store, ids = downloading(app, server, 4)
    server.width = 8                        # nobody is released early: both passes overlap fully
    passes = [threading.Thread(target=task_query.download, args=(store, {}), kwargs={"workers": 4})
              for _ in range(2)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join()
    assert all(store.get(t)["status"] == "succeeded" for t in ids)
    assert sorted(server.hits.values()) == [1, 1, 1, 1]


def test_a_stopping_studio_starts_no_download_and_a_later_pass_resumes(app, server):
    store, ids = downloading(app, server, 3)
    stopping = threading.Event()
    stopping.set()
    task_query.download(store, {}, stopping=stopping)
    assert server.hits == {} and all(store.get(t)["status"] == "downloading" for t in ids)
    task_query.download(store, {})
    assert all(store.get(t)["status"] == "succeeded" for t in ids)


def test_the_pool_width_is_a_setting_the_pipeline_uses(tmp_path, monkeypatch, server):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test",
                      "DOWNLOAD_WORKERS_PER_PROVIDER": 3})
    assert app.config["DOWNLOAD_WORKERS_PER_PROVIDER"] == 3
    monkeypatch.setattr(scheduler.Pipeline, "start", lambda self: None)
    monkeypatch.setattr(scheduler, "_stop_at_exit", lambda pipeline: None)
    assert scheduler.start(app).download_workers == 3
