"""Fetching pictures from URLs people give us, without letting them reach our own network.

Only http and https. The host is resolved once and every address must be public — not loopback,
private, link-local (169.254.169.254 is the cloud metadata service), shared, multicast, reserved
or unspecified. The connection then goes to the checked address itself, with the original host
name for TLS and the Host header, so a DNS answer that changes between check and connect cannot
send it elsewhere. Redirects are followed by hand, each hop checked the same way (at most 3);
the body is capped at 10 MiB and the whole fetch at 15 seconds.
"""

import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3

from errors import PayloadTooLarge, ValidationError

MAX_BYTES = 10 * 1024 * 1024
MAX_REDIRECTS = 3
DEADLINE_SECONDS = 15
TIMEOUT = urllib3.Timeout(connect=5, read=10)
REDIRECTS = (301, 302, 303, 307, 308)


def is_url(text):
    return isinstance(text, str) and "://" in text[:16]


def is_public(address):
    """True for an address on the public internet."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _refuse(field, message):
    return ValidationError(message, code="unsafe_url", field=field)


def _public_address(host, port, field):
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ValidationError(f"{field}: the host {host!r} could not be found.", code="invalid_url",
                              field=field) from None
    addresses = sorted({info[4][0] for info in infos})
    if not addresses or not all(is_public(a) for a in addresses):
        raise _refuse(field, f"{field}: {host} is not a public internet address; the studio only fetches "
                             "pictures from public http(s) URLs.")
    return addresses[0]


def fetch(url, field):
    """The bytes at a public http(s) URL, or a ValidationError naming `field`."""
    started = time.monotonic()
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refuse(field, f"{field}: only http and https URLs are accepted.")
        if parts.username or parts.password:
            raise _refuse(field, f"{field}: URLs with credentials are not accepted.")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValidationError(f"{field}: the URL's port is not a number.", code="invalid_url",
                                  field=field) from None
        address = _public_address(parts.hostname, port, field)
        response = _get(parts, address, port, field)
        try:
            if response.status in REDIRECTS and response.headers.get("Location"):
                url = urljoin(url, response.headers["Location"])
                continue
            if response.status != 200:
                raise ValidationError(f"{field}: the URL answered HTTP {response.status}.", code="url_unavailable",
                                      field=field, status=422)
            return _read_capped(response, field, started)
        finally:
            response.release_conn()
    raise _refuse(field, f"{field}: too many redirects.")


def _get(parts, address, port, field):
    """GET the URL's path from `address`, naming the original host for TLS and in Host."""
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(address, port, server_hostname=parts.hostname,
                                           assert_hostname=parts.hostname, cert_reqs="CERT_REQUIRED",
                                           ca_certs=certifi.where(), timeout=TIMEOUT, retries=False)
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=TIMEOUT, retries=False)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    try:
        return pool.urlopen("GET", target, headers={"Host": host, "User-Agent": "AIAPI-Studio"},
                            redirect=False, preload_content=False)
    except urllib3.exceptions.HTTPError as exc:
        raise ValidationError(f"{field}: the picture URL could not be fetched ({type(exc).__name__}).",
                              code="url_unavailable", field=field, status=422) from None


def _read_capped(response, field, started):
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > MAX_BYTES:
        raise PayloadTooLarge(f"{field}: the picture at the URL is larger than 10 MiB.", code="image_too_large",
                              field=field)
    chunks, size = [], 0
    for chunk in response.stream(64 * 1024):
        size += len(chunk)
        if size > MAX_BYTES:
            raise PayloadTooLarge(f"{field}: the picture at the URL is larger than 10 MiB.",
                                  code="image_too_large", field=field)
        if time.monotonic() - started > DEADLINE_SECONDS:
            raise ValidationError(f"{field}: fetching the picture took longer than {DEADLINE_SECONDS} s.",
                                  code="url_unavailable", field=field, status=422)
        chunks.append(chunk)
    return b"".join(chunks)
