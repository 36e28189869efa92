"""Reading a batch upload into items: a zip, a dropped folder, a directory on disk, or JSON rows.

Its own module because turning untrusted archives and prompt files into (name, picture, prompt)
items is one concern with its own dangers, apart from running the batch (batches.py). Every way
in becomes a *tree* (relative path -> a function that reads the file's bytes, at most once, never
extracted to disk by member name), and the tree is read in one of two layouts (README "Batches"):

- a manifest: one `.csv` or `.tsv` file with the header `image,prompt` and optionally `name` and
  `negative_prompt`; `image` is a picture's path relative to the manifest's folder;
- the shot-list layout of a series: pictures named `<Episode>-Shot-<NNN>.<ext>` (usually under
  `05_generated_images/<Episode>/`) and one prompts file per episode,
  `07_video_prompts/<Episode>-Video-Prompts.txt`, in which each shot's prompt starts with a line
  `Shot-<NNN>: text` and runs on over the following lines until the next such line (blank lines
  at either end are dropped, lines starting with `#` are comments). The item is `<Episode>/Shot-<NNN>`.

Zip members are refused one by one (listed as refused items) when their path has `..`, is absolute,
is a symlink, is encrypted, or unpacks more than 100 times its packed size; an archive of more than
10,000 members, or one that unpacks past BATCH_MAX_UPLOAD_MB, is refused whole with a 413.
"""

import base64
import binascii
import csv
import io
import os
import posixpath
import re
import stat
import zipfile
from dataclasses import dataclass
from functools import partial
from typing import Literal

from pydantic import BaseModel, Field

import errors
import safe_fetch
from errors import N_, PayloadTooLarge, ValidationError
from validation import STRICT, Text

MAX_MEMBERS = 10_000
MAX_RATIO = 100
RATIO_FREE_BYTES = 64 * 1024        # a member this small cannot bomb anything, whatever its ratio
MAX_ITEMS = 10_000
PICTURE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".heic", ".heif"}
IMAGES_DIR, PROMPTS_DIR = "05_generated_images", "07_video_prompts"
SHOT_PICTURE = re.compile(r"^(?P<episode>.+?)-Shot-(?P<shot>[0-9]{1,4})$", re.IGNORECASE)
PROMPT_FILE = re.compile(r"^(?P<episode>.+?)-Video-Prompts$", re.IGNORECASE)
SHOT_HEADER = re.compile(r"^\s*Shot[\s_-]*(?P<shot>[0-9]{1,4})\s*[:：]\s?(?P<text>.*)$", re.IGNORECASE)
MANIFEST_COLUMNS = {"image", "prompt", "name", "negative_prompt"}
_CONTROL = re.compile("[\x00-\x1f\x7f]")


@dataclass
class Item:
    """One row of a batch: its name, how to read its picture, its prompt; `error` when refused here."""

    name: str
    load: object = None                 # () -> picture bytes (may raise ValidationError)
    prompt: str | None = None
    negative_prompt: str | None = None
    error: dict | None = None           # {code, message, template, params}: errors.Text's fields


def refused(name, code, template, /, **params):
    """An item refused here: its reason kept as an English template and its parameters (the
    English `message` too), so the batch shows it in its reader's language (batch_progress.py)."""
    return Item(name=name, error={"code": code, **errors.Text(template, **params).fields()})


# ---- the shared settings and the JSON shape -------------------------------------------------

class BatchItemIn(BaseModel):
    model_config = STRICT

    name: Text = Field(min_length=1, max_length=200)
    image: Text | None = Field(None, description="Base64, a data: URI or an http(s) URL.")
    prompt: Text | None = Field(None, max_length=20000)
    negative_prompt: Text | None = Field(None, max_length=20000)


class BatchSettings(BaseModel):
    """What every item of a batch shares (the fields of /generate and /generate_image)."""

    model_config = STRICT

    name: Text | None = Field(None, max_length=200, description="The same name again adds to that batch.")
    kind: Literal["video", "image"] = "video"
    provider: Text = Field("local", max_length=64)
    model_name: Text | None = Field(None, max_length=100)
    mode: Text | None = Field(None, max_length=40)
    duration: Text | None = Field(None, max_length=10)
    cfg_scale: float | None = Field(None, ge=0, le=1)
    camera: Text | None = Field(None, max_length=40)
    negative_prompt: Text | None = Field(None, max_length=2500)
    aspect_ratio: Text | None = Field(None, max_length=20)
    n: int | None = Field(None, ge=1, le=9)
    seed: int | None = Field(None, ge=0, le=2147483647)
    sound: bool | None = None


