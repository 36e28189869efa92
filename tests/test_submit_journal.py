"""The submit journal: durable appends from many threads and processes, lookups, torn lines."""

import multiprocessing
import threading

import submit_journal


def _append_many(data_dir, prefix, n):
    journal = submit_journal.SubmitJournal(data_dir)
    for i in range(n):
        journal.sent(f"{prefix}{i}", "dashscope", "2026-11-22T10:00:00Z")
        journal.created(f"{prefix}{i}", "dashscope", "2026-11-22T10:00:01Z", f"ds-{prefix}{i}")


def test_appends_from_threads_and_processes_never_interleave(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, f"p{k}-", 50)) for k in range(2)]
    threads = [threading.Thread(target=_append_many, args=(tmp_path, f"t{k}-", 50)) for k in range(2)]
    for worker in procs + threads:
        worker.start()
    for worker in procs + threads:
        worker.join(60)
    lines = (tmp_path / "submits.jsonl").read_bytes().splitlines()
    assert len(lines) == 4 * 50 * 2
    journal = submit_journal.SubmitJournal(tmp_path)
    found = journal.lookup("p1-49")
    assert (found.count, found.provider_task_id, found.open) == (1, "ds-p1-49", False)
    assert len(journal.claimed()) == 200 and journal.lookup("nobody") is None


def test_lookup_follows_the_attempts_and_skips_a_torn_last_line(tmp_path):
    journal = submit_journal.for_dir(tmp_path)
    journal.sent("a", "kling", "2026-11-22T10:00:00Z")
    assert journal.lookup("a").open is True
    journal.not_created("a", "kling", "2026-11-22T10:00:05Z")
    journal.sent("a", "kling", "2026-11-22T10:01:00Z")
    found = journal.lookup("a")
    assert (found.count, found.first_at, found.last_at, found.open) == (2, "2026-11-22T10:00:00Z",
                                                                        "2026-11-22T10:01:00Z", True)
    with open(tmp_path / "submits.jsonl", "ab") as f:
        f.write(b'{"task_id": "a", "provider_task_id": "kt-1')    # a crash mid-append
    assert journal.lookup("a").provider_task_id is None
    journal.created("a", "kling", "2026-11-22T10:01:02Z", "kt-2")
    assert journal.lookup("a").provider_task_id == "kt-2" and journal.claimed() == {"kt-2"}
    assert submit_journal.for_dir(tmp_path) is journal
