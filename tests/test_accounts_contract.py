"""Accounts behave alike in accounts.json and in PostgreSQL (pg_accounts.py): users, the password
policy, sign-in, sessions, API keys, login links, webhooks — and the steps that must not race stay
atomic between separate instances (as separate processes or nodes have)."""

import threading
from pathlib import Path

import pytest

from accounts import ADMIN, Accounts, public
from app import create_app
from errors import Conflict, NotFound, ValidationError
from pg_accounts import PgAccounts
from task_store_pg import PgTaskStore
from tests.conftest import UnixClock

pytest_plugins = ["tests.pg_server"]     # pg_server, pg_url: a throwaway PostgreSQL

PASSWORD = "a long enough password 1"



@pytest.fixture(params=["json", "pg"])
def make(request, tmp_path):
    """make(clock=None, env_keys="") -> a new Accounts on the same backing, as another process has."""
    stores = []

    def build(clock=None, env_keys=""):
        extra = {"clock": clock} if clock else {}
        if request.param == "json":
            return Accounts(tmp_path, env_keys, **extra)
        url = stores[0].conninfo if stores else request.getfixturevalue("pg_url")
        stores.append(PgTaskStore(url, tmp_path, migrate=False))
        return PgAccounts(stores[-1], env_keys, **extra)
    yield build
    for store in stores:
        store.close()


def test_users_names_and_the_password_policy(make):
    accounts = make()
    alice = accounts.create_user(" Alice ", PASSWORD, images_per_day=3)
    assert alice["username"] == "alice" and alice["limits"]["images_per_day"] == 3
    assert "password_hash" not in alice
    with pytest.raises(Conflict):
        make().create_user("ALICE", "another long password 2")
    for name in ("", "a b", "x" * 33, "ünï"):
        with pytest.raises(ValidationError):
            accounts.create_user(name, PASSWORD)
    for weak in ("short", "aaaaaaaaaaaa", "password123", "bob-is-here-1"):
        with pytest.raises(ValidationError) as refused:
            accounts.create_user("bob", weak)
        assert refused.value.code == "weak_password"
    assert [u["username"] for u in make().users()] == ["alice"]
    assert make().set_limits(alice["id"], {"videos_per_day": 2, "nonsense": 1})["limits"]["videos_per_day"] == 2
    assert accounts.user(alice["id"])["limits"]["images_per_day"] == 3
    with pytest.raises(NotFound):
        accounts.set_limits("u-nobody", {})


def test_sign_in_checks_the_password(make):
    accounts = make()
    alice = accounts.create_user("alice", PASSWORD)
    assert make().check_password("Alice", PASSWORD)["id"] == alice["id"]
    assert accounts.check_password("alice", "wrong password here") is None
    assert accounts.check_password("nobody", PASSWORD) is None
    assert accounts.check_password("alice", None) is None


def test_sessions_end_on_sign_out_expiry_and_password_change(make):
    clock = UnixClock(2_000_000_000.0)
    accounts = make(clock)
    alice = accounts.create_user("alice", PASSWORD)
    laptop, phone, tablet = (accounts.create_session(alice["id"]) for _ in range(3))
    other = make(clock)
    assert other.session_user(laptop)["id"] == alice["id"]
    other.end_session(laptop)
    assert accounts.session_user(laptop) is None
    other.set_password(alice["id"], "a new long password 3", keep_session=phone)
    assert accounts.session_user(phone)["id"] == alice["id"]
    assert accounts.session_user(tablet) is None
    assert accounts.check_password("alice", PASSWORD) is None
    assert accounts.check_password("alice", "a new long password 3")
    clock.t += 14 * 24 * 3600
    assert accounts.session_user(phone) is None
    assert accounts.session_user("") is None and accounts.session_user(None) is None


def test_api_keys_are_scoped_expire_and_are_revoked(make):
    accounts = make(env_keys="sk-env-key-1")
    alice = accounts.create_user("alice", PASSWORD)
    key, record = accounts.create_api_key(alice["id"], "ci", scopes=("read",))
    assert "hash" not in record and record["hint"].endswith("…") and key not in str(record)
    user, scopes = make().user_for_key(key)
    assert user["id"] == alice["id"] and scopes == ("read",)
    with pytest.raises(ValidationError):
        accounts.create_api_key(alice["id"], "root", scopes=("admin",))
    expired, _ = accounts.create_api_key(alice["id"], "old", expires_in_days=-1)
    assert accounts.user_for_key(expired) == (None, ())
    second, second_record = accounts.create_api_key(alice["id"], "second")
    assert [k["name"] for k in make().api_keys(alice["id"])] == ["ci", "old", "second"]
    make().delete_api_key(alice["id"], record["id"])
    assert accounts.user_for_key(key) == (None, ())
    with pytest.raises(NotFound):
        accounts.delete_api_key("u-someone-else", second_record["id"])
    accounts.set_password(alice["id"], "a new long password 3", revoke_keys="all")
    assert accounts.user_for_key(second) == (None, ()) and accounts.api_keys(alice["id"]) == []
    assert make().user_for_key("nonsense") == (None, ())