class BatchRequest(BatchSettings):
    """`POST /api/v1/batches` as JSON: the shared settings and the items."""

    items: list[BatchItemIn] = Field(min_length=1, max_length=MAX_ITEMS)


class BatchUpload(BatchSettings):
    """`POST /api/v1/batches` as multipart: the pictures (a zip, or a folder's files) and the shared settings."""

    file: bytes | None = Field(None, description="A zip in the shot-list or the manifest layout.")
    files: list[bytes] = Field([], description="A folder's files, each named by its path relative to the folder.")
    prompts: bytes | None = Field(None, description="A prompts file beside the pictures (.csv, .tsv or "
                                                    "<Episode>-Video-Prompts.txt).")


_FORM_TYPES = {"cfg_scale": float, "n": int, "seed": int, "sound": lambda v: {"true": True, "1": True, "false": False,
                                                                            "0": False}[v.strip().lower()]}


def settings_from_form(form):
    """The shared settings from multipart form fields (text), typed as the JSON shape has them."""
    values = {}
    for name, value in form.items():
        if name not in BatchSettings.model_fields:
            raise ValidationError(N_("Unknown field '%(field)s'."), code="unknown_field", field=name[:40],
                                  params={"field": name[:40]})
        if value == "":
            continue
        try:
            values[name] = _FORM_TYPES.get(name, str)(value)
        except (ValueError, KeyError):
            raise ValidationError(N_("%(field)s has a value of the wrong type."), code="invalid_field", field=name,
                                  params={"field": name}) from None
    return values


def json_items(req):
    """Items of a JSON batch: Base64 pictures decoded, URLs fetched (safe_fetch) when read."""
    return [Item(name=row.name, load=partial(_json_picture, row.image, f"items.{i}.image"),
                 prompt=row.prompt, negative_prompt=row.negative_prompt) for i, row in enumerate(req.items)]


