"""Fair dispatch: a provider's free slots are shared between owners, and within an owner between
batches and single tasks, against the local Kling server with a cap of 1-2."""

import pytest

import providers.http
import task_query
import tasks
from app import create_app
from tests.fakes.kling import Server

AK, SK = "AK" + "a" * 30, "SK" + "s" * 30


@pytest.fixture(scope="module")
def shared_server():
    with Server.running(polls_to_finish=1, access_key=AK, secret_key=SK, concurrency_limit=2) as server:
        yield server


@pytest.fixture
def fake(shared_server):
    shared_server.reset()
    return shared_server


def studio(tmp_path, monkeypatch, fake, cap):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    monkeypatch.setattr(providers.http, "sleep", lambda seconds: None)
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t",
                       "KLING_API_BASE": fake.base_url, "KLING_ACCESS_KEY": AK, "KLING_SECRET_KEY": SK,
                       "HTTP_TIMEOUT_SECONDS": 2, "KLING_MAX_CONCURRENCY": cap})


def queue(app, owner, prompt, batch_id=None):
    """A queued Kling text-to-video task of `owner`, with the settings the route gives such a request
    (the route itself limits new tasks per minute, so the rest are made as batches make them)."""
    store = app.extensions["task_store"]
    if "params" not in app.extensions.setdefault("fair_test", {}):
        resp = app.test_client().post("/generate", json={"provider": "kling", "model_name": "kling-v1-6",
                                                         "prompt": "settings"})
        assert resp.status_code == 202, resp.get_json()
        app.extensions["fair_test"]["params"] = store.delete(resp.get_json()["task_id"])["params"]
    params = {**app.extensions["fair_test"]["params"], "prompt": prompt}
    record = tasks.create_task(store, app.config["DATA_DIR"], kind="video", provider="kling", model="kling-v1-6",
                               params=params, images={}, owner=owner, batch_id=batch_id)
    return record["id"]


def submitted_order(fake):
    """Our task ids in the order the Kling server received their submits."""
    return [body["external_task_id"] for body in fake.requests_to("/v1/videos/text2video")]


def run_until_submitted(app, fake, task_id, rounds=20):
    """Dispatch and poll (a finished task frees its slot) until `task_id` has been sent."""
    store, providers_ = app.extensions["task_store"], app.extensions["providers"]
    for _ in range(rounds):
        task_query.dispatch(store, providers_)
        if task_id in submitted_order(fake):
            return submitted_order(fake)
        task_query.poll(store, providers_)
        for t in store.ids_with_status(("submitted", "running")):
            store.update(t, {"next_check_at": None})
    raise AssertionError(f"{task_id} never submitted; order {submitted_order(fake)}")


def test_another_users_single_task_gets_one_of_the_first_two_slots(tmp_path, monkeypatch, fake):
    app = studio(tmp_path, monkeypatch, fake, cap=2)
    batch = [queue(app, "user-a", f"shot {i}", batch_id="batch-a") for i in range(50)]
    single = queue(app, "user-b", "one shot")
    store = app.extensions["task_store"]
    task_query.dispatch(store, app.extensions["providers"])
    # Oldest first would send two of the batch; fair shares send one of each owner's.
    assert submitted_order(fake) == [batch[0], single]
    assert store.get(single)["status"] == "submitted"
    assert sum(store.get(t)["status"] == "queued" for t in batch) == 49
    assert fake.answered[1303] == 0         # the cap still holds: no "too many tasks" from Kling


def test_with_one_slot_the_single_task_goes_next(tmp_path, monkeypatch, fake):
    app = studio(tmp_path, monkeypatch, fake, cap=1)
    batch = [queue(app, "user-a", f"shot {i}", batch_id="batch-a") for i in range(50)]
    single = queue(app, "user-b", "one shot")
    order = run_until_submitted(app, fake, single)
    assert order == [batch[0], single]
    assert all(fake.submissions[t] <= 1 for t in batch + [single])      # nothing sent twice


def test_an_owners_own_single_task_is_not_starved_by_their_batch(tmp_path, monkeypatch, fake):
    app = studio(tmp_path, monkeypatch, fake, cap=1)
    batch = [queue(app, "user-a", f"shot {i}", batch_id="batch-a") for i in range(30)]
    single = queue(app, "user-a", "a quick test")
    order = run_until_submitted(app, fake, single)
    assert order == [batch[0], single]


def test_two_batches_alternate(tmp_path, monkeypatch, fake):
    app = studio(tmp_path, monkeypatch, fake, cap=2)
    first = [queue(app, "user-a", f"a{i}", batch_id="batch-a") for i in range(6)]
    second = [queue(app, "user-c", f"c{i}", batch_id="batch-c") for i in range(6)]
    order = run_until_submitted(app, fake, second[3])
    assert order[:8] == [first[0], second[0], first[1], second[1], first[2], second[2], first[3], second[3]]
