"""Stripping query strings and fragments from URLs before a text is logged, stored or shown.

Provider result links are signed (`?Expires=…&Signature=…`, `?OSSAccessKeyId=…`): whoever reads
the query string can fetch the result, often for days. The messages of HTTP libraries embed the
URL they failed on (requests: "… for url: https://…?Signature=…"; urllib3: "… with url:
/path?Signature=… (Caused by …)"), so every such text goes through `redact_url` before it reaches
a log, a task's error or an API response. It is a module of its own because the download code,
the task pipeline and logging all need it, and none of them should own it for the others.
"""

import re

# An http(s) URL, or the path urllib3 names after "url:", split into what is kept and its query/fragment.
_URL_QUERY = re.compile(r"""(?i)(\bhttps?://[^\s?#'"<>]*|\burl: /[^\s?#'"<>]*)[?#][^\s'"<>]*""")


def redact_url(text):
    """`text` with the query string and fragment of every URL in it removed."""
    return _URL_QUERY.sub(r"\1", str(text))
