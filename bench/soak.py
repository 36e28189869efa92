"""Soak: issue 10's fault table against a real studio process, and how every task ended.

For each fault a fresh studio runs as `python app.py` on a temporary DATA_DIR, talking to the
project's local Kling and DashScope servers (tests/fakes) run in this process, so their submit
counters outlive studio restarts. A handful of tasks (local engine and providers) is created, the
fault is applied, the studio is left to run (restarted where the fault stops it), then every task
is read back with `GET /api/tasks/<id>`:

- terminal: succeeded, failed or cancelled; a failed task "says why" when it carries `error.message`;
- open: still in progress; it shows its problem when it carries `problem.message` or `download_error`;
- silent: open without a problem, or failed without a message;
- lost: answered 202 at create, then gone;
- double: the provider's fake counted more than one create for it.

For faults with a window (provider down, 500, 429, hang, disk full) the tasks are also read at the
end of the window: "silent during" counts open provider tasks that showed nothing then. Target per
row: 0 silent, 0 silent during, 0 lost, 0 double; the exit status is 1 when a row misses it.

    /work/main/.venv/bin/python bench/soak.py [--faults kill9,sigterm] [--tasks N] [--verbose] [--studio DIR]

`--studio DIR` runs another checkout's `app.py` (e.g. `git archive main | tar -x -C DIR`) against this
tree's fakes; that checkout's store and backup modules run only in child processes.

Disk full needs root and a mountable tmpfs; the clock steps need Debian's libfaketime
(`apt-get install faketime`). Not part of the default test suite: it takes several minutes.
"""

import argparse
import base64
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.fakes import dashscope as dashscope_fake  # noqa: E402
from tests.fakes import kling as kling_fake  # noqa: E402
from tests.fakes import sample_png  # noqa: E402

ADMIN_KEY = "sk-soak-admin-key-0123456789abcdef"
ADMIN_PASSWORD = "soak-admin-password-9f3k"
# The checkout whose `app.py` runs (--studio); the fakes always come from this script's own tree.
# Its modules (store, backups) are only ever used in child processes run there, never imported here.
STUDIO_DIR = ROOT

TERMINAL = ("succeeded", "failed", "cancelled")
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
# libfaketime 0.9.10 answers EINVAL to Python's time.sleep (clock_nanosleep on the real monotonic
# clock) when FAKETIME_DONT_FAKE_MONOTONIC is set; the studio child sleeps through select() instead.
SLEEP_SHIM = "import select, time\ntime.sleep = lambda seconds: select.select([], [], [], max(0.0, seconds))\n"
HTTP = requests.Session()
HTTP.headers["Authorization"] = f"Bearer {ADMIN_KEY}"


def b64(data):
    return base64.b64encode(data).decode()


def picture(width=640, height=400, seed=0):
    return sample_png(width, height, seed)


def in_studio(studio, code, *args):
    """Run Python `code` in the studio's checkout (its store and backup modules); its JSON output."""
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=STUDIO_DIR, env=studio.env,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "child failed")
    return json.loads(done.stdout)


READ_STORE = """import json, sys
from task_store import TaskStore
store = TaskStore(sys.argv[1], check=False)
print(json.dumps({i: store.get(i) for i in sys.argv[2:]}))
"""
TAKE_BACKUP = """import json, sys
from collections import Counter
from task_backup import read_backup, take_backup
from task_store import TaskStore
store = TaskStore(sys.argv[1], check=False)
path = take_backup(store, sys.argv[2])
store.close()
print(json.dumps({"path": str(path), "held": Counter(r["status"] for r in read_backup(path))}))
"""
NEWEST_BACKUP = """import json, sys
from task_backup import newest_good_backup
found = newest_good_backup(sys.argv[1])
print(json.dumps(found and str(found)))
"""


