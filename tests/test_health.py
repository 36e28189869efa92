"""Health endpoints answer without auth and without calling providers."""

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
