"""One poll round over 1,000 in-flight tasks: the pipeline's bounded pool against a serial loop.

    python bench/poll_bench.py [--tasks 1000] [--latency 0.1]

The provider is the local LiblibAI protocol server (tests/fakes/liblib.py; Liblib documents no
limit on status queries) made to answer every status query after `--latency` seconds. Both runs
poll the same tasks through the same code (`task_query.poll`), once with one worker (serial) and
once with the pipeline's pool, side by side in one process. A last run sets a documented query
rate (DashScope's 20 QPS) and shows the throttle keeps the pool under it.
"""

import argparse
import logging
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import task_query  # noqa: E402
from app import create_app  # noqa: E402
from providers.base import Throttle  # noqa: E402
from tasks import new_task_id, utcnow  # noqa: E402
from tests.fakes import liblib  # noqa: E402


def build(count, latency, data_dir):
    fake = liblib.Server(submit_qps=None, concurrency=count + 1, polls_to_finish=10**9)
    queries = []

    @fake.app.before_request
    def slow_status():
        from flask import request

        if request.path.endswith("/status"):
            queries.append(time.monotonic())
            time.sleep(latency)

    fake.start()
    app = create_app({"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "bench",
                      "LIBLIB_API_BASE": fake.base_url, "LIBLIB_ACCESS_KEY": liblib.ACCESS_KEY,
                      "LIBLIB_SECRET_KEY": liblib.SECRET_KEY})
    store = app.extensions["task_store"]
    now = utcnow()
    for i in range(count):
        generate_uuid = uuid.uuid4().hex
        fake.tasks[generate_uuid] = {"kind": "text2img", "status": 2, "polls": 0, "count": 1,
                                     "size": (1024, 1024), "outcome": None, "images": None, "points": 10}
        store.create({"id": new_task_id(now - timedelta(seconds=count - i)), "kind": "image",
                      "provider": "liblib", "model": "star-3-alpha", "params": {"prompt": f"task {i}", "n": 1},
                      "inputs": [], "status": "running", "provider_task_id": generate_uuid, "outputs": [],
                      "submitted_at": None, "error": None})
    return fake, app, queries


def poll_round(app, workers, round_no):
    """Seconds for one poll of every task (all made due by a clock `round_no` hours ahead)."""
    task_query.POLL_WORKERS = workers
    clock = lambda: utcnow() + timedelta(hours=round_no)  # noqa: E731
    started = time.perf_counter()
    task_query.poll(app.extensions["task_store"], app.extensions["providers"], clock)
    return time.perf_counter() - started


def peak_rate(stamps, window=1.0):
    """Most queries that started within any `window` seconds."""
    best, start = 0, 0
    for end in range(len(stamps)):
        while stamps[end] - stamps[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best / window


def main():
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    pool_workers = task_query.POLL_WORKERS
    with tempfile.TemporaryDirectory() as tmp:
        fake, app, queries = build(args.tasks, args.latency, tmp)
        try:
            # The pool first, then serial: any warm-up cost lands on the side that should win.
            pooled = poll_round(app, pool_workers, 1)
            pooled_rate = peak_rate(queries)
            queries.clear()
            serial = poll_round(app, 1, 2)
            queries.clear()
            provider = app.extensions["providers"]["liblib"]
            provider.query_throttle = Throttle(20)      # DashScope's documented query limit
            throttled_tasks = min(args.tasks, 200)
            throttled = poll_round_subset(app, pool_workers, 3, throttled_tasks)
            throttled_rate = peak_rate(queries)
        finally:
            fake.stop()
    print(f"{args.tasks} in-flight tasks, provider answers each status query in {args.latency * 1000:.0f} ms")
    print(f"{'run':<34} {'wall s':>8} {'peak queries/s':>15}")
    print(f"{'serial loop (1 worker)':<34} {serial:>8.2f}")
    print(f"{f'pipeline pool ({pool_workers} workers)':<34} {pooled:>8.2f} {pooled_rate:>15.0f}")
    print(f"{f'pool, throttled to 20/s ({throttled_tasks} tasks)':<34} {throttled:>8.2f} {throttled_rate:>15.0f}")
    print(f"\nspeed-up pool vs serial: {serial / pooled:.1f}x   (target >= 8x)")
    print("Liblib publishes no status-query limit; with a documented limit (20/s) the peak stayed at "
          f"{throttled_rate:.0f}/s")


def poll_round_subset(app, workers, round_no, count):
    """Like poll_round, but only the newest `count` tasks stay in flight."""
    store = app.extensions["task_store"]
    for task_id in store.ids_with_status(("running",))[:-count]:
        store.update(task_id, {"status": "failed"})
    return poll_round(app, workers, round_no)


if __name__ == "__main__":
    main()
