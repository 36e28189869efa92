"""The quota ledger and the rate limits behave alike on files and in PostgreSQL, and their
check-and-record steps stay atomic between separate instances (as separate processes or nodes)."""

import threading
from datetime import UTC, datetime, timedelta

import pytest

from ledger import Ledger
from pg_limits import PgLedger, PgRateLimiter
from rate_limit import RateLimiter
from task_store_pg import PgTaskStore
from tests.conftest import UnixClock

pytest_plugins = ["tests.pg_server"]     # pg_server, pg_url: a throwaway PostgreSQL

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)



@pytest.fixture(params=["json", "pg"])
def make(request, tmp_path):
    """make("ledger" | "limiter", clock) -> a new instance on the same backing, as another process has."""
    stores = []

    def build(what, clock=None):
        if request.param == "json":
            if what == "ledger":
                return Ledger(tmp_path)
            return RateLimiter(tmp_path, "secret", **({"clock": clock} if clock else {}))
        store = PgTaskStore(request.getfixturevalue("pg_url") if not stores else stores[0].conninfo, tmp_path,
                            migrate=False)
        stores.append(store)
        return PgLedger(store) if what == "ledger" else PgRateLimiter(store, "secret", clock)
    yield build
    for store in stores:
        store.close()


def test_spending_refunds_and_days(make):
    ledger = make("ledger")
    ledger.record("u1", "video", 2, "t1", NOON)
    ledger.record("u1", "video", 1, "t2", NOON)
    ledger.record("u1", "image", 4, "t3", NOON)
    ledger.record("u2", "video", 5, "t4", NOON)
    ledger.record("u1", "video", 7, "t5", NOON - timedelta(days=1))      # yesterday's
    other = make("ledger")
    assert other.spent_today("u1", "video", NOON) == 3
    assert other.spent_today("u1", "image", NOON) == 4
    assert other.spent_today("u1", "video", NOON - timedelta(hours=13)) == 7
    other.refund("u1", "video", "t1", NOON)
    other.refund("u1", "video", "t1", NOON)                               # once only
    assert ledger.spent_today("u1", "video", NOON) == 1
    assert ledger.spent_today("nobody", "video", NOON) == 0


def test_check_and_spend_is_atomic_between_instances(make):
    ledgers = [make("ledger") for _ in range(4)]
    granted, barrier = [], threading.Barrier(4)

    def spend(ledger, n):
        barrier.wait()
        for i in range(6):
            with ledger.locked():
                if ledger.spent_today("u1", "video", NOON) < 10:
                    ledger.record("u1", "video", 1, f"t{n}-{i}", NOON)
                    granted.append(1)

    threads = [threading.Thread(target=spend, args=(ledger, n)) for n, ledger in enumerate(ledgers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 10 and ledgers[0].spent_today("u1", "video", NOON) == 10


def test_hits_within_a_window_and_after_it(make):
    clock = UnixClock(1_000_000.0)
    limiter = make("limiter", clock)
    assert [limiter.hit("generate:u1", 3, 60) for _ in range(3)] == [None, None, None]
    assert make("limiter", clock).hit("generate:u1", 3, 60) == 61     # another instance sees them
    assert limiter.hit("generate:u2", 3, 60) is None
    clock.t += 30
    assert limiter.hit("generate:u1", 3, 60) == 31
    clock.t += 31
    assert limiter.hit("generate:u1", 3, 60) is None


def test_sign_in_attempts_slow_down_and_forgiveness_resets(make):
    clock = UnixClock(1_000_000.0)
    limiter = make("limiter", clock)
    keys = {"login:alice": 2, "ip:10.0.0.1": 5}
    assert limiter.attempt(keys) is None and limiter.attempt(keys) is None      # two free failures
    assert limiter.attempt(keys) == 1                                            # then 2 ** 0 s
    clock.t += 1
    assert limiter.attempt(keys) is None
    assert limiter.attempt(keys) == 2
    limiter.forgive(["login:alice", "ip:10.0.0.1"])
    assert make("limiter", clock).attempt(keys) is None


def test_parallel_hits_never_pass_the_limit_together(make):
    clock = UnixClock(1_000_000.0)
    limiters = [make("limiter", clock) for _ in range(4)]
    allowed, barrier = [], threading.Barrier(4)

    def hammer(limiter):
        barrier.wait()
        for _ in range(10):
            if limiter.hit("generate:u1", 30, 60) is None:
                allowed.append(1)

    threads = [threading.Thread(target=hammer, args=(limiter,)) for limiter in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allowed) == 30
