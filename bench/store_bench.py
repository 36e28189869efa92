"""Benchmark of the JSON task store at growing sizes, against rewriting one tasks.json per update.

    python bench/store_bench.py [--sizes 1000,10000,100000] [--seed 1]

For each size N it writes N realistic ~1 KB task records straight into `tasks.jsonl` (building
through the store would fsync N times), opens a TaskStore on it and measures load time, memory,
update latency and the time to serve a page of 50. The naive alternative (json.dump the whole
list to tasks.json, fsync, os.replace, per update) runs on the same records for scale. Nothing
here asserts: the numbers are printed for people to judge against the targets in DESIGN.md.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so `python bench/store_bench.py` finds the project's modules

import tasks  # noqa: E402
from task_store import TaskStore  # noqa: E402

STATUSES = list(tasks.STATUSES)
PROVIDERS = {"local": "local-motion", "kling": "kling-v1-6", "ai302": "kling-v2-master",
             "dashscope": "wan2.2-i2v-flash", "liblib": "star-3-alpha-t2i"}
WORDS = ("a slow dolly shot over a misty harbour at dawn with fishing boats and gulls lighthouse "  # noqa: SIM905 - prose reads better than a list of words
         "neon city street rain reflections cinematic lighting portrait of an old sailor smiling "
         "golden hour mountains drone footage waves crashing cat on a windowsill snow falling "
         "vintage film grain soft focus wide angle close up").split()
TEXT_NEEDLE = "lighthouse"  # in roughly a quarter of the prompts


# ---- data ----------------------------------------------------------------------------------

def _iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _sha(rng):
    return f"{rng.getrandbits(256):064x}"


def make_record(i, rng, start):
    """Task number i, created ~1.5 s after task i-1: about 1 KB of JSON, like the studio's."""
    created = start + timedelta(milliseconds=1500 * i + rng.randrange(1000))
    task_id = f"{created:%Y%m%dT%H%M%S}{created.microsecond // 1000:03d}Z-{rng.getrandbits(24):06x}"
    provider = rng.choice(list(PROVIDERS))
    kind = rng.choice(["video", "video", "image"])
    status = rng.choice(STATUSES)
    prompt = " ".join(rng.choices(WORDS, k=34))[:200]
    done = created + timedelta(seconds=rng.randrange(30, 600))
    return {
        "id": task_id, "kind": kind, "provider": provider, "model": PROVIDERS[provider],
        "params": {"prompt": prompt, "negative_prompt": "blurry, low quality", "mode": "std",
                   "duration": "5", "cfg_scale": 0.5, "aspect_ratio": "16:9", "n": 1},
        "inputs": [{"role": "first", "path": f"inputs/{task_id}/first.png", "width": 1280,
                    "height": 720, "sha256": _sha(rng)}],
        "status": status, "provider_task_id": f"{rng.getrandbits(64):016x}",
        "provider_status": status.upper(), "progress": rng.randrange(101),
        "outputs": [{"url": f"/media/outputs/{task_id}/0.mp4", "path": f"outputs/{task_id}/0.mp4",
                     "thumbnail_url": f"/media/outputs/{task_id}/0.jpg",
                     "remote_url": f"https://cdn.example.com/{rng.getrandbits(64):016x}.mp4",
                     "remote_expires_at": _iso(done + timedelta(days=1)),
                     "bytes": rng.randrange(10**6, 10**7), "sha256": _sha(rng),
                     "width": 1280, "height": 720, "duration": 5.0}],
        "error": None, "attempts": 1, "created_at": _iso(created), "updated_at": _iso(done),
        "submitted_at": _iso(created + timedelta(seconds=1)), "finished_at": _iso(done),
        "owner": f"user{rng.randrange(20)}",
    }


