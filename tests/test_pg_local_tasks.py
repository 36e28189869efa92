"""Local-engine tasks on several nodes (pg_pipeline.STICKY_PROVIDERS): the node that submitted a
local task keeps it while it heart-beats, so it is rendered once, not again by every node that
polls; when that node stops heart-beating, another node takes its local tasks over and finishes
them — adopting a render it had finished, rendering once again one it had not."""

import fcntl
import logging
import threading
from datetime import timedelta

import media
import pg_pipeline
import tasks
from providers.local import LocalProvider
from scheduler import Pipeline
from task_store_pg import PgTaskStore
from tasks import Task, utcnow
from tests.conftest import b64, picture
from tests.test_app import wait_for

pytest_plugins = ["tests.pg_server"]     # pg_server, pg_url: a throwaway PostgreSQL

ACTIVE = ["submitted", "running", "downloading"]


class Clock:
    """The pipeline's wall clock, a minute further on every call: poll intervals never hold a test up."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return utcnow() + timedelta(minutes=self.calls)


def _node(pg_url, data_dir, name):
    """One studio node: its own store instance (its own connections), local engine and pipeline."""
    store = PgTaskStore(pg_url, data_dir, migrate=False)
    engine = LocalProvider({"DATA_DIR": data_dir, "LOCAL_WORKERS": 2, "LOCAL_MAX_CONCURRENCY": 3})
    return Pipeline(store, {"local": engine}, Clock(), data_dir=data_dir, backup_dir=data_dir / "backups",
                    shared=pg_pipeline.SharedPipeline(store, node_name=name))


def _local_task(node, data_dir, seed):
    image = media.decode_image(b64(picture(320, 320, seed=seed)), "image")
    return tasks.create_task(node.store, data_dir, kind="image", provider="local", model="local-filters",
                             params={"prompt": f"look {seed}", "n": 1, "aspect_ratio": "1:1"},
                             images={"reference": image})["id"]


def _rendered(caplog, task_id):
    return sum(r.getMessage().startswith(f"local task {task_id} rendered") for r in caplog.records)


def _run_until_succeeded(ids, *nodes, each_pass=lambda: None):
    """Poll and download passes of each node, in this order, until every task in `ids` succeeded."""
    def done():
        for node in nodes:
            node._poll()
            node._download()
        each_pass()
        return all(nodes[0].store.get(i)["status"] == "succeeded" for i in ids)
    wait_for(done, 60, "the local tasks to succeed")


def _dies(node):
    """The node stops heart-beating (as a killed process does): its row in pipeline_nodes goes stale."""
    node.store.run(lambda c: c.execute("UPDATE pipeline_nodes SET seen = now() - interval '1 hour' "
                                       "WHERE node = %s", (node.shared.node,)))


def _stop(*nodes):
    for node in nodes:
        node.stop()         # closes the engines, gives up the leadership and the claims
        node.store.close()


def test_a_local_task_is_rendered_once_by_the_node_that_submitted_it(pg_url, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="providers.local")
    a, b = _node(pg_url, tmp_path, "a"), _node(pg_url, tmp_path, "b")
    ids = [_local_task(a, tmp_path, seed) for seed in range(3)]
    assert a.shared.may_run("_dispatch") and not b.shared.may_run("_dispatch")    # a leads: a dispatches
    a._dispatch()
    assert {a.store.get(i)["status"] for i in ids} == {"submitted"}

    def b_gets_none():
        assert not set(b.shared.claimed.ids_with_status(ACTIVE)) & set(ids)
    _run_until_succeeded(ids, b, a, each_pass=b_gets_none)     # b asks first: it may not take a's tasks
    for task_id in ids:
        task = a.store.get(task_id)
        Task.model_validate(task)
        assert task["status"] == "succeeded", task
        assert _rendered(caplog, task_id) == 1
    assert not [r for r in caplog.records if "rendering it again" in r.getMessage()]
    _stop(a, b)


def test_a_dead_nodes_local_tasks_are_taken_over_and_finished(pg_url, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="providers.local")
    a, b = _node(pg_url, tmp_path, "a"), _node(pg_url, tmp_path, "b")
    finished, unfinished = _local_task(a, tmp_path, 1), _local_task(a, tmp_path, 2)
    out_dir = a.providers["local"].output_dir(unfinished)
    out_dir.mkdir(parents=True)
    with open(out_dir / ".render.lock", "a") as held:       # the render of `unfinished` waits for it
        fcntl.flock(held, fcntl.LOCK_EX)
        assert a.shared.may_run("_dispatch")
        a._dispatch()
        assert sorted(a.shared.claimed.ids_with_status(ACTIVE)) == sorted([finished, unfinished])
        # a renders `finished`, then dies before its poll records it
        wait_for((a.providers["local"].output_dir(finished) / "done.json").exists, 30, "a's first render")
        job = a.providers["local"]._jobs[unfinished]
        closing = threading.Thread(target=a.providers["local"].close)   # a dies: its renders stop
        closing.start()
        assert job.stop.wait(10)
        assert b.shared.claimed.ids_with_status(ACTIVE) == []          # a still heart-beats: nothing for b
        _dies(a)
        assert sorted(b.shared.claimed.ids_with_status(ACTIVE)) == sorted([finished, unfinished])
        fcntl.flock(held, fcntl.LOCK_UN)
    _run_until_succeeded([finished, unfinished], b)
    closing.join()
    for task_id in (finished, unfinished):
        assert b.store.get(task_id)["status"] == "succeeded", b.store.get(task_id)
        assert _rendered(caplog, task_id) == 1        # `finished` adopted from disk, `unfinished` rendered by b
    assert set(b.store.claims().values()) == {b.shared.node}
    _stop(a, b)
