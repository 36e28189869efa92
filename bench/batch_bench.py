"""A 1,000-task batch through a real pipeline, and what it does to another user's single task.

    python bench/batch_bench.py [--tasks 1000] [--latency 0.1] [--cap 20] [--oldest-first]

The provider is the local Kling protocol server (tests/fakes/kling.py) made to answer every call
(submit, status query, result file) after `--latency` seconds; the studio caps Kling at `--cap`
tasks in flight. A real `scheduler.Pipeline` runs its jobs (dispatch, poll, download every second;
status queries every second). The bench prints the batch's wall time and the process's peak memory
(ru_maxrss: the studio and the fake server share the process), and the latency (created to
succeeded) of one task of another user submitted while the batch runs, side by side with the same
task's latency on an idle studio. `--oldest-first` replaces the fair order by the plain
oldest-first order the dispatcher had before, for comparison.
"""

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import scheduler  # noqa: E402
import task_query  # noqa: E402
import tasks  # noqa: E402
from app import create_app  # noqa: E402
from tests.fakes.kling import Server  # noqa: E402

AK, SK = "AK" + "a" * 30, "SK" + "s" * 30
MODEL = "kling-v1-6"
KEY = "sk-bench-key-0123456789abcdef"


def oldest_first(waiting, load, has_room, served):
    """The dispatcher's order before fair shares: every waiting task that fits, oldest first."""
    return (task for task in waiting if has_room(task))


def start_server(latency, cap):
    server = Server(polls_to_finish=2, access_key=AK, secret_key=SK, concurrency_limit=cap + 5)

    @server.app.before_request
    def slow():
        time.sleep(latency)

    server.start()
    return server


def studio(data_dir, server, cap):
    app = create_app({"TESTING": True, "DATA_DIR": str(data_dir), "SECRET_KEY": "bench",
                      "KLING_API_BASE": server.base_url, "KLING_ACCESS_KEY": AK, "KLING_SECRET_KEY": SK,
                      "KLING_MAX_CONCURRENCY": cap, "POLL_INTERVAL_SECONDS": 1, "API_KEYS": KEY,
                      "ADMIN_PASSWORD": "bench-admin-password"})
    pipeline = scheduler.Pipeline(app.extensions["task_store"], app.extensions["providers"], data_dir=data_dir,
                                  backup_dir=Path(data_dir) / "backups")
    return app, pipeline


def settings(app):
    """The settings the video route gives a Kling text-to-video request (the one route call)."""
    resp = app.test_client().post("/generate", json={"provider": "kling", "model_name": MODEL, "prompt": "x"},
                                  headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 202, resp.get_json()
    return app.extensions["task_store"].delete(resp.get_json()["task_id"])["params"]


def queue(app, params, owner, prompt, batch_id=None):
    return tasks.create_task(app.extensions["task_store"], app.config["DATA_DIR"], kind="video", provider="kling",
                             model=MODEL, params={**params, "prompt": prompt}, images={}, owner=owner,
                             batch_id=batch_id)["id"]


def wait_for(store, ids, timeout):
    """Seconds until every task in `ids` has finished (and how many succeeded)."""
    started, left = time.monotonic(), set(ids)
    while left and time.monotonic() - started < timeout:
        left = {t for t in left if store.get(t)["status"] not in tasks.TERMINAL}
        time.sleep(0.05)
    if left:
        raise SystemExit(f"{len(left)} tasks did not finish within {timeout} s")
    return time.monotonic() - started, sum(store.get(t)["status"] == "succeeded" for t in ids)


def single_latency(app, params, store):
    created = time.monotonic()
    task_id = queue(app, params, "user-b", "one shot of another user")
    seconds, ok = wait_for(store, [task_id], 600)
    assert ok == 1, store.get(task_id)
    return time.monotonic() - created


def idle_run(tmp, server, cap):
    app, pipeline = studio(Path(tmp) / "idle", server, cap)
    params = settings(app)
    pipeline.start()
    try:
        return single_latency(app, params, app.extensions["task_store"])
    finally:
        pipeline.stop()


def batch_run(tmp, server, count, cap):
    app, pipeline = studio(Path(tmp) / "batch", server, cap)
    params = settings(app)
    store = app.extensions["task_store"]
    batch = [queue(app, params, "user-a", f"shot {i}", batch_id="bench-batch") for i in range(count)]
    started = time.monotonic()
    pipeline.start()
    try:
        while sum(store.get(t)["status"] != "queued" for t in batch[: cap * 2]) < cap:
            time.sleep(0.05)        # the batch holds the provider's slots: now the other user comes
        latency = single_latency(app, params, store)
        seconds, ok = wait_for(store, batch, 3600)
        return time.monotonic() - started, ok, latency
    finally:
        pipeline.stop()


def main():
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--cap", type=int, default=20)
    parser.add_argument("--oldest-first", action="store_true", help="the order before fair shares")
    args = parser.parse_args()
    if args.oldest_first:
        task_query._fair_order = oldest_first
    server = start_server(args.latency, args.cap)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)     # one line per fake request otherwise
    # A dispatch pass of 100 ms submits outlasts the 1 s interval: APScheduler says so every second.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            idle = idle_run(tmp, server, args.cap)
            wall, ok, busy = batch_run(tmp, server, args.tasks, args.cap)
    finally:
        server.stop()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"batch of {args.tasks} tasks of one user, Kling server answering every call in "
          f"{args.latency * 1000:.0f} ms, {args.cap} in flight at most, "
          f"{'oldest-first' if args.oldest_first else 'fair'} dispatch")
    print(f"{'wall time of the batch':<44} {wall:>8.1f} s  ({ok} succeeded, {args.tasks / wall:.1f} tasks/s)")
    print(f"{'peak memory (ru_maxrss, studio + fake server)':<44} {peak_mb:>8.0f} MB")
    print(f"{'single task of another user, idle studio':<44} {idle:>8.1f} s")
    print(f"{'the same while the batch runs':<44} {busy:>8.1f} s  (ratio {busy / idle:.1f}x)")


if __name__ == "__main__":
    main()
