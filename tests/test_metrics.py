"""/metrics: who may scrape it, that it parses, and that its counters move, also under gunicorn."""

import json
import math
import re
from pathlib import Path

import pytest
import requests
import yaml
from flask.testing import FlaskClient
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_KEY, b64, picture, run_pipeline
from tests.live import LiveStudio
from tests.test_app import wait_for


def samples(text):
    """{(name, frozenset(labels)): value} of a scrape, parsed by prometheus_client's own parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed, name, **labels):
    wanted = set(labels.items())
    return sum(v for (n, ls), v in parsed.items() if n == name and wanted <= ls)


def anonymous(app, **environ):
    client = FlaskClient(app, app.response_class, use_cookies=False)
    client.environ_base.update(environ)
    return client


# ---- who may scrape -----------------------------------------------------------------------------

def test_without_a_token_only_loopback_clients_are_answered(app):
    assert anonymous(app).get("/metrics").status_code == 200            # the test client is 127.0.0.1
    assert anonymous(app, REMOTE_ADDR="::1").get("/metrics").status_code == 200
    far = anonymous(app, REMOTE_ADDR="203.0.113.9").get("/metrics")
    assert far.status_code == 403 and far.get_json()["error"]["code"] == "metrics_forbidden"
    # A user's API key does not open it either: the rule is the address.
    keyed = anonymous(app, REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION=f"Bearer {ADMIN_KEY}")
    assert keyed.get("/metrics").status_code == 403
    # Relayed by a proxy the studio does not trust: the real client is elsewhere.
    relayed = anonymous(app).get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert relayed.status_code == 403


@pytest.fixture
def token_app(tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test",
                       "METRICS_TOKEN": "scrape-token-0123456789"})


def test_with_a_token_the_bearer_token_is_required_from_anywhere(token_app):
    far = {"REMOTE_ADDR": "203.0.113.9"}
    assert anonymous(token_app).get("/metrics").status_code == 401      # loopback is not enough then
    assert anonymous(token_app, **far, HTTP_AUTHORIZATION="Bearer wrong").get("/metrics").status_code == 401
    assert anonymous(token_app, **far, HTTP_AUTHORIZATION=f"Bearer {ADMIN_KEY}").get("/metrics").status_code == 401
    ok = anonymous(token_app, **far, HTTP_AUTHORIZATION="Bearer scrape-token-0123456789").get("/metrics")
    assert ok.status_code == 200 and ok.mimetype == "text/plain"
    assert ok.headers["Content-Type"].startswith("text/plain; version=")


# ---- what it says -------------------------------------------------------------------------------

def test_counters_histograms_and_store_gauges_move_when_a_task_finishes(app, client):
    before = samples(anonymous(app).get("/metrics").get_data(as_text=True))
    answer = client.post("/generate", json={"image": b64(picture()), "prompt": "slow zoom in"})
    assert answer.status_code == 202
    task_id = answer.get_json()["task_id"]
    queued = samples(anonymous(app).get("/metrics").get_data(as_text=True))
    assert value(queued, "studio_tasks", status="queued") == 1
    assert value(queued, "studio_queue_depth", provider="local") == 1
    assert value(queued, "studio_tasks_created_total", provider="local", model="local-motion") == \
        value(before, "studio_tasks_created_total", provider="local", model="local-motion") + 1
    assert run_pipeline(app, task_id)["status"] == "succeeded"

    after = samples(anonymous(app).get("/metrics").get_data(as_text=True))
    key = {"kind": "video", "provider": "local", "model": "local-motion", "outcome": "succeeded"}
    assert value(after, "studio_tasks_finished_total", **key) == value(before, "studio_tasks_finished_total", **key) + 1
    assert value(after, "studio_tasks", status="succeeded") == 1 and value(after, "studio_tasks", status="queued") == 0
    assert value(after, "studio_queue_depth", provider="local") == 0
    for stage in ("submit", "poll", "download"):
        assert value(after, "studio_provider_call_seconds_count", stage=stage, provider="local") > \
            value(before, "studio_provider_call_seconds_count", stage=stage, provider="local")
    assert value(after, "studio_downloaded_bytes_total", provider="local") > \
        value(before, "studio_downloaded_bytes_total", provider="local")
    # Routes by endpoint name, never the raw path (task ids would make a series per task).
    assert value(after, "studio_http_request_seconds_count", endpoint="video_extend.generate", status="202") >= 1
    assert not any(task_id in dict(labels).get("endpoint", "") for _, labels in after)
    assert math.isnan(value(after, "studio_pipeline_heartbeat_age_seconds"))     # no pipeline runs in tests


def test_provider_errors_are_counted_by_code(app, client):
    before = samples(anonymous(app).get("/metrics").get_data(as_text=True))
    answer = client.post("/generate", json={"image": b64(picture()), "prompt": "zoom"})
    task_id = answer.get_json()["task_id"]
    app.extensions["task_store"].update(task_id, {"model": "no-such-model"})    # the engine refuses it
    assert run_pipeline(app, task_id)["status"] == "failed"
    after = samples(anonymous(app).get("/metrics").get_data(as_text=True))
    assert value(after, "studio_provider_errors_total", stage="submit", provider="local", code="provider_rejected") \
        == value(before, "studio_provider_errors_total", stage="submit", provider="local", code="provider_rejected") + 1
    assert value(after, "studio_tasks_finished_total", outcome="failed", model="no-such-model") == 1


# ---- under gunicorn, two workers -------------------------------------------------------------------

@pytest.mark.slow
def test_two_gunicorn_workers_answer_the_same_sums(tmp_path):
    folder = tmp_path / "metrics"
    with LiveStudio(tmp_path, gunicorn=True, env={"PROMETHEUS_MULTIPROC_DIR": str(folder)}) as studio:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        answer = requests.post(studio.url("/generate"), json={"image": b64(picture()), "prompt": "pan left"},
                               headers=headers, timeout=30)
        assert answer.status_code == 202, answer.text
        task_id = answer.json()["task_id"]
        wait_for(lambda: requests.get(studio.url(f"/api/tasks/{task_id}"), headers=headers, timeout=10)
                 .json()["status"] == "succeeded", 60, "the task to succeed")
        # Each request on its own connection: the two workers take turns accepting them.
        for _ in range(30):
            assert requests.get(studio.url("/readyz"), timeout=10).status_code in (200, 503)
        served = {}         # pid -> /readyz requests it timed, from each worker's own file
        for path in folder.glob("histogram_*.db"):
            pid = re.fullmatch(r"histogram_(\d+)\.db", path.name).group(1)
            entries = (json.loads(key) + [v] for key, v, _, _ in MmapedDict.read_all_values_from_file(str(path)))
            # Multiprocess histograms keep one value per bucket, not cumulative: their sum is the count.
            served[pid] = sum(v for _, name, labels, _, v in entries
                              if name == "studio_http_request_seconds_bucket" and labels["endpoint"] == "health.readyz")
        assert sorted(served.values())[0] > 0 and len(served) == 2, f"one worker served every request: {served}"
        key = {"kind": "video", "provider": "local", "model": "local-motion"}
        for _ in range(10):         # whichever worker answers, the sums are the same
            scrape = requests.get(studio.url("/metrics"), timeout=10)
            assert scrape.status_code == 200
            parsed = samples(scrape.text)
            assert value(parsed, "studio_tasks_created_total", **key) == 1
            assert value(parsed, "studio_tasks_finished_total", **key, outcome="succeeded") == 1
            assert value(parsed, "studio_http_request_seconds_count", endpoint="health.readyz") == 30
            assert value(parsed, "studio_tasks", status="succeeded") == 1
            assert 0 <= value(parsed, "studio_pipeline_heartbeat_age_seconds") < 30


def test_the_shipped_dashboard_and_alerts_name_only_metrics_the_studio_exports(app, client):
    root = Path(__file__).resolve().parent.parent / "deploy"
    answer = client.post("/generate", json={"image": b64(picture()), "prompt": "zoom"})
    run_pipeline(app, answer.get_json()["task_id"])
    exported = {family.name for family in text_string_to_metric_families(
        anonymous(app).get("/metrics").get_data(as_text=True))}
    dashboard = json.loads((root / "grafana" / "studio-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = yaml.safe_load((root / "prometheus" / "alerts.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    named = {re.sub(r"_(bucket|count|sum|total)$", "", name) for e in exprs for name in re.findall(r"studio_\w+", e)}
    assert named and named <= exported, named - exported


def test_the_metrics_files_are_kept_off_the_data_disk(tmp_path):
    # They are memory-mapped: a write to a mapped page on a full disk is a SIGBUS that kills the
    # worker, where a full data disk must answer 507 (tests/test_disk_full.py).
    with LiveStudio(tmp_path) as studio:
        assert requests.get(studio.url("/metrics"), timeout=10).status_code == 200
        assert not (studio.data_dir / "metrics").exists()
