"""Fetching pictures from URLs people give us, without letting them reach our own network.

Only http and https. The host is resolved once and every address must be public — not loopback,
private, link-local (169.254.169.254 is the cloud metadata service), shared, multicast, reserved
or unspecified. The connection then goes to the checked address itself, with the original host
name for TLS and the Host header, so a DNS answer that changes between check and connect cannot
send it elsewhere. Redirects are followed by hand, each hop checked the same way (at most 3);
the body is capped at 10 MiB.

The whole fetch — name lookup, connect, TLS handshake, headers and body, over every redirect —
has one wall-clock deadline (DEADLINE_SECONDS). Per-operation timeouts alone are not enough: a
server that sends one byte every few seconds never trips them. So every socket operation is
given only the time left until the deadline, recomputed before each read.

ALLOW_PRIVATE_URLS (a setting, off by default; for development and tests only) lets picture URLs
reach private and loopback addresses.
"""

import http.client
import io
import ipaddress
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import quote, urljoin, urlsplit

import certifi
from flask import current_app, has_app_context

from errors import N_, PayloadTooLarge, ValidationError

MAX_BYTES = 10 * 1024 * 1024
MAX_REDIRECTS = 3
DEADLINE_SECONDS = 15           # the whole fetch, every hop included
CONNECT_SECONDS = 5             # at most this per connect, within the deadline
IDLE_SECONDS = 10               # at most this of silence per read, within the deadline
REDIRECTS = (301, 302, 303, 307, 308)
# What is left of an authority once credentials are refused: a name or a bracketed IPv6 address, then
# an optional port. urlsplit lets `[::1]x` and `[::1]]` through; they are malformed, not hosts.
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:@]+)(:[0-9]*)?")
# getaddrinfo has no timeout of its own: lookups run here so a slow resolver cannot outlast the
# deadline (a stuck lookup finishes in the background within the resolver's own timeout).
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="safe-fetch-resolve")


class _DeadlinePassed(Exception):
    """The fetch's wall-clock deadline passed during a socket operation."""


def is_url(text):
    return isinstance(text, str) and "://" in text[:16]


def is_public(address):
    """True for an address on the public internet."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def private_allowed():
    """ALLOW_PRIVATE_URLS of the current app (False outside an app context)."""
    return has_app_context() and bool(current_app.config.get("ALLOW_PRIVATE_URLS"))


def _refuse(field, message, params=None):
    return ValidationError(message, code="unsafe_url", field=field, params={"field": field, **(params or {})})


def _invalid(field, message, params=None):
    return ValidationError(message, code="invalid_url", field=field, params={"field": field, **(params or {})})


def _unavailable(field, message, params=None):
    return ValidationError(message, code="url_unavailable", field=field, status=422,
                           params={"field": field, **(params or {})})


def parse(url, field):
    """(scheme, ASCII host, port, Host header, request target) of an http(s) URL, or a 400 naming `field`.

    Every way a URL can be malformed (an unclosed or invalid IPv6 bracket, a port that is not a
    number or out of range, no host, a host that is not a valid name) is an `invalid_url`.
    """
    if any(c <= " " or c == "\x7f" for c in url):        # urlsplit would drop tabs and newlines silently
        raise _invalid(field, N_("%(field)s: the URL contains spaces or control characters."))
    try:
        parts = urlsplit(url)
        scheme, hostname, explicit_port = parts.scheme, parts.hostname, parts.port
    except ValueError:
        raise _invalid(field, N_("%(field)s: the URL is malformed (its host or port cannot be read).")) from None
    if scheme not in ("http", "https"):
        raise _refuse(field, N_("%(field)s: only http and https URLs are accepted."))
    if parts.username is not None or parts.password is not None:
        raise _refuse(field, N_("%(field)s: URLs with credentials are not accepted."))
    if not hostname:
        raise _invalid(field, N_("%(field)s: the URL has no host."))
    if not _HOST_PORT.fullmatch(parts.netloc):
        raise _invalid(field, N_("%(field)s: the URL's host is not a valid name or address."))
    if ":" in hostname:
        host, header_host = hostname, f"[{hostname}]"      # an IPv6 literal (urlsplit checked it)
    else:
        try:
            host = hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise _invalid(field, N_("%(field)s: the URL's host is not a valid name.")) from None
        header_host = host
    port = explicit_port or (443 if scheme == "https" else 80)
    if explicit_port is not None:
        header_host += f":{explicit_port}"
    target = quote(parts.path or "/", safe="/%!$&'()*+,;=:@~-._") + \
        (f"?{quote(parts.query, safe='/%!$&()*+,;=:@?~-._')}" if parts.query else "")
    return scheme, host, port, header_host, target


def _resolve(host, port, field, deadline):
    future = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        raise _DeadlinePassed from None
    except (OSError, UnicodeError):
        raise _invalid(field, N_("%(field)s: the host %(host)r could not be found."),
                       params={"host": host}) from None
    return sorted({info[4][0] for info in infos})


def _checked_address(host, port, field, deadline):
    addresses = _resolve(host, port, field, deadline)
    if not addresses:
        raise _invalid(field, N_("%(field)s: the host %(host)r could not be found."),
                       params={"host": host})
    if not private_allowed() and not all(is_public(a) for a in addresses):
        raise _refuse(field, N_("%(field)s: %(host)s is not a public internet address; the studio only fetches "
                                "pictures from public http(s) URLs."),
                      params={"host": host})
    return addresses[0]


def _left(deadline, cap):
    left = deadline - time.monotonic()
    if left <= 0:
        raise _DeadlinePassed
    return min(left, cap)


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side where each read gets only the time left until the deadline."""

    def __init__(self, sock, deadline):
        super().__init__()
        self._sock, self._deadline = sock, deadline

    def readable(self):
        return True

    def readinto(self, buffer):
        self._sock.settimeout(_left(self._deadline, IDLE_SECONDS))
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """What http.client.HTTPResponse needs of a socket: a `makefile` bound to the deadline."""

    def __init__(self, sock, deadline):
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode):
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


