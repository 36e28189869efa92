"""Saving provider results to disk: resumable, verified, and aware of expiring links.

A result is streamed to `<name>.part`, resumed with an HTTP `Range` request after a cut, checked
(size against the server's length, then decoded as a picture or video) and only then renamed to
its final name, so a file under its real name is always whole. Provider links expire (DashScope
24 h, LiblibAI 7 d, Kling 30 d); the deadline is the earlier of what the provider said and the
`Expires` a signed URL carries, and a link past it raises `ResultExpired`.

Result links come from provider answers, so they get the picture-URL rule (safe_fetch): every
address the host resolves to must be public, checked before the request and again against the
address actually connected to, on every redirect hop (followed by hand, at most 3). The host and
port of each configured provider API base (KLING_API_BASE, …, any `*_BASE` setting) are allowed
as they are — a self-hosted or fake provider on a private address serves its results from
there — and ALLOW_PRIVATE_URLS allows everything. A refused link raises `AddressRefused`.
Messages never carry a link's query string (redact.py): signed links are credentials.
"""

import errno
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

import fileio
import media
import safe_fetch
from redact import redact_url

log = logging.getLogger(__name__)

TIMEOUT = (10, 60)              # connect, read (seconds)
CHUNK = 64 * 1024              # small enough that a cut loses little of what arrived
SUFFIXES = (".mp4", ".mov", ".webm", ".png", ".jpg", ".jpeg", ".webp")
MAX_REDIRECTS = 3


class ResultExpired(Exception):
    """The provider's result link expired before the file could be saved."""


class DownloadIncomplete(Exception):
    """The transfer stopped early; the .part file is kept to resume from."""


class AddressRefused(ValueError):
    """The result link points at an address the studio does not fetch from (see the module docstring)."""


@dataclass(frozen=True)
class AddressPolicy:
    """Where result links may point: public addresses, plus `hosts` ((host, port) pairs), or anything."""

    hosts: frozenset = field(default_factory=frozenset)
    allow_private: bool = False


STRICT = AddressPolicy()
# DATA_DIR -> the policy of the app using it (configure() at app start). The pipeline runs outside
# any request or app context and knows its app only by its store's directory.
_policies = {}


def configure(config):
    """Record the address policy of an app (its provider API bases and ALLOW_PRIVATE_URLS)."""
    hosts = set()
    # Every *_BASE setting: KLING_API_BASE, AI302_API_BASE, DASHSCOPE_API_BASE, LIBLIB_API_BASE, and the
    # base of any provider built on their protocols.
    for name in sorted(k for k in config if k.endswith("_BASE")):
        value = config[name]
        try:
            parts = urlsplit(value) if isinstance(value, str) else None
            if parts and parts.scheme in ("http", "https") and parts.hostname:
                hosts.add((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
        except ValueError:
            continue                # a malformed base fails at the provider call, not here
    _policies[str(Path(config["DATA_DIR"]).resolve())] = AddressPolicy(frozenset(hosts),
                                                                        bool(config.get("ALLOW_PRIVATE_URLS")))


def policy_for(data_dir):
    return _policies.get(str(Path(data_dir).resolve()), STRICT)


def _host_port(url):
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise AddressRefused(f"the result link {redact_url(url)} is malformed") from None
    if parts.scheme not in ("http", "https") or not host:
        raise AddressRefused(f"the result link {redact_url(url)} is not an http(s) URL")
    return host, port or (443 if parts.scheme == "https" else 80)


def _refused(url, host):
    log.warning("refused a result link to a non-public address: %s", redact_url(url))
    return AddressRefused(f"the result link points at {host}, which is not a public internet address "
                          "nor a configured provider")


def check_address(url, policy):
    """Refuse `url` unless its host is allowed by `policy` or resolves only to public addresses.

    Returns whether the connected peer must be checked too (False for hosts allowed by name).
    """
    host, port = _host_port(url)
    if policy.allow_private or (host, port) in policy.hosts:
        return False
    addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    if not addresses or not all(safe_fetch.is_public(a) for a in addresses):
        raise _refused(url, host)
    return True


def _peer_socket(resp):
    """The socket a streaming requests response reads from (None if it cannot be found).

    A kept-alive connection still holds it; a response that closes the connection took it over
    from http.client (its reader is a socket.SocketIO). Both versions are pinned in requirements.txt.
    """
    sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
    if sock is None:
        reader = getattr(getattr(getattr(resp.raw, "_fp", None), "fp", None), "raw", None)
        sock = getattr(reader, "_sock", None)
    return sock


def _check_peer(resp, url):
    """The address we actually reached must be public too: a DNS answer can change after the check."""
    sock = _peer_socket(resp)
    # Cannot tell where it went: do not read it.
    if sock is None or not safe_fetch.is_public(sock.getpeername()[0]):
        raise _refused(url, urlsplit(url).hostname)


def _open(url, headers, policy):
    """The streaming response for `url`, redirects followed by hand with every hop checked."""
    for _ in range(MAX_REDIRECTS + 1):
        check_peer = check_address(url, policy)
        resp = requests.get(url, stream=True, timeout=TIMEOUT, headers=headers, allow_redirects=False)
        try:
            if check_peer:
                _check_peer(resp, url)
            if resp.is_redirect and resp.headers.get("Location"):
                url = urljoin(url, resp.headers["Location"])
                resp.close()
                continue
        except BaseException:
            resp.close()
            raise
        return resp
    raise AddressRefused("the result link redirected too many times")


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


def fetch(url, dest, policy=STRICT):
    """Download `url` to `dest`, resuming a previous `.part`; returns the byte count.

    `policy` says which addresses the link may point at (AddressPolicy; public only by default).
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with _open(url, headers, policy) as resp:
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
    policy = policy_for(data_dir)
    data_dir = fileio.media_root(data_dir)      # outputs/ lives there; the record's paths are relative to it
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
            fetch(out["remote_url"], data_dir / rel, policy)
    facts = media.probe_media(data_dir / rel)
    thumb = folder / f"thumb-{index + 1}.jpg"
    media.make_thumbnail(data_dir / rel, data_dir / thumb)
    return {**out, "path": rel.as_posix(), "url": "/media/" + rel.as_posix(),
            "thumbnail_url": "/media/" + thumb.as_posix(), "bytes": facts["bytes"],
            "sha256": facts["sha256"], "width": facts["width"], "height": facts["height"],
            "duration": facts["duration"]}