def restore(studio, backup):
    subprocess.run([sys.executable, "task_backup.py", "--data-dir", str(studio.data_dir), "--backup-dir",
                    str(studio.backup_dir), "restore", str(backup)], cwd=STUDIO_DIR, check=True,
                   capture_output=True, env=studio.env, timeout=60)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout, step=0.5):
    """Call `condition` until it is truthy or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


class Fakes:
    """The Kling and DashScope protocol servers, stoppable and restartable on the same ports."""

    def __init__(self, polls=3):
        self.kling = kling_fake.Server(polls_to_finish=polls, hang_seconds=2.5)
        self.dashscope = dashscope_fake.Server(polls_to_finish=polls, hang_seconds=2.5)
        self.ports = {}

    def start(self):
        for name, server in (("kling", self.kling), ("dashscope", self.dashscope)):
            server.start(port=self.ports.get(name, 0))
            self.ports[name] = int(server.base_url.rsplit(":", 1)[1])

    def stop(self):
        for server in (self.kling, self.dashscope):
            server.stop()
            server._server = None

    def submits(self, task):
        """Creates the provider's fake counted for this task (None for the local engine)."""
        if task.kind == "kling":
            return self.kling.submissions.get(task.task_id, 0)
        if task.kind == "dashscope":
            seen = {hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
                    for body in self.dashscope.requests_to("video-synthesis")
                    if isinstance(body, dict) and (body.get("input") or {}).get("prompt") == task.prompt}
            return sum(self.dashscope.submissions.get(fp, 0) for fp in seen)
        return None


class Studio:
    """`python app.py` as a child process on a temporary data dir."""

    def __init__(self, work, fakes, *, data_dir=None, faketime_file=None, gunicorn=False):
        self.work = work
        self.command = ([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
                        if gunicorn else [sys.executable, "app.py"])
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or work / "data"
        self.backup_dir = work / "backups"
        self.log_path = work / "studio.log"
        self.env = {**os.environ, "APP_PORT": str(self.port), "APP_HOST": "127.0.0.1",
                    "DATA_DIR": str(self.data_dir), "BACKUP_DIR": str(self.backup_dir),
                    "DOTENV_PATH": str(work / "none.env"), "API_KEYS": ADMIN_KEY, "ADMIN_PASSWORD": ADMIN_PASSWORD,
                    "POLL_INTERVAL_SECONDS": "0.5", "HTTP_TIMEOUT_SECONDS": "1", "LOCAL_WORKERS": "1",
                    "BACKUP_INTERVAL_MINUTES": "600", "READY_MIN_FREE_MB": "1", "WEB_WORKERS": "2", "WEB_THREADS": "4",
                    "KLING_API_BASE": fakes.kling.base_url, "KLING_ACCESS_KEY": kling_fake.FAKE_AK,
                    "KLING_SECRET_KEY": kling_fake.FAKE_SK,
                    "DASHSCOPE_API_BASE": fakes.dashscope.base_url, "DASHSCOPE_API_KEY": dashscope_fake.API_KEY,
                    "PYTHONDONTWRITEBYTECODE": "1"}     # leave the studio's checkout as it was
        if faketime_file is not None:
            shim = work / "shim"
            shim.mkdir(exist_ok=True)
            (shim / "sitecustomize.py").write_text(SLEEP_SHIM)
            self.env.update(LD_PRELOAD=str(FAKETIME_LIB), FAKETIME_TIMESTAMP_FILE=str(faketime_file),
                            FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1",
                            PYTHONPATH=os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])))
        self.proc = None

    def start(self, timeout=40):
        """Start the studio; True when it answers /healthz, False when it exited first."""
        with open(self.log_path, "ab") as log:
            self.log_offset = self.log_path.stat().st_size
            self.proc = subprocess.Popen(self.command, cwd=STUDIO_DIR, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)

        def up():
            if self.proc.poll() is not None:
                return "exited"
            try:
                return HTTP.get(self.base + "/healthz", timeout=1).ok
            except requests.RequestException:
                return False
        state = wait_until(up, timeout, 0.2)
        if state is True:
            return True
        if state is False:
            raise RuntimeError(f"the studio did not start within {timeout} s")
        return False

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout=20, sig=signal.SIGTERM):
        """SIGTERM (or `sig`); (exit status, seconds to exit) — SIGKILL after `timeout`."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = "killed"
        return code, time.monotonic() - started

    def stop(self):
        if self.running:
            self.terminate(10)

    def new_log(self):
        return self.log_path.read_text(errors="replace")[self.log_offset:]


@dataclass
class Task:
    kind: str
    prompt: str
    status_code: int
    task_id: str | None
    create_error: str | None = None
    final: dict | None = None
    during: dict | None = None
    lost: bool = False
    submits: int | None = None


BODIES = {
    "local": lambda i, prompt: {"image": b64(picture(seed=i)), "prompt": prompt},
    "kling": lambda i, prompt: {"provider": "kling", "model_name": "kling-v1-6", "image": b64(picture(seed=i)),
                                "prompt": prompt, "duration": "5", "mode": "std"},
    "dashscope": lambda i, prompt: {"provider": "dashscope", "model_name": "wan2.2-i2v-flash",
                                    "image": b64(picture(640, 400, seed=i)), "prompt": prompt},
}


def create(studio, kind, i, tag):
    prompt = f"soak {tag} {kind} {i} {secrets.token_hex(3)}"
    try:
        resp = HTTP.post(studio.base + "/generate", json=BODIES[kind](i, prompt), timeout=20)
    except requests.RequestException as exc:
        return Task(kind, prompt, 0, None, type(exc).__name__)
    body = resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else {}
    if resp.status_code == 202:
        return Task(kind, prompt, 202, body["task_id"])
    return Task(kind, prompt, resp.status_code, None, (body.get("error") or {}).get("code") or resp.text[:80])


def create_many(studio, kinds, count, tag, start=0):
    return [create(studio, kinds[i % len(kinds)], i, tag) for i in range(start, start + count)]


def message(record):
    """What the task says about its trouble, or None."""
    return ((record.get("error") or {}).get("message") or (record.get("problem") or {}).get("message")
            or record.get("download_error"))


def read(studio, tasks):
    """Each accepted task's record now (None = gone), over HTTP, or from disk when the studio is down."""
    accepted = [t for t in tasks if t.task_id]
    if studio.running:
        found = {}
        for t in accepted:
            resp = HTTP.get(f"{studio.base}/api/tasks/{t.task_id}", timeout=10)
            if resp.status_code in (200, 404):
                found[t.task_id] = resp.json() if resp.status_code == 200 else None
            else:
                found[t.task_id] = {"status": f"unreadable (HTTP {resp.status_code})"}
        return found
    return in_studio(studio, READ_STORE, studio.data_dir, *[t.task_id for t in accepted])


