"""Subprocess entry points for tests/test_task_store.py: `python -m tests.store_worker CMD ...`.

The store's guarantees are about separate processes (flock, per-process index, kill -9), so the
tests drive real interpreters through these commands instead of threads or mocks.
"""

import json
import os
import random
import signal
import sys
import time
import traceback

import task_store
from task_store import TaskStore


def say(line):
    # One write per line, flushed at once: the parent may SIGKILL us right after.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def rmw(data_dir, worker, count, ids):
    """Append `count` unique tokens to the `tokens` lists of `ids`, read-modify-write."""
    store = TaskStore(data_dir)
    say("ready")
    sys.stdin.readline()  # start together with the other workers: maximum contention
    rng = random.Random(worker)
    for i in range(count):
        token = f"w{worker}-{i:03d}"
        store.update(rng.choice(ids), lambda r, t=token: r["tokens"].append(t))
    say("done")


def crash(data_dir, round_no):
    """Write until killed; "B op id value" before each call, "A ..." once it has returned."""
    store = TaskStore(data_dir)
    rng = random.Random(round_no)
    ids = [r["id"] for r in store.list(limit=len(store))[0]]
    say("ready")
    seq = 0
    while True:
        seq += 1
        value = f"r{round_no}-{seq}"
        roll = rng.random()
        if roll < 0.02:
            say("B compact - -")
            store.compact()
            say("A compact - -")
        elif roll < 0.25 and ids:
            task_id = ids.pop(rng.randrange(len(ids)))
            say(f"B delete {task_id} -")
            store.delete(task_id)
            say(f"A delete {task_id} -")
        elif roll < 0.60 and ids:
            task_id = rng.choice(ids)
            say(f"B update {task_id} {value}")
            store.update(task_id, {"value": value, "pad": "x" * rng.randrange(4000)})
            say(f"A update {task_id} {value}")
        else:
            task_id = f"t{round_no:03d}-{seq:05d}"
            say(f"B create {task_id} {value}")
            # Records of up to a few pages make a short (torn) write on kill possible.
            store.create({"id": task_id, "value": value, "pad": "x" * rng.randrange(6000)})
            say(f"A create {task_id} {value}")
            ids.append(task_id)


def reader(data_dir, n_stable, seconds):
    """Read in a loop until the record "z-stop" appears; report what looked wrong as JSON."""
    store = TaskStore(data_dir)
    rng = random.Random(0)
    stable = {f"a-{i:04d}" for i in range(n_stable)}
    seen_new, problems = set(), []
    iterations, swaps, inode, ids = 0, 0, None, set()
    say("ready")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        iterations += 1
        # Count file swaps seen between loops (inode numbers get reused, so not distinct ones).
        current = os.stat(store.path).st_ino
        swaps += inode is not None and current != inode
        inode = current
        try:
            if len(store) < n_stable:
                problems.append(f"len {len(store)} < {n_stable}")
            i = rng.randrange(n_stable)
            record = store.get(f"a-{i:04d}")
            if record is None or record["value"] != i:
                problems.append(f"get a-{i:04d} -> {record!r}")
            records, total = store.list(limit=10**6)
            ids = {r["id"] for r in records}
            if len(records) != total:
                problems.append(f"list returned {len(records)} of total {total}")
            if stable - ids:
                problems.append(f"stable records missing: {sorted(stable - ids)[:5]}")
            new = {x for x in ids if x.startswith("n-")}
            if seen_new - new:
                problems.append(f"records seen before are gone: {sorted(seen_new - new)[:5]}")
            seen_new |= new
            page, total = store.list(status="stable", offset=rng.randrange(n_stable), limit=50)
            if total != n_stable or not page or any(r["status"] != "stable" for r in page):
                problems.append(f"filtered page wrong: total {total}, {len(page)} records")
        except Exception:
            problems.append(traceback.format_exc())
        if len(problems) > 20 or "z-stop" in ids:
            break
    say(json.dumps({"iterations": iterations, "problems": problems, "swaps": swaps,
                    "seen_new": sorted(seen_new), "final_ids": sorted(ids)}))


def ops(data_dir, spec):
    """Apply a JSON list of [op, args...] to a store; print the results as one JSON line."""
    store = TaskStore(data_dir)
    results = []
    for op, *args in json.loads(spec):
        if op == "update":
            results.append(store.update(args[0], args[1]))
        else:
            results.append(getattr(store, op)(*args))
    say(json.dumps(results))


def slow_increment(record):
    time.sleep(0.0005)  # a little work inside the read-modify-write, as real updates do
    record["n"] += 1


def forkrace(data_dir):
    """Fork 4 writers from a process that already wrote (gunicorn --preload); print the count."""
    store = TaskStore(data_dir)
    store.create({"id": "counter", "n": 0})
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            for _ in range(250):
                store.update("counter", slow_increment)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    say(str(TaskStore(data_dir).get("counter")["n"]))


def kill_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def die_before_mark(data_dir, task_id):
    """Create `task_id` and be killed after its line is fsync'd, before the mark follows it."""
    store = TaskStore(data_dir)
    store._write_mark = kill_self
    store.create({"id": task_id, "value": "unacknowledged"})


def die_in_compaction(data_dir):
    """Compact and be killed once the rewrite is written and the mark lowered, before the swap."""
    store = TaskStore(data_dir)
    task_store.os.replace = kill_self
    store.compact()


if __name__ == "__main__":
    cmd, data_dir, *rest = sys.argv[1:]
    if cmd == "rmw":
        rmw(data_dir, int(rest[0]), int(rest[1]), rest[2].split(","))
    elif cmd == "crash":
        crash(data_dir, int(rest[0]))
    elif cmd == "reader":
        reader(data_dir, int(rest[0]), float(rest[1]))
    elif cmd == "ops":
        ops(data_dir, rest[0])
    elif cmd == "forkrace":
        forkrace(data_dir)
    elif cmd == "die-before-mark":
        die_before_mark(data_dir, rest[0])
    elif cmd == "die-in-compaction":
        die_in_compaction(data_dir)
    else:
        sys.exit(f"unknown command {cmd}")