def _json_picture(data, field):
    if data is None:
        raise ValidationError(N_("The item has no picture."), code="picture_missing", field=field)
    if safe_fetch.is_url(data):
        try:
            return safe_fetch.fetch(data.strip(), field)
        except ValueError:
            raise ValidationError(N_("%(field)s is not a valid URL."), code="invalid_url", field=field,
                                  params={"field": field}) from None
    text = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(re.sub(r"\s", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(N_("%(field)s is not valid Base64."), code="invalid_image", field=field,
                              params={"field": field}) from None


# ---- trees: zip, uploaded files, a folder on disk --------------------------------------------

def _path_problem(name):
    """Why a member path is refused, or None. Backslashes count as separators (Windows zips)."""
    if _CONTROL.search(name):
        return N_("Refused: control characters in the name.")
    path = name.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return N_("Refused: an absolute path.")
    if ".." in path.split("/"):
        return N_("Refused: a path with '..'.")
    return None


def _display(name):
    return _CONTROL.sub("?", name)[:200]


def _ignored(path):
    """Archive junk: macOS resource forks, hidden files, folders."""
    return path.endswith("/") or any(part.startswith(".") or part == "__MACOSX" for part in path.split("/") if part)


def zip_tree(fileobj, max_bytes):
    """(tree, refused items) of a zip upload, or a 4xx naming `file` for an unusable archive."""
    try:
        archive = zipfile.ZipFile(fileobj)
        members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise ValidationError(N_("file is not a readable zip archive."), code="invalid_zip", field="file") from None
    if len(members) > MAX_MEMBERS:
        raise PayloadTooLarge(N_("The zip has %(count)s members; at most %(max)s are taken."),
                              code="too_many_members", field="file", params={"count": len(members), "max": MAX_MEMBERS})
    tree, refusals, total = {}, [], 0
    for info in members:
        problem = _member_problem(info)
        if problem:
            refusals.append(refused(_display(info.filename), "unsafe_member", problem, max=MAX_RATIO))
            continue
        path = info.filename.replace("\\", "/")
        if _ignored(path):
            continue
        total += info.file_size
        tree[path] = partial(_read_member, archive, info)
    if total > max_bytes:
        raise PayloadTooLarge(N_("The zip unpacks to more than %(mb)s MB."), code="upload_too_large",
                              field="file", params={"mb": max_bytes // 2**20})
    return tree, refusals


def _member_problem(info):
    problem = _path_problem(info.filename)
    if problem:
        return problem
    if stat.S_ISLNK(info.external_attr >> 16):
        return N_("Refused: a symbolic link.")
    if info.flag_bits & 0x1:
        return N_("Refused: an encrypted member.")
    if info.file_size > RATIO_FREE_BYTES and info.file_size > MAX_RATIO * max(1, info.compress_size):
        return N_("Refused: it unpacks to more than %(max)s times its packed size.")
    return None


def _read_member(archive, info):
    # zipfile stops at the declared size and checks the CRC: a lying header cannot unpack more.
    try:
        with archive.open(info) as member:
            return member.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, NotImplementedError, EOFError) as exc:
        raise ValidationError(N_("The zip member could not be read (%(error)s)."), code="invalid_zip",
                              field="file", params={"error": type(exc).__name__}) from None


def files_tree(storages):
    """(tree, refused items) of uploaded files (a dropped folder: each file named by its relative path)."""
    tree, refusals = {}, []
    for storage in storages:
        name = storage.filename or ""
        problem = _path_problem(name)
        if problem:
            refusals.append(refused(_display(name), "unsafe_member", problem))
            continue
        path = name.replace("\\", "/").removeprefix("./")
        if path and not _ignored(path):
            tree[path] = storage.read
    return tree, refusals


def dir_tree(root):
    """(tree, refused items) of a folder on disk; symbolic links are refused, never followed."""
    tree, refusals = {}, []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if _ignored(rel):
                continue
            if os.path.islink(full):
                refusals.append(refused(_display(rel), "unsafe_member", N_("Refused: a symbolic link.")))
            else:
                tree[rel] = partial(_read_file, full)
    return tree, refusals


def _read_file(path):
    with open(path, "rb") as f:
        return f.read()


def add_prompts_file(tree, storage):
    """A prompts file given beside the pictures: a manifest (.csv/.tsv) or an episode's prompts (.txt)."""
    name = posixpath.basename((storage.filename or "").replace("\\", "/"))
    ext = posixpath.splitext(name)[1].lower()
    if ext not in (".csv", ".tsv", ".txt"):
        raise ValidationError(N_("prompts must be a .csv, .tsv or <Episode>-Video-Prompts.txt file."),
                              code="invalid_prompts", field="prompts")
    tree[name if ext != ".txt" else f"{PROMPTS_DIR}/{name}"] = storage.read


# ---- layouts --------------------------------------------------------------------------------

def items_from_tree(tree, refusals, field="file"):
    """The items of a tree in its layout (manifest or shot list); a 422 naming `field` when it has neither."""
    manifests = sorted(p for p in tree if posixpath.splitext(p)[1].lower() in (".csv", ".tsv"))
    if len(manifests) > 1:
        raise ValidationError(N_("Give one manifest, not %(count)s: %(names)s."), code="invalid_manifest",
                              field=field, params={"count": len(manifests), "names": manifests[:3]})
    if manifests:
        items = _manifest_items(tree, manifests[0], field)
    elif any(PROMPT_FILE.match(posixpath.splitext(posixpath.basename(p))[0]) for p in tree if p.endswith(".txt")):
        items = _shot_list_items(tree, field)
    else:
        raise ValidationError(N_("No manifest (.csv/.tsv with image,prompt) and no <Episode>-Video-Prompts.txt "
                                 "was found."), code="no_layout", field=field)
    items = refusals + items
    if not items:
        raise ValidationError(N_("The upload holds no items."), code="no_items", field=field)
    if all(item.error for item in items):
        raise ValidationError(N_("None of the %(count)s items of the upload can be used: %(reasons)s"),
                              code="no_usable_items", field=field, status=422,
                              params={"count": len(items), "reasons": [_reason(i) for i in items[:3]]})
    if len(items) > MAX_ITEMS:
        raise PayloadTooLarge(N_("The upload holds %(count)s items; at most %(max)s are taken."),
                              code="too_many_items", field=field, params={"count": len(items), "max": MAX_ITEMS})
    return items


def _reason(item):
    """A refused item's name and reason, as a message the error quotes (errors._nested)."""
    reason = {"template": item.error.get("template") or item.error["message"], "params": item.error.get("params")}
    return {"template": N_("%(name)s (%(reason)s)"), "params": {"name": item.name, "reason": reason}}


def _text(tree, path, field):
    try:
        return tree[path]().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError(N_("%(path)s is not UTF-8 text."), code="invalid_prompts", field=field,
                              params={"path": path}) from None


def _manifest_items(tree, manifest, field):
    text = _text(tree, manifest, field)
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if manifest.lower().endswith(".tsv") else ",")
    columns = {c.strip().lower() for c in reader.fieldnames or []}
    if not {"image", "prompt"} <= columns or columns - MANIFEST_COLUMNS:
        raise ValidationError(N_("%(path)s needs the header image,prompt (and may have name, negative_prompt); "
                                 "it has: %(columns)s."), code="invalid_manifest", field=field,
                              params={"path": manifest, "columns": ", ".join(sorted(columns))[:200]})
    base = posixpath.dirname(manifest)
    items = []
    for number, raw in enumerate(reader, 2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        image = row.get("image", "")
        name = row.get("name") or posixpath.splitext(image)[0] or f"row-{number}"
        path = posixpath.normpath(posixpath.join(base, image.replace("\\", "/"))) if image else ""
        if not image:
            items.append(refused(name, "picture_missing", N_("Row %(row)s names no picture."), row=number))
        elif _path_problem(image) or path not in tree:
            items.append(refused(name, "picture_missing", N_("Row %(row)s: no picture '%(image)s' in the upload."),
                                 row=number, image=image[:200]))
        else:
            items.append(Item(name=name, load=tree[path], prompt=row.get("prompt"),
                              negative_prompt=row.get("negative_prompt") or None))
    return items


def parse_prompts(text):
    """{shot number: prompt} of one episode's prompts file (the format in the module docstring)."""
    prompts, current, lines = {}, None, []

    def close():
        if current is not None and current not in prompts:    # the first prompt for a shot wins
            prompts[current] = "\n".join(lines).strip()
    for line in text.splitlines():
        header = SHOT_HEADER.match(line)
        if header:
            close()
            current, lines = int(header.group("shot")), [header.group("text")]
        elif current is not None and not line.lstrip().startswith("#"):
            lines.append(line)
    close()
    return prompts


def _shot_list_items(tree, field):
    pictures, prompts, names, items = {}, {}, {}, []
    for path in sorted(tree):
        stem, ext = posixpath.splitext(posixpath.basename(path))
        in_prompts = PROMPTS_DIR in path.split("/")
        prompt_file = PROMPT_FILE.match(stem)
        shot = SHOT_PICTURE.match(stem)
        if ext.lower() == ".txt" and prompt_file:
            episode = prompt_file.group("episode")
            for number, text in parse_prompts(_text(tree, path, field)).items():
                prompts.setdefault((episode.lower(), number), text)
                names.setdefault((episode.lower(), number), f"{episode}/Shot-{number:03d}")
        elif in_prompts:
            continue
        elif shot and ext.lower() in PICTURE_EXTS:
            key = (shot.group("episode").lower(), int(shot.group("shot")))
            pictures.setdefault(key, (f"{shot.group('episode')}/Shot-{shot.group('shot')}", tree[path]))
        elif IMAGES_DIR in path.split("/"):
            reason = (N_("%(file)s: not a picture (.png, .jpg, .webp, .bmp, .heic).") if ext.lower() not in PICTURE_EXTS
                      else N_("%(file)s: not named <Episode>-Shot-<NNN>."))
            items.append(refused(path[:200], "not_a_shot", reason, file=posixpath.basename(path)[:100]))
    for key in sorted(set(pictures) | set(prompts)):
        name, load = pictures.get(key, (names.get(key), None))
        if load is None:
            items.append(refused(name, "picture_missing", N_("No picture for %(name)s."), name=name))
        elif not prompts.get(key):
            items.append(refused(name, "prompt_missing", N_("No prompt for %(name)s in its Video-Prompts file."),
                                 name=name))
        else:
            items.append(Item(name=name, load=load, prompt=prompts[key]))
    return items