def settle(studio, tasks, timeout):
    """Wait until every accepted task is terminal (or `timeout`)."""
    def done():
        records = read(studio, tasks)
        return all(r is None or r["status"] in TERMINAL for r in records.values())
    return wait_until(done, timeout, 1.0)


def states(studio, tasks):
    """'2 queued, 1 running' for the accepted tasks now."""
    seen = Counter(r["status"] if r else "gone" for r in read(studio, tasks).values())
    return ", ".join(f"{n} {status}" for status, n in sorted(seen.items()))


def snapshot_during(studio, tasks):
    for t, record in zip([t for t in tasks if t.task_id], read(studio, tasks).values(), strict=True):
        t.during = record


def finish(studio, fakes, tasks):
    for t, record in zip([t for t in tasks if t.task_id], read(studio, tasks).values(), strict=True):
        t.final = record
        t.lost = record is None
        t.submits = fakes.submits(t)


@dataclass
class Row:
    fault: str
    tasks: list = field(default_factory=list)
    wall: float = 0.0
    notes: list = field(default_factory=list)
    skipped: str | None = None
    said_why: bool | None = None      # for faults that stop the studio itself (truncated store)
    windowed: bool = False
    crashed: str | None = None

    def counts(self):
        accepted = [t for t in self.tasks if t.task_id]
        live = [t for t in accepted if not t.lost]
        terminal = [t for t in live if t.final["status"] in TERMINAL]
        succeeded = [t for t in terminal if t.final["status"] == "succeeded"]
        failed_why = [t for t in terminal if t.final["status"] != "succeeded" and message(t.final)]
        showing = [t for t in live if t.final["status"] not in TERMINAL and message(t.final)]
        silent = len(live) - len(succeeded) - len(failed_why) - len(showing)
        silent_during = None
        if self.windowed:
            silent_during = sum(1 for t in accepted if t.kind != "local" and t.during is not None
                                and t.during["status"] not in TERMINAL and not message(t.during))
        return {"tasks": len(accepted), "terminal": len(terminal), "succeeded": len(succeeded),
                "failed_why": len(failed_why), "showing": len(showing), "silent": silent,
                "silent_during": silent_during, "lost": sum(t.lost for t in accepted),
                "double": sum(1 for t in accepted if (t.submits or 0) > 1)}

    def missed(self):
        if self.skipped:
            return False
        if self.crashed or self.said_why is False:
            return True
        c = self.counts()
        return bool(c["silent"] or c["silent_during"] or c["lost"] or c["double"])

    def outcomes(self):
        seen = Counter()
        for t in self.tasks:
            if not t.task_id:
                seen[f"create {t.status_code} {t.create_error}"] += 1
            elif t.lost:
                seen["LOST"] += 1
            else:
                r = t.final
                code = (r.get("error") or {}).get("code") or (r.get("problem") or {}).get("code")
                label = r["status"] + (f"/{code}" if code and r["status"] != "succeeded" else "")
                if r["status"] != "succeeded" and not message(r):
                    label += " (silent)"
                seen[label] += 1
        return ", ".join(f"{n}x {label}" for label, n in seen.most_common())


