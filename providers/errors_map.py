"""Turning a provider's error answer into a `ProviderError`, from a table of rules.

Its own module, not base.py, because it is one concern with its own vocabulary (rules, phases,
status ranges) that only the HTTP providers use, and base.py stays the interface a provider
implements. Each provider module keeps its table next to its protocol notes.

A table is an ordered list of `Rule`s; the first rule that matches decides. A rule matches on the
provider's structured code (`codes`; a code ending in "*" matches every code that starts with
the rest), on the HTTP status (`statuses`), or on either, and only in the phase it names (a
submit, where a server failure may mean "created", or anything else). The provider's message text
is only ever shown, never matched. Messages are `N_` templates filled from the provider's
`context` (for example `%(said)s`, the provider's own message, or `%(status)s` and `%(code)s`) when
they are shown, so they read in the reader's language; `said` is also kept as `provider_message`.
"""

from dataclasses import dataclass, field

from providers.http import retry_after_seconds

SERVER_ERRORS = range(500, 1000)    # HTTP statuses are three digits: this is "5xx and above"
SUBMIT, OTHER = "submit", "other"   # the phases a rule may be limited to


@dataclass(frozen=True)
class Rule:
    """One line of a provider's error table.

    `retry_after`: pass the answer's Retry-After to the error (rate limits); `retry_default` is
    used when the answer has none. `extra`: further keyword arguments for the error class.
    """

    error: type
    message: str
    codes: frozenset = frozenset()
    statuses: frozenset | range = frozenset()
    phase: str | None = None
    retry_after: bool = False
    retry_default: float | None = None
    extra: dict = field(default_factory=dict)

    def matches(self, code, status, phase):
        if self.phase is not None and self.phase != phase:
            return False
        if not self.codes and not self.statuses:
            return True         # a catch-all, the table's last line
        return status in self.statuses or _code_matches(self.codes, code)


def rule(error, message, *, codes=(), statuses=(), **options):
    """A Rule with plain tuples or ranges for its codes and statuses."""
    statuses = statuses if isinstance(statuses, range) else frozenset(statuses)
    return Rule(error, message, codes=frozenset(codes), statuses=statuses, **options)


def map_error(table, response, *, code, phase, context, facts):
    """The error the first matching rule of `table` stands for.

    `facts` are the keyword arguments every error gets (provider, http_status, provider_code,
    request_id); `context` fills the message template. The table must end with a catch-all.
    """
    status = response.status_code
    for line in table:
        if line.matches(code, status, phase):
            kwargs = {**facts, **line.extra}
            if line.retry_after:
                header = retry_after_seconds(response)
                kwargs["retry_after"] = header if line.retry_default is None else header or line.retry_default
            said = str(context.get("said") or context.get("detail") or "").lstrip(": ") or None
            return line.error(line.message, params={"status": status, "code": code, **context},
                              provider_message=said, **kwargs)
    raise LookupError("an error table must end with a catch-all rule")


def _code_matches(codes, code):
    if not isinstance(code, str | int):
        return False            # absent, or not a code at all (a list where a code should be)
    if code in codes:
        return True
    return isinstance(code, str) and any(
        isinstance(c, str) and c.endswith("*") and code.startswith(c[:-1]) for c in codes)
