"""Subprocess entry point for tests/test_store_contract.py: `python -m tests.contract_worker ...`.

    python -m tests.contract_worker increment BACKEND TARGET WORKER COUNT TASK_ID

opens the store named by BACKEND (`json` with TARGET a data folder, `pg` with TARGET a database
URL), says "ready", waits for a line on stdin (so every worker starts at once), then COUNT times
increments the record's `counter` and appends its own token, each as one read-modify-write.
"""

import sys

from task_store import TaskStore
from task_store_pg import PgTaskStore


def open_store(backend, target, data_dir=None):
    if backend == "json":
        return TaskStore(target)
    return PgTaskStore(target, data_dir or "/tmp", migrate=False)


def increment(record, token):
    record["counter"] += 1
    record["tokens"].append(token)


def main(argv):
    command, backend, target, worker, count, task_id = argv
    assert command == "increment"
    store = open_store(backend, target)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(int(count)):
        store.update(task_id, lambda r, t=f"w{worker}-{i:03d}": increment(r, t))
    store.close()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
