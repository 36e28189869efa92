"""Several studio nodes on one PostgreSQL database: claims never overlap, an expired lease is
taken over, once-only jobs run on one leader, and two real studio processes sharing 24 Kling
tasks submit each exactly once — also when the leading node is killed with SIGKILL mid-flight."""

import os
import threading

import psycopg
import pytest
import requests

import pg_pipeline
from task_store_pg import PgTaskStore
from tests.conftest import b64, picture
from tests.fakes.kling import Server
from tests.test_app import wait_for
from tests.test_restart import AK, HTTP, SK, Studio
from tests.test_task_store import _task

pytest_plugins = ["tests.pg_server"]     # pg_server, pg_url: a throwaway PostgreSQL


def _stores(pg_url, tmp_path, n):
    return [PgTaskStore(pg_url, tmp_path, migrate=False) for _ in range(n)]


def test_concurrent_claims_never_overlap_and_renew_their_own(pg_url, tmp_path):
    stores = _stores(pg_url, tmp_path, 4)
    records = [_task(i) | {"status": "running"} for i in range(200)]
    for record in records:
        stores[0].create(record)
    got, barrier = {}, threading.Barrier(4)

    def node(i):
        barrier.wait()
        got[i] = [task_id for _ in range(3) for task_id in stores[i].claim(["running"], f"n{i}", 30, 20)]

    threads = [threading.Thread(target=node, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each node renews its own 20 first on every pass, so it holds exactly 20 and no id is shared.
    per_node = {i: set(ids) for i, ids in got.items()}
    assert all(len(ids) == 20 for ids in per_node.values())
    assert len(set().union(*per_node.values())) == 80
    assert {task_id: f"n{i}" for i, ids in per_node.items() for task_id in ids} == stores[0].claims()
    for store in stores:
        store.close()


def test_an_expired_lease_is_taken_over_and_a_release_hands_tasks_on(pg_url, tmp_path):
    a, b = _stores(pg_url, tmp_path, 2)
    for i in range(5):
        a.create(_task(i) | {"status": "submitted"})
    ids = sorted(_task(i)["id"] for i in range(5))
    assert a.claim(["submitted"], "a", 30, 10) == ids       # the only node: all of them
    assert a.claim(["submitted"], "a", -1, 10) == ids       # renewed with a lease already run out (a "died")
    assert b.claim(["submitted"], "b", 30, 10) == ids[:3]   # b takes over its fair share of 5 over 2 nodes
    assert a.claim(["submitted"], "a", 30, 10) == ids[3:]   # a, back, keeps its own; b's are b's
    assert b.claim(["submitted"], "b", 30, 10) == ids[:3]
    assert a.release_claims("a") == 2                       # a stops: its tasks and its share go to b
    assert b.claim(["submitted", "running"], "b", 30, 10) == ids
    assert a.claim(["submitted"], "a", 30, 10) == [] and a.claim(["queued"], "a", 30, 10) == []
    a.close()
    b.close()


def test_nodes_take_fair_shares_and_shed_what_is_beyond_theirs(pg_url, tmp_path):
    a, b, c = _stores(pg_url, tmp_path, 3)
    for i in range(12):
        a.create(_task(i) | {"status": "running"})
    ids = sorted(_task(i)["id"] for i in range(12))
    assert a.claim(["running"], "a", -1, 100) == ids        # alone, and (for the test) expiring at once
    assert b.claim(["running"], "b", 30, 100) == ids[:6]    # two nodes: six each
    assert c.claim(["running"], "c", 30, 100) == ids[6:10]  # three nodes: four each, from what is free
    assert a.claim(["running"], "a", 30, 100) == ids[10:]   # a keeps the rest (up to its share)
    assert sorted(b.claims().items()) == sorted(
        [(i, "b") for i in ids[:6]] + [(i, "c") for i in ids[6:10]] + [(i, "a") for i in ids[10:]])
    for store in (a, b, c):
        store.close()


def test_one_cluster_leader_and_leadership_passes_when_its_session_ends(pg_url, tmp_path):
    a, b = _stores(pg_url, tmp_path, 2)
    node_a, node_b = pg_pipeline.SharedPipeline(a, "a"), pg_pipeline.SharedPipeline(b, "b")
    assert node_a.may_run("_backup") and not node_b.may_run("_backup")
    assert node_b.may_run("_poll") and node_b.may_run("_download")      # shared jobs run everywhere
    with psycopg.connect(pg_url, autocommit=True) as admin:             # a's session dies (node killed)
        admin.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                      "WHERE application_name LIKE 'studio-leader a:%'")
    assert node_b.may_run("_dispatch") and not node_a.may_run("_janitor")     # b's next beat leads
    node_b.stop()
    assert node_a.may_run("_compact")
    node_a.stop()
    a.close()
    b.close()


def _leader(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT application_name FROM pg_stat_activity "
                            "WHERE application_name LIKE 'studio-leader %'").fetchall()
    return rows[0][0].split()[1].split(":")[0] if rows else None


@pytest.mark.slow
def test_two_nodes_share_the_work_and_survive_a_killed_leader(pg_url, tmp_path):
    fake = Server(polls_to_finish=3, access_key=AK, secret_key=SK, concurrency_limit=4)
    fake.start()
    nodes = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        studio = Studio(folder, fake.base_url)
        studio.env.update(DATA_DIR=str(tmp_path / "shared"), BACKUP_DIR=str(tmp_path / "backups"),
                          DATABASE_URL=pg_url, NODE_NAME=name,
                          PIPELINE_LEASE_SECONDS="3", KLING_MAX_CONCURRENCY="4")
        nodes[name] = studio
    store = PgTaskStore(pg_url, tmp_path, migrate=False)
    try:
        for studio in nodes.values():
            studio.start()
        ids = []
        for i in range(12):          # three rounds of the shared cap of 4; under the per-user limit of 30 a minute
            resp = HTTP.post(nodes["ab"[i % 2]].base + "/generate", timeout=10, json={
                "provider": "kling", "model_name": "kling-v1-6", "image": b64(picture(seed=i % 4)),
                "prompt": f"task {i}", "duration": "5", "mode": "std"})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["task_id"])
        # Both nodes hold claims on tasks in flight before the leader is killed.
        try:
            wait_for(lambda: {n.split(":")[0] for n in store.claims().values()} == {"a", "b"}, 60,
                     "claims on both nodes")
        except AssertionError:
            for name in nodes:
                print(name, (tmp_path / name / "studio.log").read_text()[-3000:])
            raise
        leader = wait_for(lambda: _leader(pg_url), 30, "a cluster leader")
        held = {t for t, n in store.claims().items() if n.startswith(leader + ":")}
        nodes[leader].kill()
        survivor = "b" if leader == "a" else "a"

        def all_done():
            return all(r["status"] in ("succeeded", "failed", "cancelled") for r in store.list(limit=100)[0])
        wait_for(all_done, 180, "every task to finish on the survivor")
        final = {r["id"]: r for r in store.list(limit=100)[0]}
        assert {t: r["status"] for t, r in final.items()} == {t: "succeeded" for t in ids}
        assert dict(fake.submissions) == {task_id: 1 for task_id in ids}     # none was ever sent twice
        # The cap held across both nodes: the fake never refused a submit for too many in flight.
        assert not [t for t, r in final.items() if "resource pack" in str(r.get("last_error"))]
        assert _leader(pg_url) == survivor
        assert held, "the killed node held no claims"
        for record in final.values():
            for out in record["outputs"]:
                assert os.path.getsize(tmp_path / "shared" / out["path"]) == out["bytes"]
        assert requests.get(nodes[survivor].base + "/healthz", timeout=5).ok
    finally:
        for studio in nodes.values():
            studio.stop()
        store.close()
        fake.stop()