# ---- the faults -------------------------------------------------------------------------------

def fault_kill9(ctx):
    return _stop_mid_flight(ctx, "kill9", None)


def fault_sigterm(ctx):
    return _stop_mid_flight(ctx, "sigterm", signal.SIGTERM)


def fault_sigint(ctx):
    """Ctrl-C of `python app.py`: the interpreter shuts down with the pipeline's pools."""
    return _stop_mid_flight(ctx, "sigint", signal.SIGINT)


def fault_gunicorn_term(ctx):
    return _stop_mid_flight(ctx, "gterm", signal.SIGTERM, gunicorn=True)


def _stop_mid_flight(ctx, tag, sig, gunicorn=False):
    """Local tasks queued behind one worker and provider submits hanging, then a stop and a restart."""
    studio, fakes, row = ctx.studio(gunicorn=gunicorn), ctx.fakes, ctx.row
    fakes.kling.inject("submit", *["hang"] * ctx.n)
    fakes.dashscope.inject("submit", *["hang"] * ctx.n)
    studio.start()
    row.tasks = create_many(studio, ["local", "local", "kling", "dashscope"], ctx.n, tag)
    time.sleep(2)
    row.notes.append(f"stopped with {states(studio, row.tasks)}")
    if sig is not None:
        code, took = studio.terminate(40, sig)
        row.notes.append(f"{signal.Signals(sig).name} exit {code} after {took:.1f}s")
    else:
        studio.kill()
    studio.start()
    settle(studio, row.tasks, 90)
    finish(studio, fakes, row.tasks)


