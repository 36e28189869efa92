"""What a batch hands out: a zip of its results named by item, and a report as XLSX or CSV.

Its own module because packing files and writing spreadsheets is apart from running the batch.
Files are found only through the items' task records (an output's `path` under
`DATA_DIR/outputs/<task id>/`), opened without following symbolic links, so nothing else on the
disk can be packed. The zip is streamed as it is written (stored, not compressed: videos and
pictures are compressed already). The XLSX (XlsxWriter) has one row per item with its thumbnail
embedded, its name, prompt, status, provider/model, length, time taken, cost, times and a link to
its file; the CSV has the same columns without the picture.
"""

import csv
import io
import os
import stat
import zipfile

from flask import url_for
from PIL import Image

import fileio
import tasks

COLUMNS = ("Picture", "Name", "Prompt", "Status", "Provider", "Model", "Length (s)", "Took (s)", "Cost",
           "Created", "Finished", "Error", "File")
THUMB_SIDE = 120                # pixels of the embedded thumbnail's long side
CHUNK = 1024 * 1024


def result_name(item_name, index, ext, count):
    """`Episode-01/Shot-003` -> `Episode-01-Shot-003.mp4` (`-2`, `-3` ... when a task made several)."""
    base = "-".join(part for part in item_name.replace("\\", "/").split("/") if part not in ("", ".", ".."))
    base = "".join(c if c.isalnum() or c in "-_. " else "_" for c in base).strip() or "item"
    return f"{base}{'' if count == 1 else f'-{index + 1}'}.{ext}"


def _open_output(data_dir, task, out):
    """The output file opened for reading, or None; only a regular file inside the task's own folder."""
    rel = out.get("path") or ""
    data_dir = fileio.media_root(data_dir)
    folder = os.path.realpath(os.path.join(data_dir, "outputs", task["id"]))
    path = os.path.join(data_dir, rel)
    if not rel or os.path.realpath(os.path.dirname(path)) != folder:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _files(data_dir, record, found):
    """(name in the zip, open file) of every saved result of a completed item."""
    for entry in record["items"]:
        task = found.get(entry.get("task_id"))
        if not task or task["status"] != tasks.SUCCEEDED:
            continue
        outputs = [o for o in task.get("outputs") or [] if o.get("path")]
        for index, out in enumerate(outputs):
            fh = _open_output(data_dir, task, out)
            if fh is not None:
                yield result_name(entry["name"], index, out["path"].rsplit(".", 1)[-1], len(outputs)), fh


class _Sink(io.RawIOBase):
    """A write-only stream that keeps what is written until it is taken (zipfile writes, we yield)."""

    def __init__(self):
        self.parts = []

    def writable(self):
        return True

    def write(self, data):
        self.parts.append(bytes(data))
        return len(data)

    def take(self):
        data, self.parts = b"".join(self.parts), []
        return data


def stream_results(data_dir, record, found):
    """The results zip, chunk by chunk (a generator for a streamed response)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        for name, fh in _files(data_dir, record, found):
            with fh, archive.open(name, "w", force_zip64=True) as member:
                while chunk := fh.read(CHUNK):
                    member.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


def _row(entry, item, task):
    """The report's values for one item (the picture column is filled separately)."""
    out = next((o for o in (task or {}).get("outputs") or [] if o.get("path")), None)
    took = None
    if task and task.get("finished_at") and task["status"] == tasks.SUCCEEDED:
        took = round((tasks.parse_iso(task["finished_at"])
                      - tasks.parse_iso(task.get("submitted_at") or task["created_at"])).total_seconds(), 1)
    cost = ", ".join(f"{v} {k}" for k, v in ((task or {}).get("cost") or {}).items())
    link = url_for("task_query.media_file", subpath=out["path"], _external=True) if out else ""
    error = (item.get("error") or {}).get("message") or ""
    return [None, entry["name"], item.get("prompt") or "", item["status"], (task or {}).get("provider", ""),
            (task or {}).get("model", ""), (out or {}).get("duration"), took, cost,
            (task or {}).get("created_at", ""), (task or {}).get("finished_at") or "", error, link]


def rows(record, found, items):
    return [(_row(entry, item, found.get(entry.get("task_id"))), found.get(entry.get("task_id")))
            for entry, item in zip(record["items"], items, strict=True)]


def report_csv(record, found, items):
    """The report as CSV text (UTF-8 with a BOM, so spreadsheet programs read Chinese right)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS[1:])
    for values, _task in rows(record, found, items):
        writer.writerow([_inert("" if v is None else v) for v in values[1:]])
    return "\ufeff" + buffer.getvalue()


def _inert(value):
    """A CSV cell a spreadsheet will not run: text starting with = + - @ (or a tab/CR) gets a leading '."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _thumbnail_png(data_dir, task):
    """A small PNG of the item's thumbnail (or its input picture), or None."""
    if not task:
        return None
    candidates = [o["thumbnail_url"][len("/media/"):] for o in task.get("outputs") or []
                  if (o.get("thumbnail_url") or "").startswith("/media/")]
    candidates += [i["path"] for i in task.get("inputs") or [] if i.get("path")]
    for rel in candidates:
        path = os.path.join(fileio.media_root(data_dir), rel)
        if os.path.isfile(path) and not os.path.islink(path):
            with Image.open(path) as img:
                img = img.convert("RGB")
                img.thumbnail((THUMB_SIDE, THUMB_SIDE))
                out = io.BytesIO()
                img.save(out, "PNG")
                return out, img.size
    return None


def report_xlsx(data_dir, record, found, items):
    """The report as XLSX bytes: one row per item, its thumbnail embedded in the first column."""
    import xlsxwriter

    buffer = io.BytesIO()
    # People's prompts are text, never formulas or links (a prompt "=HYPERLINK(...)" stays words).
    book = xlsxwriter.Workbook(buffer, {"in_memory": True, "strings_to_urls": False, "strings_to_formulas": False,
                                        "strings_to_numbers": False})
    sheet = book.add_worksheet("Batch")
    bold, wrap = book.add_format({"bold": True}), book.add_format({"text_wrap": True, "valign": "top"})
    sheet.write_row(0, 0, COLUMNS, bold)
    sheet.set_column(0, 0, THUMB_SIDE / 7 + 2)
    sheet.set_column(1, 1, 24)
    sheet.set_column(2, 2, 50)
    sheet.set_column(3, len(COLUMNS) - 1, 14)
    for number, (values, task) in enumerate(rows(record, found, items), 1):
        sheet.set_row(number, THUMB_SIDE * 0.75 + 4)
        for column, value in enumerate(values[1:], 1):
            if column == len(COLUMNS) - 1 and value:
                sheet.write_url(number, column, value, string="open")
            elif value is not None:
                sheet.write(number, column, value, wrap)
        thumb = _thumbnail_png(data_dir, task)
        if thumb:
            sheet.insert_image(number, 0, f"{values[1]}.png", {"image_data": thumb[0], "object_position": 1,
                                                              "x_offset": 2, "y_offset": 2})
    sheet.freeze_panes(1, 0)
    book.close()
    return buffer.getvalue()
