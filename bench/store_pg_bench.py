"""The JSON task store and the PostgreSQL one side by side, on the same records.

    python bench/store_pg_bench.py [--sizes 10000,100000] [--seed 1]

For each size N it writes N realistic ~1 KB records (bench/store_bench.py's generator) into a JSON
store and, with COPY, into a throwaway PostgreSQL cluster started for the run (tests/pg_server.py,
with fsync ON, like the JSON store's appends), then measures in each: update p50/p95, a page of 50
unfiltered, by status, by prompt text, and the memory one fresh process needs to serve them (RSS
growth after opening the store and answering pages, in a new interpreter). The JSON store keeps
its index in every process, so its memory grows with N; the PostgreSQL store keeps nothing. Nothing
here asserts: the numbers are printed for people to judge.
"""

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so `python bench/store_pg_bench.py` finds the project's modules

import migrations  # noqa: E402
from bench.store_bench import STATUSES, TEXT_NEEDLE, percentile, rss_mb, timed, write_jsonl  # noqa: E402
from task_store import TaskStore  # noqa: E402
from task_store_pg import PgTaskStore  # noqa: E402
from tests.pg_server import PgServer, _bin_dir  # noqa: E402


def open_store(backend, target, data_dir):
    return TaskStore(target) if backend == "json" else PgTaskStore(target, data_dir, migrate=False)


def _probe_main(backend, target, data_dir):
    """In a fresh interpreter: RSS growth to open the store and serve one of each query."""
    before = rss_mb()
    store = open_store(backend, target, data_dir)
    store.list(limit=50)
    store.list(limit=50, status="running")
    store.list(limit=50, text=TEXT_NEEDLE)
    store.ids_with_status(["running"])
    print(json.dumps({"rss_mb": rss_mb() - before, "count": len(store)}))


def probe(backend, target, data_dir):
    out = subprocess.run([sys.executable, __file__, "--probe", backend, str(target), str(data_dir)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def measure(store, ids, rng):
    n = len(ids)
    upd = [timed(store.update, rng.choice(ids), {"status": rng.choice(STATUSES), "progress": rng.randrange(101)})
           for _ in range(300)]
    page = [timed(store.list, limit=50, offset=rng.randrange(n)) for _ in range(60)]
    running = store.list(limit=0, status="running")[1]
    status = [timed(store.list, limit=50, offset=rng.randrange(max(1, running - 50)), status="running")
              for _ in range(30)]
    found = store.list(limit=0, text=TEXT_NEEDLE)[1]
    text = [timed(store.list, limit=50, offset=rng.randrange(max(1, found - 50)), text=TEXT_NEEDLE)
            for _ in range(30)]
    first = [timed(store.list, limit=50, text=TEXT_NEEDLE) for _ in range(30)]
    return {"upd_p50": statistics.median(upd), "upd_p95": percentile(upd, 0.95),
            "page": statistics.median(page), "status": statistics.median(status),
            "text": statistics.median(text), "text_first": statistics.median(first)}


def load_pg(url, jsonl, data_dir):
    store = PgTaskStore(url, data_dir, migrate=False)
    with open(jsonl, "rb") as f:
        store.replace_all(json.loads(line) for line in f)
    with store._connections().connection() as conn:     # fresh statistics, as autovacuum would give
        conn.execute("VACUUM ANALYZE tasks")
    return store


def run(sizes, seed, server):
    rows = []
    for n in sizes:
        folder = Path(tempfile.mkdtemp(prefix=f"store-pg-bench-{n}-"))
        try:
            ids, _ = write_jsonl(folder / "tasks.jsonl", n, seed)
            server.admin(f"CREATE DATABASE bench_{n} TEMPLATE studio_template")
            url = server.url(f"bench_{n}")
            t = time.perf_counter()
            load_pg(url, folder / "tasks.jsonl", folder).close()
            pg_load = time.perf_counter() - t
            for backend, target in (("json", folder), ("pg", url)):
                memory = probe(backend, target, folder)
                assert memory["count"] == n, memory
                store = open_store(backend, target, folder)
                row = {"backend": backend, "n": n, "rss_per_100k": memory["rss_mb"] * 100_000 / n,
                       "rss": memory["rss_mb"], **measure(store, ids, random.Random(seed))}
                row["load"] = pg_load if backend == "pg" else None
                store.close()
                rows.append(row)
                print(f"N={n:,} {backend} measured", flush=True)
        finally:
            shutil.rmtree(folder)
    return rows


def print_report(rows):
    ms = 1000
    head = (f"{'N':>8} {'store':>5} {'RSS MB':>7} {'MB/100k':>7} {'upd p50':>7} {'upd p95':>7} "
            f"{'page50':>6} {'status':>6} {'text':>6} {'text@0':>6}")
    print("\nTimes in ms (median of list(limit=50) at random offsets: unfiltered / status='running' / "
          f"text={TEXT_NEEDLE!r}; text@0 = its first page). RSS = growth of one fresh process serving them.")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['n']:>8,} {r['backend']:>5} {r['rss']:>7.1f} {r['rss_per_100k']:>7.1f} {r['upd_p50'] * ms:>7.3f} "
              f"{r['upd_p95'] * ms:>7.3f} {r['page'] * ms:>6.2f} {r['status'] * ms:>6.2f} {r['text'] * ms:>6.2f} "
              f"{r['text_first'] * ms:>6.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated task counts (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--probe", nargs=3, help=argparse.SUPPRESS)     # internal: see probe()
    args = parser.parse_args()
    if args.probe:
        _probe_main(*args.probe)
        return
    server = PgServer(tempfile.mkdtemp(prefix="pg-bench-"), _bin_dir())
    server.start(durable=True)
    try:
        server.admin("CREATE DATABASE studio_template")
        migrations.upgrade(server.url("studio_template"))
        started = time.perf_counter()
        print_report(run(sorted(int(s) for s in args.sizes.split(",")), args.seed, server))
        print(f"total {time.perf_counter() - started:.0f} s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
