"""Health endpoints answer without auth and without calling providers."""

import os
import time

import health


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_needs_a_fresh_scheduler_heartbeat(app, client):
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["checks"]["scheduler"] == "no heartbeat yet"
    health.beat(app.config["DATA_DIR"])
    resp = client.get("/readyz")
    assert resp.status_code == 200 and resp.get_json()["ready"] is True


def test_readyz_reports_low_disk(app, client):
    health.beat(app.config["DATA_DIR"])
    app.config["READY_MIN_FREE_MB"] = 10**12
    body = client.get("/readyz").get_json()
    assert body["ready"] is False and "free" in body["checks"]["disk"]


def test_readyz_treats_a_heartbeat_from_the_future_as_stale(app, client):
    health.beat(app.config["DATA_DIR"])
    heartbeat = os.path.join(app.config["DATA_DIR"], health.HEARTBEAT_FILE)
    ahead = time.time() + 7200          # as it looks after the wall clock was set back two hours
    os.utime(heartbeat, (ahead, ahead))
    body = client.get("/readyz").get_json()
    assert body["ready"] is False and "future" in body["checks"]["scheduler"]


def test_heartbeat_check_allows_small_jitter_only(tmp_path):
    health.beat(tmp_path)
    written = os.path.getmtime(tmp_path / health.HEARTBEAT_FILE)
    assert health.heartbeat_check(tmp_path, written - 1) == "ok"
    assert "future" in health.heartbeat_check(tmp_path, written - 60)
    assert "ago" in health.heartbeat_check(tmp_path, written + health.HEARTBEAT_MAX_AGE + 1)
