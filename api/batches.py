"""The v1 batch routes: create (multipart zip/folder, or JSON items), read, list, act, download.

A thin layer: uploads are read by batch_intake, batches made and changed by batches.py, results
and reports written by batch_report. A batch that is not yours answers 404, like a missing one.
"""

from flask import Blueprint, Response, current_app, request

import access
import batch_intake
import batch_progress
import batch_report
import batches
from api.models import V1Batch, V1BatchCreated, V1BatchList, V1BatchRetried
from api.openapi import documented
from batch_intake import BatchRequest, BatchSettings, BatchUpload
from errors import N_, ValidationError, field_problem, shown_text
from i18n import translate
from validation import parse_body

bp = Blueprint("api_batches", __name__, url_prefix="/api/v1/batches")


def _upload():
    """(settings, items) of a multipart upload: `file` (a zip), or `files` (a folder's files), with an
    optional `prompts` file, and the shared settings as form fields."""
    settings = BatchSettings.model_validate(batch_intake.settings_from_form(request.form))
    zipped, files = request.files.get("file"), request.files.getlist("files")
    if zipped is not None and zipped.filename:
        tree, refused = batch_intake.zip_tree(zipped.stream, current_app.config["BATCH_MAX_UPLOAD_MB"] * 2**20)
    elif files:
        tree, refused = batch_intake.files_tree(files)
    else:
        raise ValidationError(N_("Send the pictures: a zip in `file` or a folder's files in `files`."),
                              code="file_required", field="file")
    unknown = set(request.files) - {"file", "files", "prompts"}
    if unknown:
        field = sorted(unknown)[0][:40]
        raise ValidationError(N_("Unknown file field '%(field)s'."), code="unknown_field", field=field,
                              params={"field": field})
    if request.files.get("prompts") is not None:
        batch_intake.add_prompts_file(tree, request.files["prompts"])
    return settings, batch_intake.items_from_tree(tree, refused)


def _settings_error(exc):
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    template, params = field_problem(first, field)
    return ValidationError(template, code="invalid_field", field=field, status=422, params=params)


@bp.post("")
@documented("Create a batch, or add to the batch of that name", request=BatchRequest, form=BatchUpload,
            responses={202: V1BatchCreated})
@access.limited("generate")
def create_batch():
    """JSON with the shared settings and `items` ([{name, image (Base64 or URL), prompt}]), or multipart:
    the zip in `file` (or a folder's files in `files`, each named by its relative path), an optional
    `prompts` file, and the shared settings as form fields. The zip is read in the manifest or the
    shot-list layout (README "Batches"). The same `name` again adds to that batch: tasks are made only
    for items not already completed or in progress. Refused items are listed with their reason."""
    import pydantic

    if request.mimetype == "multipart/form-data":
        try:
            settings, items = _upload()
        except pydantic.ValidationError as exc:
            raise _settings_error(exc) from None
    else:
        settings = parse_body(BatchRequest)
        items = batch_intake.json_items(settings)
    record, created = batches.submit(settings, items)
    answer = batch_progress.summary(record, with_items=False, translate=translate)
    return {"batch_id": record["id"], "status": answer["status"], "counts": answer["counts"], "created": created}, 202


@bp.get("")
@documented("List batches", responses={200: V1BatchList})
def list_batches():
    """Yours, newest first (the admin sees everyone's)."""
    records = current_app.extensions["batch_store"].list(owner=access.visible_owner())
    return {"batches": [batch_progress.summary(r, with_items=False, translate=translate) for r in records]}


@bp.get("/<batch_id>")
@documented("A batch with its items", responses={200: V1Batch})
def get_batch(batch_id):
    return batch_progress.summary(batches.batch_or_404(batch_id), translate=translate)


@bp.post("/<batch_id>/retry-failed")
@documented("Re-run the failed and cancelled items", responses={202: V1BatchRetried})
@access.limited("generate")
def retry_failed(batch_id):
    """Each failed or cancelled item gets one new task with the same settings and picture."""
    record, made, refused = batches.retry_failed(batches.batch_or_404(batch_id))
    refused = [{"name": r["name"], "code": r["code"], "message": shown_text(r, translate)} for r in refused]
    return {"batch_id": record["id"], "created": made, "refused": refused}, 202


@bp.post("/<batch_id>/pause")
@documented("Pause a batch: queued items are not sent", responses={200: V1Batch})
def pause(batch_id):
    return batch_progress.summary(batches.set_paused(batches.batch_or_404(batch_id), True), translate=translate)


@bp.post("/<batch_id>/resume")
@documented("Resume a paused batch", responses={200: V1Batch})
def resume(batch_id):
    return batch_progress.summary(batches.set_paused(batches.batch_or_404(batch_id), False), translate=translate)


@bp.post("/<batch_id>/cancel")
@documented("Cancel every item that has not finished", responses={200: V1Batch})
def cancel(batch_id):
    return batch_progress.summary(batches.cancel(batches.batch_or_404(batch_id)), translate=translate)


def _download_name(record, ext):
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in record["name"])[:80] or "batch"
    return f'attachment; filename="{safe}.{ext}"'


@bp.get("/<batch_id>/results.zip")
@documented("The results as a zip, named by item", responses={200: "application/zip"})
def results_zip(batch_id):
    """Every saved result of the completed items, e.g. `Episode-01-Shot-003.mp4`; streamed."""
    record = batches.batch_or_404(batch_id)
    chunks = batch_report.stream_results(current_app.config["DATA_DIR"], record, batch_progress.batch_tasks(record))
    return Response(chunks, mimetype="application/zip",
                    headers={"Content-Disposition": _download_name(record, "zip")})


def _report_parts(batch_id):
    record = batches.batch_or_404(batch_id)
    return record, batch_progress.batch_tasks(record), batch_progress.summary(record, translate=translate)["items"]


@bp.get("/<batch_id>/report.xlsx")
@documented("The report as an Excel workbook", responses={
    200: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"})
def report_xlsx(batch_id):
    """One row per item: thumbnail, name, prompt, status, provider/model, length, time taken, cost,
    times and a link to the file."""
    record, found, items = _report_parts(batch_id)
    data = batch_report.report_xlsx(current_app.config["DATA_DIR"], record, found, items)
    return Response(data, mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": _download_name(record, "xlsx")})


@bp.get("/<batch_id>/report.csv")
@documented("The report as CSV", responses={200: "text/csv"})
def report_csv(batch_id):
    """The columns of the Excel report without the picture."""
    record, found, items = _report_parts(batch_id)
    return Response(batch_report.report_csv(record, found, items), mimetype="text/csv",
                    headers={"Content-Disposition": _download_name(record, "csv")})
