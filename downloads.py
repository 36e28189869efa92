"""Saving provider results to disk: resumable, verified, and aware of expiring links.

A result is streamed to `<name>.part`, resumed with an HTTP `Range` request after a cut, checked
(size against the server's length, then decoded as a picture or video) and only then renamed to
its final name, so a file under its real name is always whole. Provider links expire (DashScope
24 h, LiblibAI 7 d, Kling 30 d); the deadline is the earlier of what the provider said and the
`Expires` a signed URL carries, and a link past it raises `ResultExpired`.
"""

import errno
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

import media

TIMEOUT = (10, 60)              # connect, read (seconds)
CHUNK = 64 * 1024              # small enough that a cut loses little of what arrived
SUFFIXES = (".mp4", ".mov", ".webm", ".png", ".jpg", ".jpeg", ".webp")


class ResultExpired(Exception):
    """The provider's result link expired before the file could be saved."""


class DownloadIncomplete(Exception):
    """The transfer stopped early; the .part file is kept to resume from."""


def link_expiry(url, declared=None):
    """The earlier of the provider's declared expiry (ISO) and a signed URL's own `Expires`."""
    moments = []
    if declared:
        moments.append(datetime.fromisoformat(declared.replace("Z", "+00:00")))
    query = parse_qs(urlsplit(url).query)
    expires = (query.get("Expires") or query.get("expires") or [""])[0]
    if expires.isdigit():
        moments.append(datetime.fromtimestamp(int(expires), UTC))
    return min(moments) if moments else None


def disk_full(exc):
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _write(f, chunk):
    """One write to the .part file (a seam for simulating a full disk in tests)."""
    f.write(chunk)


def fetch(url, dest):
    """Download `url` to `dest`, resuming a previous `.part`; returns the byte count."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, stream=True, timeout=TIMEOUT, headers=headers) as resp:
        if resp.status_code == 416:         # our .part is not a prefix the server recognises
            part.unlink(missing_ok=True)
            raise DownloadIncomplete("the partial download did not match; starting over")
        resp.raise_for_status()
        if resp.status_code != 206:
            have = 0                        # the server ignored Range: take the whole body
        total = _total_length(resp, have)
        with open(part, "ab" if have else "wb") as f:
            try:
                for chunk in resp.iter_content(CHUNK):
                    _write(f, chunk)
            finally:
                f.flush()
                os.fsync(f.fileno())
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadIncomplete(f"got {size} of {total} bytes; will resume")
    try:
        media.probe_media(part)
    except ValueError:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return size


def _total_length(resp, have):
    content_range = resp.headers.get("Content-Range", "")
    match = re.match(r"bytes (\d+)-\d+/(\d+)", content_range)
    if resp.status_code == 206 and match:
        if int(match.group(1)) != have:
            raise DownloadIncomplete("the server resumed at the wrong offset")
        return int(match.group(2))
    length = resp.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def save_output(data_dir, task_id, index, out, now):
    """The output entry with its file on disk, verified and thumbnailed (already-saved ones as is)."""
    data_dir = Path(data_dir)
    if out.get("sha256") and (data_dir / out["path"]).exists():
        return out
    folder = Path("outputs") / task_id
    if out.get("path"):
        rel = Path(out["path"])             # the local engine writes straight into DATA_DIR
    else:
        expires = link_expiry(out["remote_url"], out.get("remote_expires_at"))
        if expires and expires <= now:
            raise ResultExpired(f"The provider's result link expired at {expires:%Y-%m-%d %H:%M} UTC "
                                "before it could be saved.")
        suffix = Path(urlsplit(out["remote_url"]).path).suffix.lower()
        if suffix not in SUFFIXES:
            suffix = ".mp4" if out["kind"] == "video" else ".png"
        rel = folder / f"{out['kind']}-{index + 1}{suffix}"
        if not (data_dir / rel).exists():
            fetch(out["remote_url"], data_dir / rel)
    facts = media.probe_media(data_dir / rel)
    thumb = folder / f"thumb-{index + 1}.jpg"
    media.make_thumbnail(data_dir / rel, data_dir / thumb)
    return {**out, "path": rel.as_posix(), "url": "/media/" + rel.as_posix(),
            "thumbnail_url": "/media/" + thumb.as_posix(), "bytes": facts["bytes"],
            "sha256": facts["sha256"], "width": facts["width"], "height": facts["height"],
            "duration": facts["duration"]}
