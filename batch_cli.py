"""`flask batch run DIR --provider P --model M [--kind video|image] [--duration D] [--watch]`.

The command reads a folder in the manifest or shot-list layout (batch_intake.py, README
"Batches"), makes the batch as the admin (or `--user NAME`) exactly as `POST /api/v1/batches`
does, and prints what was made and refused. The batch is named after the folder unless `--name`
says otherwise, so running the same folder again resumes it: only items not done or in flight get
tasks. With `--watch` it waits for the results with a progress bar; when no studio is running the
pipeline on this DATA_DIR (nobody holds its leader lock), the command runs the pipeline itself
meanwhile. `--results FILE` then writes the results zip.
"""

import os
import time

import click
from flask import g

import batch_intake
import batch_progress
import batch_report
import batches
import scheduler
import task_query
from errors import AppError

FINISHED = ("completed", "completed_with_errors", "cancelled")


def init_app(app):
    """Register the `flask batch` command group."""

    @app.cli.group("batch")
    def batch_cli():
        """Batches of shots from a folder."""

    @batch_cli.command("run")
    @click.argument("directory", type=click.Path(exists=True, file_okay=False))
    @click.option("--provider", default="local", show_default=True)
    @click.option("--model", "model_name", default=None, help="The provider's model id (its first one if left out).")
    @click.option("--kind", type=click.Choice(["video", "image"]), default="video", show_default=True)
    @click.option("--duration", default=None, help="Seconds, as the model offers them (e.g. 5).")
    @click.option("--mode", default=None)
    @click.option("--name", default=None, help="The batch's name (default: the folder's name).")
    @click.option("--user", "username", default="admin", show_default=True)
    @click.option("--watch", is_flag=True, help="Wait for the results, with a progress bar.")
    @click.option("--results", type=click.Path(dir_okay=False), default=None, help="With --watch: write the zip here.")
    @click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between looks.")
    def run(directory, username, watch, results, interval, **settings):
        """Make a batch from DIRECTORY (or add its new shots to the batch of that name)."""
        settings["name"] = settings["name"] or os.path.basename(os.path.abspath(directory))
        with app.test_request_context("/api/v1/batches", method="POST"):
            g.user = app.extensions["accounts"].user_by_name(username)
            if g.user is None:
                raise click.ClickException(f"No user '{username}'.")
            record = _submit(directory, {k: v for k, v in settings.items() if v is not None})
            if watch:
                status = _watch(app, record["id"], interval)
                if results:
                    _write_results(app, record["id"], results)
                raise SystemExit(0 if status == "completed" else 1)


def _submit(directory, settings):
    try:
        tree, refused = batch_intake.dir_tree(directory)
        items = batch_intake.items_from_tree(tree, refused, field="DIRECTORY")
        record, created = batches.submit(batch_intake.BatchSettings(**settings), items)
    except AppError as exc:
        raise click.ClickException(exc.message) from None
    summary = batch_progress.summary(record)
    click.echo(f"Batch {record['id']} ({record['name']}): {created} new task(s), {summary['total']} item(s).")
    for item in summary["items"]:
        if item["status"] == "refused":
            click.echo(f"  refused {item['name']}: {item['error']['message']}", err=True)
    return record


def _watch(app, batch_id, interval):
    """Wait until the batch has finished, running the pipeline here when no studio does; its status."""
    lock = scheduler.LeaderLock(os.path.join(app.config["DATA_DIR"], "scheduler.lock"))
    leading = lock.try_acquire()
    store, providers = app.extensions["task_store"], app.extensions["providers"]
    record = app.extensions["batch_store"].get(batch_id)
    try:
        with click.progressbar(length=max(1, len(record["items"])), label=record["name"]) as bar:
            shown = 0
            while True:
                if leading:
                    task_query.dispatch(store, providers)
                    task_query.poll(store, providers)
                    task_query.download(store, providers)
                summary = batch_progress.summary(app.extensions["batch_store"].get(batch_id))
                done = summary["total"] - summary["counts"]["queued"] - summary["counts"]["processing"]
                bar.update(done - shown)
                shown = done
                if summary["status"] in FINISHED:
                    break
                time.sleep(interval)
    finally:
        lock.release()
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items() if n)
    click.echo(f"Batch {batch_id}: {summary['status']} ({counts}).")
    return summary["status"]


def _write_results(app, batch_id, path):
    record = app.extensions["batch_store"].get(batch_id)
    with open(path, "wb") as f:
        for chunk in batch_report.stream_results(app.config["DATA_DIR"], record, batch_progress.batch_tasks(record)):
            f.write(chunk)
    click.echo(f"Results written to {path}.")