def _connect(scheme, host, address, port, deadline):
    """A socket to the checked `address`, with TLS verified against `host` for https."""
    sock = socket.create_connection((address, port), timeout=_left(deadline, CONNECT_SECONDS))
    if scheme == "https":
        try:
            context = ssl.create_default_context(cafile=certifi.where())
            sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            # CPython bounds a whole handshake by the socket timeout, not each of its reads.
            sock.settimeout(_left(deadline, CONNECT_SECONDS))
            sock.do_handshake()
        except BaseException:
            sock.close()
            raise
    return sock


def _get(scheme, host, address, port, header_host, target, deadline):
    """The open response (and its socket) to GET `target` from `address`."""
    sock = _connect(scheme, host, address, port, deadline)
    try:
        request = (f"GET {target} HTTP/1.1\r\nHost: {header_host}\r\nUser-Agent: AIAPI-Studio\r\n"
                   "Accept: image/*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n")
        sock.settimeout(_left(deadline, IDLE_SECONDS))
        sock.sendall(request.encode("ascii"))
        response = http.client.HTTPResponse(_DeadlineSocket(sock, deadline), method="GET")
        response.begin()
        return response, sock
    except BaseException:
        sock.close()
        raise


def fetch(url, field, deadline=None):
    """The bytes at a public http(s) URL, or a ValidationError naming `field`.

    `deadline` is the wall-clock limit in seconds (DEADLINE_SECONDS when not given).
    """
    seconds = DEADLINE_SECONDS if deadline is None else deadline
    ends = time.monotonic() + seconds
    try:
        for _ in range(MAX_REDIRECTS + 1):
            scheme, host, port, header_host, target = parse(url, field)
            address = _checked_address(host, port, field, ends)
            response, sock = _get(scheme, host, address, port, header_host, target, ends)
            try:
                location = response.getheader("Location")
                if response.status in REDIRECTS and location:
                    url = urljoin(url, location)
                    continue
                if response.status != 200:
                    raise _unavailable(field, N_("%(field)s: the URL answered HTTP %(status)s."),
                                       params={"status": response.status})
                return _read_capped(response, field)
            finally:
                response.close()
                sock.close()
    except _DeadlinePassed:
        raise _unavailable(field, N_("%(field)s: fetching the picture took longer than %(seconds)s s."),
                           params={"seconds": format(seconds, "g")}) from None
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= ends:
            raise _unavailable(field, N_("%(field)s: fetching the picture took longer than %(seconds)s s."),
                               params={"seconds": format(seconds, "g")}) from None
        raise _unavailable(field, N_("%(field)s: the picture URL could not be fetched (%(error)s)."),
                           params={"error": type(exc).__name__}) from None
    raise _refuse(field, N_("%(field)s: too many redirects."))


def _read_capped(response, field):
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > MAX_BYTES:
        raise PayloadTooLarge(N_("%(field)s: the picture at the URL is larger than 10 MiB."), code="image_too_large",
                              field=field, params={"field": field})
    chunks, size = [], 0
    while chunk := response.read(64 * 1024):
        size += len(chunk)
        if size > MAX_BYTES:
            raise PayloadTooLarge(N_("%(field)s: the picture at the URL is larger than 10 MiB."),
                                  code="image_too_large", field=field, params={"field": field})
        chunks.append(chunk)
    return b"".join(chunks)