def write_jsonl(path, n, seed):
    """Write n records (oldest first) to `path`; returns their ids and the average line size."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids, size = [], 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            record = make_record(i, rng, start)
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
            size += len(line)
            ids.append(record["id"])
            f.write(line)
    return ids, size / n


# ---- measurements --------------------------------------------------------------------------

def rss_mb():
    """Resident set size now (not the peak), from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn, *args, **kwargs):
    """Seconds one call of fn(*args, **kwargs) takes."""
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def probe_load(data_dir):
    """Load time and RSS growth measured in a fresh interpreter, free of this one's heap."""
    out = subprocess.run([sys.executable, __file__, "--probe", str(data_dir)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def _probe_main(data_dir):
    before = rss_mb()
    t = time.perf_counter()
    store = TaskStore(data_dir)
    load_s = time.perf_counter() - t
    print(json.dumps({"load_s": load_s, "rss_mb": rss_mb() - before, "count": len(store)}))


def fsync_floor(data_dir, rng, rounds=300):
    """p50 of appending one 1 KB line and fsyncing it: what the disk alone costs per update."""
    path = Path(data_dir) / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(line):
        os.write(fd, line)
        os.fsync(fd)

    try:
        samples = [timed(append, rng.randbytes(1000) + b"\n") for _ in range(rounds)]
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples)


def bench_stores(dirs, ids, rng):
    """Time updates and pages on every size's store, interleaved one operation per size in
    turn, so machine noise lands on every size alike and the ratios stay fair."""
    stores = {n: TaskStore(d) for n, d in dirs.items()}  # warm, as a long-running worker would
    samples = {n: {"upd": [], "page": [], "status": [], "text": []} for n in stores}

    def each_size(key, rounds, call):
        for _ in range(rounds):
            for n, store in stores.items():
                samples[n][key].append(call(n, store))

    each_size("upd", 500, lambda n, store: timed(
        store.update, rng.choice(ids[n]), {"status": rng.choice(STATUSES), "progress": rng.randrange(101)}))
    each_size("page", 200, lambda n, store: timed(store.list, limit=50, offset=rng.randrange(n)))
    totals = {n: {"status": store.list(limit=0, status="running")[1],
                  "text": store.list(limit=0, text=TEXT_NEEDLE)[1]} for n, store in stores.items()}
    each_size("status", 40, lambda n, store: timed(
        store.list, limit=50, offset=rng.randrange(max(1, totals[n]["status"] - 50)), status="running"))
    each_size("text", 40, lambda n, store: timed(
        store.list, limit=50, offset=rng.randrange(max(1, totals[n]["text"] - 50)), text=TEXT_NEEDLE))
    for store in stores.values():
        store.close()
    return {n: {"upd_p50": statistics.median(v["upd"]), "upd_p95": percentile(v["upd"], 0.95),
                "page": statistics.median(v["page"]), "page_status": statistics.median(v["status"]),
                "page_text": statistics.median(v["text"])} for n, v in samples.items()}


def bench_naive(data_dir, rng, budget_s=5.0):
    """Per update: change one record, json.dump the whole list, fsync, os.replace.

    Generous to the naive design: the list stays in memory, nothing re-reads the file.
    """
    with open(Path(data_dir) / "tasks.jsonl", "rb") as f:
        records = [json.loads(line) for line in f]
    path, tmp = Path(data_dir) / "tasks.json", Path(data_dir) / "tasks.json.tmp"

    def update(record, change):
        record.update(change)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(records, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # A few runs are enough at 100k (seconds each); the time budget keeps the bench bounded.
    samples, started = [], time.perf_counter()
    while len(samples) < 30 and (len(samples) < 3 or time.perf_counter() - started < budget_s):
        samples.append(timed(update, rng.choice(records),
                             {"status": rng.choice(STATUSES), "progress": len(samples)}))
    return statistics.median(samples), len(samples)


# ---- report --------------------------------------------------------------------------------

def run(sizes, seed):
    rng = random.Random(seed)
    dirs, ids, rows = {}, {}, {}
    try:
        for n in sizes:
            dirs[n] = Path(tempfile.mkdtemp(prefix=f"store-bench-{n}-"))
            t = time.perf_counter()
            ids[n], line_bytes = write_jsonl(dirs[n] / "tasks.jsonl", n, seed)
            build_s = time.perf_counter() - t
            probe = probe_load(dirs[n])
            assert probe["count"] == n, probe  # ids are random-suffixed: a clash would skew
            rows[n] = {"n": n, "bytes": line_bytes, "build_s": build_s, "load_s": probe["load_s"],
                       "rss_per_100k": probe["rss_mb"] * 100_000 / n, "fsync": fsync_floor(dirs[n], rng)}
            print(f"N={n:,} built and loaded in {time.perf_counter() - t:.1f} s", flush=True)
        for n, measured in bench_stores(dirs, ids, rng).items():
            rows[n].update(measured)
        for n in sizes:
            rows[n]["naive"], rows[n]["naive_runs"] = bench_naive(dirs[n], rng)
    finally:
        for d in dirs.values():
            shutil.rmtree(d)
    return [rows[n] for n in sizes]


def print_report(rows):
    ms = 1000
    head = (f"{'N':>8} {'B/task':>6} {'build s':>7} {'load s':>6} {'RSS MB/100k':>11} "
            f"{'fsync ms':>8} {'upd p50':>7} {'upd p95':>7} {'page50':>6} {'status':>6} "
            f"{'text':>6} {'naive upd':>9} {'naive/store':>11}")
    print("\nTimes in ms unless marked; page50/status/text = median time of list(limit=50) "
          "unfiltered / status='running' / text=" + repr(TEXT_NEEDLE))
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['n']:>8,} {r['bytes']:>6.0f} {r['build_s']:>7.2f} {r['load_s']:>6.2f} "
              f"{r['rss_per_100k']:>11.0f} {r['fsync'] * ms:>8.3f} {r['upd_p50'] * ms:>7.3f} "
              f"{r['upd_p95'] * ms:>7.3f} {r['page'] * ms:>6.2f} {r['page_status'] * ms:>6.2f} "
              f"{r['page_text'] * ms:>6.2f} {r['naive'] * ms:>9.1f} "
              f"{r['naive'] / r['upd_p50']:>10.0f}x")
    small, big = rows[0], rows[-1]
    worst_page = max(big["page"], big["page_status"], big["page_text"])
    print(f"\nnaive update runs per size: {', '.join(str(r['naive_runs']) for r in rows)}")
    print(f"update p50 ratio {big['n']:,}/{small['n']:,}: "
          f"{big['upd_p50'] / small['upd_p50']:.2f}   (target <= 2)")
    print(f"update p50 at {big['n']:,}: {big['upd_p50'] * ms:.3f} ms   (target <= 1 ms; "
          f"fsync alone {big['fsync'] * ms:.3f} ms)")
    print(f"page of 50 at {big['n']:,}: worst {worst_page * ms:.2f} ms   (target <= 20 ms)")
    print(f"RSS growth per 100k tasks: {big['rss_per_100k']:.0f} MB (measured at {big['n']:,})")
    print(f"naive / store update at {big['n']:,}: {big['naive'] / big['upd_p50']:.0f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000",
                        help="comma-separated task counts (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: see probe_load()
    args = parser.parse_args()
    if args.probe:
        _probe_main(args.probe)
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    started = time.perf_counter()
    print_report(run(sizes, args.seed))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