def test_the_env_key_and_the_admin(make):
    accounts = make(env_keys="sk-env-key-1")
    assert accounts.ensure_admin(PASSWORD) is None
    user, scopes = make(env_keys="sk-env-key-1").user_for_key("sk-env-key-1")
    assert user["id"] == ADMIN and "admin" in scopes
    session = accounts.create_session(ADMIN)
    assert make().ensure_admin("another long password 2") is None       # kept: made once
    assert accounts.check_password("admin", PASSWORD)
    make().ensure_admin("another long password 2", reset=True)
    assert accounts.check_password("admin", "another long password 2") and accounts.session_user(session) is None


def test_two_nodes_starting_at_once_make_one_admin(make):
    nodes = [make() for _ in range(4)]
    start, generated = threading.Barrier(len(nodes)), []

    def boot(node):
        start.wait()
        generated.append(node.ensure_admin())
    _together(boot, nodes)
    made = [g for g in generated if g]
    assert len(made) == 1 and nodes[0].check_password("admin", made[0])


def test_deleting_a_user_removes_keys_and_sessions_and_never_reuses_the_id(make):
    accounts = make()
    alice = accounts.create_user("alice", PASSWORD)
    key, _ = accounts.create_api_key(alice["id"], "k")
    session = accounts.create_session(alice["id"])
    assert make().delete_user(alice["id"]) is True and accounts.delete_user(alice["id"]) is False
    assert accounts.user_for_key(key) == (None, ()) and accounts.session_user(session) is None
    again = accounts.create_user("alice", PASSWORD)
    assert again["id"] != alice["id"]


def test_webhook_url_and_secret(make):
    accounts = make()
    alice = accounts.create_user("alice", PASSWORD)
    secret = accounts.rotate_webhook_secret(alice["id"])
    assert secret.startswith("whsec_") and make().user(alice["id"])["webhook_secret"] == secret
    shown = make().set_webhook(alice["id"], "https://example.com/hook")
    assert shown["webhook_url"] == "https://example.com/hook" and "webhook_secret" not in shown
    assert accounts.user(alice["id"])["webhook_url_set_at"] > 0
    assert accounts.set_webhook(alice["id"], None)["webhook_url"] is None
    with pytest.raises(NotFound):
        accounts.rotate_webhook_secret("u-nobody")


def test_a_login_link_works_once_even_when_two_requests_use_it_at_once(make):
    accounts = make()
    alice = accounts.create_user("alice", PASSWORD)
    for _ in range(10):
        token = accounts.create_login_link(alice["id"])
        nodes, start, users = [make(), make()], threading.Barrier(2), []

        def redeem(node, token=token, start=start, users=users):
            start.wait()
            users.append(node.redeem_login_link(token))
        _together(redeem, nodes)
        assert sorted(u is None for u in users) == [False, True]
        assert accounts.redeem_login_link(token) is None
    assert accounts.redeem_login_link(accounts.create_login_link(alice["id"], ttl=-1)) is None
    assert accounts.redeem_login_link(None) is None


def test_export_and_replace_all_keep_everything(make):
    accounts = make()
    alice = accounts.create_user("alice", PASSWORD)
    accounts.create_api_key(alice["id"], "k")
    accounts.create_session(alice["id"])
    accounts.create_login_link(alice["id"])
    accounts.rotate_webhook_secret(alice["id"])
    data = accounts.export()
    accounts.delete_user(alice["id"])
    make().replace_all(data)
    assert accounts.export() == data
    assert public(accounts.user(alice["id"])) == public(data["users"][alice["id"]])


def test_a_postgresql_studio_keeps_its_accounts_there(tmp_path, monkeypatch, pg_url):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t",
                      "DATABASE_URL": pg_url})
    assert isinstance(app.extensions["accounts"], PgAccounts)
    made = app.test_client().post("/api/users", json={"username": "carol", "password": PASSWORD})
    assert made.status_code == 201, made.get_json()
    assert not (Path(app.config["DATA_DIR"]) / "accounts.json").exists()
    other = PgTaskStore(pg_url, tmp_path / "node2", migrate=False)
    assert PgAccounts(other).user_by_name("carol")["id"] == made.get_json()["id"]
    other.close()
    app.extensions["task_store"].close()


def _together(work, items):
    threads = [threading.Thread(target=work, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