def fault_provider_down(ctx):
    """The providers stop answering (connection refused) while tasks are submitted and queued."""
    studio, fakes, row = ctx.studio(), ctx.fakes, ctx.row
    studio.start()
    first = create_many(studio, ["kling", "dashscope", "local"], (ctx.n + 1) // 2, "down")
    time.sleep(2)
    fakes.stop()
    row.tasks = first + create_many(studio, ["kling", "dashscope", "local"], ctx.n // 2, "down", len(first))
    _window(ctx, 8)
    fakes.start()
    settle(studio, row.tasks, 90)
    finish(studio, fakes, row.tasks)


def _window(ctx, seconds):
    ctx.row.windowed = True
    time.sleep(seconds)
    snapshot_during(ctx.current, ctx.row.tasks)


def _provider_fault(ctx, tag, kling_faults, dashscope_faults, window):
    studio, fakes, row = ctx.studio(), ctx.fakes, ctx.row
    for where, names in kling_faults.items():
        fakes.kling.inject(where, *names)
    for where, names in dashscope_faults.items():
        fakes.dashscope.inject(where, *names)
    studio.start()
    row.tasks = create_many(studio, ["kling", "dashscope", "local"], ctx.n, tag)
    if window:
        _window(ctx, window)
    settle(studio, row.tasks, 90)
    finish(studio, fakes, row.tasks)


def fault_provider_500(ctx):
    _provider_fault(ctx, "500", {"submit": ["error_500"] * 2, "query": ["error_500"] * 3},
                    {"submit": ["server_error"] * 2, "query": ["server_error"] * 3}, window=5)


def fault_provider_429(ctx):
    ctx.row.notes.append("DashScope 429s carry Retry-After: 2")
    _provider_fault(ctx, "429", {"submit": ["rate_limit"] * 3},
                    {"submit": ["rate_limit_retry_after"] * 3}, window=4)


def fault_provider_hang(ctx):
    ctx.row.notes.append("every submit created, answered after 2.5s; client timeout 1s")
    _provider_fault(ctx, "hang", {"submit": ["hang"] * ctx.n}, {"submit": ["hang"] * ctx.n}, window=5)


def fault_link_404(ctx):
    _provider_fault(ctx, "l404", {"download": ["not_found"] * 2}, {"download": ["not_found"] * 2}, window=0)


def fault_link_expired(ctx):
    _provider_fault(ctx, "lexp", {"result": ["expired"] * ctx.n}, {"result": ["expired_url"] * ctx.n}, window=0)


def fault_link_cut(ctx):
    _provider_fault(ctx, "lcut", {"download": ["truncate"] * 2}, {"download": ["truncate"] * 2}, window=0)


def fault_disk_full(ctx):
    """DATA_DIR on a small tmpfs filled to the last page while tasks run; then space comes back."""
    if os.geteuid() != 0:
        ctx.row.skipped = "skipped: needs root tmpfs"
        return
    mount = ctx.work / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        ctx.row.skipped = "skipped: needs root tmpfs"
        return
    ctx.cleanups.append(lambda: subprocess.run(["umount", "-l", str(mount)], check=False))
    studio, fakes, row = ctx.studio(data_dir=mount / "data"), ctx.fakes, ctx.row
    studio.start()
    first = create_many(studio, ["local", "kling"], (ctx.n + 1) // 2, "disk")
    # Fill once the provider tasks are at the provider, so their results arrive on a full disk.
    wait_until(lambda: all(r is None or r["status"] != "queued" for t, r in
                           zip(first, read(studio, first).values(), strict=True) if t.kind != "local"), 15)
    # One more provider task just before the fill: it is still queued when the disk is full.
    late = create_many(studio, ["kling"], 1, "disk", len(first))
    filler = mount / "filler"
    _fill(filler)
    row.notes.append(f"filled with {states(studio, first + late)}")
    second = create_many(studio, ["local", "kling"], ctx.n // 2, "disk", len(first) + 1)
    refused = [t for t in second if not t.task_id]
    if refused:
        row.notes.append(f"{len(refused)} create(s) refused while full: "
                         + ", ".join(sorted({f'{t.status_code} {t.create_error}' for t in refused})))
    row.tasks = first + late + second
    _window(ctx, 10)
    filler.unlink()
    settle(studio, row.tasks, 90)
    finish(studio, fakes, row.tasks)


def _fill(path):
    """Write until the file system refuses even one page."""
    chunk = 1 << 20
    with open(path, "wb", buffering=0) as f:
        while chunk >= 4096:
            try:
                f.write(b"\0" * chunk)
            except OSError:
                chunk //= 2


def _clock_step(ctx, step):
    if not FAKETIME_LIB.exists():
        ctx.row.skipped = "skipped: libfaketime not available"
        return
    clock = ctx.work / "faketime"
    clock.write_text("+0\n")
    studio, fakes, row = ctx.studio(faketime_file=clock), ctx.fakes, ctx.row
    studio.start()
    row.tasks = create_many(studio, ["local", "dashscope"], ctx.n, "clock")
    time.sleep(1)
    clock.write_text(f"{step}\n")
    row.notes.append(f"studio clock stepped {step} 1s after the creates; DashScope (no signed tokens)")
    stepped = time.monotonic()
    settle(studio, row.tasks, 45)
    ready = HTTP.get(studio.base + "/readyz", timeout=5)
    row.notes.append(f"/readyz {ready.status_code} at the end")
    finish(studio, fakes, row.tasks)
    timeouts = [t for t in row.tasks if t.final and (t.final.get("error") or {}).get("code") == "timeout"]
    if timeouts:
        row.notes.append(f"{len(timeouts)} failed as timeout within {time.monotonic() - stepped:.0f}s of real time")


def fault_clock_back(ctx):
    _clock_step(ctx, "-2h")


def fault_clock_forward(ctx):
    _clock_step(ctx, "+2h")


def fault_truncated_store(ctx):
    """Tasks finish, a backup is taken, tasks.jsonl is cut to 60 % while stopped: the studio must
    refuse to start naming a backup; then the named backup is restored and nothing runs again."""
    studio, fakes, row = ctx.studio(), ctx.fakes, ctx.row
    studio.start()
    row.tasks = create_many(studio, ["local", "kling"], ctx.n, "trunc")
    settle(studio, row.tasks, 90)
    in_studio(studio, TAKE_BACKUP, studio.data_dir, studio.backup_dir)
    studio.terminate()
    path = studio.data_dir / "tasks.jsonl"
    size = path.stat().st_size
    os.truncate(path, int(size * 0.6))
    if studio.start():
        row.said_why = False
        row.notes.append("started over the cut store")
        finish(studio, fakes, row.tasks)
        return
    log = studio.new_log()
    named = [line for line in log.splitlines() if "Refusing to start" in line]
    row.said_why = bool(named) and "backup" in named[-1]
    row.notes.append("refused to start" + (", naming a backup" if row.said_why else " WITHOUT naming a backup"))
    restore(studio, in_studio(studio, NEWEST_BACKUP, studio.backup_dir))
    studio.start()
    settle(studio, row.tasks, 60)
    finish(studio, fakes, row.tasks)


def fault_restore(ctx):
    """A backup taken while tasks are queued, the tasks finish, the backup is restored: none is sent twice."""
    ctx.fakes.stop()
    ctx.fakes = Fakes(polls=4)      # slower tasks: some are still queued when the backup is taken
    ctx.fakes.start()
    studio, fakes, row = ctx.studio(), ctx.fakes, ctx.row
    studio.start()
    row.tasks = create_many(studio, ["dashscope", "kling"], ctx.n, "restore")
    taken = in_studio(studio, TAKE_BACKUP, studio.data_dir, studio.backup_dir)
    backup, held = taken["path"], taken["held"]
    row.notes.append("backup held " + ", ".join(f"{n} {s}" for s, n in sorted(held.items())))
    settle(studio, row.tasks, 90)
    studio.terminate()
    restore(studio, backup)
    studio.start()
    settle(studio, row.tasks, 60)
    time.sleep(3)           # a re-send would come within a few dispatch rounds of the start
    finish(studio, fakes, row.tasks)


FAULTS = {
    "kill9": fault_kill9, "sigterm": fault_sigterm, "sigint": fault_sigint, "gunicorn-term": fault_gunicorn_term,
    "down": fault_provider_down, "500": fault_provider_500,
    "429": fault_provider_429, "hang": fault_provider_hang, "link404": fault_link_404,
    "expired": fault_link_expired, "cut": fault_link_cut, "disk": fault_disk_full, "clock-2h": fault_clock_back,
    "clock+2h": fault_clock_forward, "truncated": fault_truncated_store, "restore": fault_restore,
}


class Context:
    def __init__(self, fault, n, work):
        self.row = Row(fault)
        self.n = n
        self.work = work
        self.fakes = Fakes()
        self.fakes.start()
        self.current = None
        self.cleanups = []

    def studio(self, **kwargs):
        self.current = Studio(self.work, self.fakes, **kwargs)
        return self.current

    def close(self):
        if self.current is not None:
            self.current.stop()
        self.fakes.stop()
        for cleanup in reversed(self.cleanups):
            cleanup()


def run_fault(name, n, verbose):
    work = Path(tempfile.mkdtemp(prefix=f"soak-{name.replace('+', 'p')}-"))
    ctx = Context(name, n, work)
    started = time.monotonic()
    try:
        FAULTS[name](ctx)
    except Exception as exc:       # one broken fault must not hide the others' rows
        ctx.row.crashed = f"{type(exc).__name__}: {exc}"
    finally:
        ctx.close()
    row = ctx.row
    row.wall = time.monotonic() - started
    print(f"\n== {name} ({row.wall:.0f}s)" + (f": {row.skipped}" if row.skipped else ""), flush=True)
    if row.crashed:
        print(f"   soak error: {row.crashed} (log: {work / 'studio.log'})")
    for t in row.tasks:
        if not t.task_id:
            print(f"   {t.kind:9} create answered {t.status_code} {t.create_error}")
            continue
        r = t.final
        state = "LOST" if t.lost else (r["status"] if r else "?")
        said = message(r) if r else None
        during = f" | during: {t.during['status']}: {message(t.during) or '-'}" if t.during and verbose else ""
        print(f"   {t.kind:9} {t.task_id} {state:10} submits={t.submits if t.submits is not None else '-'}"
              f" {('why: ' + said[:110]) if said else ''}{during}")
    for note in row.notes:
        print(f"   note: {note}")
    if not row.missed() and not row.crashed:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"   kept {work} for a look")
    return row


def print_table(rows):
    head = ["fault", "tasks", "terminal", "ok", "failed+why", "open+problem", "silent", "silent during",
            "lost", "double", "wall s", "target"]
    lines = [head]
    for row in rows:
        if row.skipped:
            lines.append([row.fault, *["-"] * 9, f"{row.wall:.0f}", row.skipped])
            continue
        c = row.counts()
        target = "crashed" if row.crashed else ("MISSED" if row.missed() else "met")
        if row.said_why is not None:
            target += " (refused, named backup)" if row.said_why else " (no refusal/why)"
        lines.append([row.fault, c["tasks"], c["terminal"], c["succeeded"], c["failed_why"], c["showing"],
                      c["silent"], "-" if c["silent_during"] is None else c["silent_during"], c["lost"],
                      c["double"], f"{row.wall:.0f}", target])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    print()
    for k, line in enumerate(lines):
        print("| " + " | ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\nOutcomes:")
    for row in rows:
        if not row.skipped:
            print(f"  {row.fault}: {row.outcomes() or 'no task'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Repeat the reliability fault table against a real studio.")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, from: {', '.join(FAULTS)}")
    parser.add_argument("--tasks", type=int, default=4, help="tasks created per fault (default 4)")
    parser.add_argument("--verbose", action="store_true", help="also show each task's state at the fault window")
    parser.add_argument("--studio", type=Path, default=ROOT,
                        help="the checkout whose app.py runs (default: this one; e.g. an export of main)")
    args = parser.parse_args(argv)
    global STUDIO_DIR
    STUDIO_DIR = args.studio.resolve()
    if not (STUDIO_DIR / "app.py").is_file():
        parser.error(f"{STUDIO_DIR} has no app.py")
    names = [f for f in args.faults.split(",") if f]
    unknown = [f for f in names if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(unknown)}")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)      # the fakes' access logs
    started = time.monotonic()
    rows = [run_fault(name, max(1, args.tasks), args.verbose) for name in names]
    print(f"\nstudio: {STUDIO_DIR}")
    print_table(rows)
    missed = [row.fault for row in rows if row.missed()]
    print(f"\n{len(rows)} faults in {time.monotonic() - started:.0f}s; "
          + (f"target missed: {', '.join(missed)}" if missed else "every target met"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
