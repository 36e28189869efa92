"""Batch records behave alike in DATA_DIR/batches/ and in PostgreSQL (batch_store_pg.py): create,
get, update, list and find; updates from separate instances (as separate processes or nodes have)
lose nothing; `adding` makes two uploads into one named batch take turns; a PostgreSQL studio keeps
its batches there; and `flask store copy` moves them both ways unchanged."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import store_cli
from app import create_app
from batch_store import BatchStore
from batch_store_pg import PgBatchStore
from task_store_pg import PgTaskStore

pytest_plugins = ["tests.pg_server"]     # pg_server, pg_url: a throwaway PostgreSQL


def _batch(n, owner="u1", name=None):
    return {"id": f"b20260101T0000{n:02d}-{n:04x}", "owner": owner, "name": name or f"Batch {n}",
            "kind": "image", "provider": "local", "items": [], "created_at": f"2026-01-01T00:00:{n:02d}Z",
            "paused": False, "cancelled": False}


@pytest.fixture(params=["json", "pg"])
def make(request, tmp_path):
    """make() -> a new batch store on the same backing, as another process has."""
    stores = []

    def build():
        if request.param == "json":
            return BatchStore(tmp_path)
        url = stores[0].conninfo if stores else request.getfixturevalue("pg_url")
        stores.append(PgTaskStore(url, tmp_path, migrate=False))
        return PgBatchStore(stores[-1])
    yield build
    for store in stores:
        store.close()


def test_create_get_update_list_and_find(make):
    batches = make()
    for n, owner, name in ((1, "u1", "cats"), (2, "u2", "cats"), (3, "u1", "dogs"), (4, "u1", "cats")):
        batches.create(_batch(n, owner, name))
    other = make()
    assert other.get(_batch(3)["id"]) == _batch(3, "u1", "dogs")
    assert other.get("b-missing") is None and other.get("../etc/passwd") is None and other.get("") is None
    assert [b["id"] for b in other.list()] == [_batch(n)["id"] for n in (4, 3, 2, 1)]    # newest first
    assert [b["id"] for b in other.list(owner="u1")] == [_batch(n)["id"] for n in (4, 3, 1)]
    assert other.find("u1", "cats")["id"] == _batch(4)["id"]     # the owner's newest of that name
    assert other.find("u2", "cats")["id"] == _batch(2)["id"]
    assert other.find("u2", "dogs") is None

    updated = other.update(_batch(1)["id"], lambda r: r.update(paused=True, name="kittens"))
    assert updated["paused"] is True
    assert batches.get(_batch(1)["id"]) == updated
    assert batches.find("u1", "kittens")["id"] == _batch(1)["id"]    # the name column follows the record
    with pytest.raises(KeyError):
        batches.update("b-missing", lambda r: None)


def test_concurrent_updates_from_separate_instances_lose_nothing(make):
    make().create(_batch(1))
    instances, barrier = [make() for _ in range(4)], threading.Barrier(4)

    def add_items(i):
        barrier.wait()
        for k in range(15):
            instances[i].update(_batch(1)["id"], lambda r, key=f"{i}-{k}": r["items"].append({"key": key}))

    threads = [threading.Thread(target=add_items, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = [item["key"] for item in make().get(_batch(1)["id"])["items"]]
    assert sorted(keys) == sorted(f"{i}-{k}" for i in range(4) for k in range(15))


def test_adding_to_one_named_batch_takes_turns(make):
    first, second = make(), make()
    entered = threading.Event()
    order = []

    def upload():
        with second.adding("u1", "cats"):
            order.append("second")
            entered.set()

    with first.adding("u1", "cats"):
        order.append("first")
        thread = threading.Thread(target=upload)
        thread.start()
        with second.adding("u1", "dogs"), second.adding("u2", "cats"), second.adding("u1", ""):
            order.append("others")      # other names, other owners and unnamed batches never wait
        assert not entered.wait(0.5)    # the same name waits for its turn
    assert entered.wait(10)
    thread.join()
    assert order == ["first", "others", "second"]


def test_a_postgresql_studio_keeps_its_batches_in_the_database(tmp_path, monkeypatch, pg_url):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "SECRET_KEY": "test", "DATA_DIR": str(tmp_path / "data"),
                      "DATABASE_URL": pg_url})
    batches = app.extensions["batch_store"]
    assert isinstance(batches, PgBatchStore)
    batches.create(_batch(1))
    node = PgTaskStore(pg_url, tmp_path / "other-node", migrate=False)    # another node, its own DATA_DIR
    assert PgBatchStore(node).get(_batch(1)["id"]) == _batch(1)
    assert not list((tmp_path / "data" / "batches").glob("*.json"))
    node.close()
    app.extensions["task_store"].close()


def test_the_same_zip_sent_to_two_nodes_at_once_makes_one_batch_and_each_task_once(tmp_path, monkeypatch,
                                                                                    pg_url):
    from tests.test_batches import shot_zip, upload

    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    nodes = [create_app({"TESTING": True, "SECRET_KEY": "test", "DATA_DIR": str(tmp_path / name),
                         "DATABASE_URL": pg_url}) for name in ("a", "b")]
    data = shot_zip()
    clients = [node.test_client() for node in nodes for _ in range(2)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: upload(c, data).get_json(), clients))
    assert len({a["batch_id"] for a in answers}) == 1, answers      # one batch of that name, not two
    assert sum(a["created"] for a in answers) == 3, answers
    assert len(nodes[1].extensions["task_store"]) == 3
    assert [b["id"] for b in nodes[1].extensions["batch_store"].list()] == [answers[0]["batch_id"]]
    for node in nodes:
        node.extensions["task_store"].close()


def test_store_copy_moves_batches_both_ways_unchanged(tmp_path, pg_url):
    source = BatchStore(tmp_path / "a")
    for n in range(3):
        source.create(_batch(n, name=f"名前 {n}") | {"items": [{"name": f"{n}.png", "key": "k", "task_id": None,
                                                                "status": "refused", "error": {"code": "x"}}]})
    source.update(_batch(1)["id"], lambda r: r.update(paused=True))
    pg_store = PgTaskStore(pg_url, tmp_path / "node", migrate=False)
    lines = store_cli.copy_all(tmp_path / "a", pg_store, to_pg=True)
    assert "copied 3 batches" in " ".join(lines)
    assert PgBatchStore(pg_store).export() == source.export()
    with pytest.raises(ValueError, match="already holds batches"):
        store_cli.copy_all(tmp_path / "a", pg_store, to_pg=True)
    (tmp_path / "b").mkdir()
    lines = store_cli.copy_all(tmp_path / "b", pg_store, to_pg=False)
    assert "copied 3 batches" in " ".join(lines)
    assert BatchStore(tmp_path / "b").export() == source.export()
    assert BatchStore(tmp_path / "b").list() == source.list()
    pg_store.close()
