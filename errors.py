"""The one exception hierarchy of the studio and its JSON shape.

Every failure that reaches a client is an `AppError`; it renders as
`{"error": {"code", "message", "field"}}` (`field` null when no field is to blame) with its HTTP
status, or as an HTML page for a browser (error_pages.py does the answering; this module stays
free of Flask because low-level modules raise these errors too). Provider failures carry the
provider's structured code so the pipeline can decide retry/fail from data, never from text.

Messages are English templates marked with `N_` (babel extracts them) plus `params`; the
English text is made at once (logs, `str(exc)`), and the renderer (error_pages.py, and
tasks.for_client for messages a task keeps) translates the template into the reader's language
with `render_message`, so a message is said in the reader's language without this module, or the
modules that raise, knowing about requests.
"""

import errno as _errno

DISK_FULL_ERRNOS = (_errno.ENOSPC, _errno.EDQUOT)

# Parameters that are English texts themselves, marked with N_ where they are written (a provider's
# label, a picture's role, a call's name): the renderer translates them too. Every other parameter
# is shown as it is (numbers, field names, ids, values the user sent, a provider's own words).
TRANSLATED_PARAMS = frozenset({"label", "what"})


def N_(text):
    """Marks an English message template for extraction (babel's `N_` keyword); it is translated
    when it is rendered for a reader, not here."""
    return text


def render_message(template, params=None, translate=None):
    """`template` filled with `params`, in the language of `translate` (a gettext), English
    without one. A translation that does not fit its parameters falls back to the English."""
    params = params or {}
    if translate is None:
        try:
            return template % _joined(params, None) if params else template
        except (KeyError, ValueError, TypeError):
            return template     # a template that does not fit its parameters: shown unfilled, never a crash
    shown = _joined(params, translate)
    try:
        text = translate(template)
        return text % shown if params else text
    except (KeyError, ValueError, TypeError):
        return render_message(template, params)


def _joined(params, translate):
    """The parameters as the template shows them: a list as "a, b", the English texts among them
    (TRANSLATED_PARAMS) and the messages among them (`_nested`) translated."""
    shown = {}
    for key, value in params.items():
        items = [_nested(item, translate) for item in (value if isinstance(value, list | tuple) else [value])]
        if translate is not None and key in TRANSLATED_PARAMS:
            items = [translate(item) if isinstance(item, str) else item for item in items]
        shown[key] = ", ".join(map(str, items)) if isinstance(value, list | tuple) else items[0]
    return shown


def _nested(item, translate):
    """A parameter that is a message of its own (`{"template", "params"}`, e.g. the reason a batch
    item was refused, quoted by the batch's error) rendered in the same language."""
    if isinstance(item, dict) and "template" in item:
        return render_message(item["template"], item.get("params"), translate)
    return item


class Text:
    """A message a task keeps to show later: an English template and its parameters.

    `fields()` is what the record stores: the English `message` (read by webhooks, logs and
    older clients) beside the `template` and `params` the reader's language is made from.
    """

    def __init__(self, template, **params):
        self.template = template
        self.params = params

    def __str__(self):
        return render_message(self.template, self.params)

    def fields(self):
        return {"message": str(self), "template": self.template, "params": self.params}


def shown_text(stored, translate):
    """The reader's text for a stored `{message, template?, params?}`: a record written before
    messages had templates (plain English) shows as it was stored."""
    if not stored or not stored.get("template"):
        return stored.get("message") if stored else None
    return render_message(stored["template"], stored.get("params"), translate)


class AppError(Exception):
    """Base of every error the studio answers with; `status` is the HTTP status."""

    status = 500
    code = "internal_error"

    def __init__(self, message, *, code=None, field=None, status=None, params=None):
        self.template = message
        self.params = dict(params or {})
        self.message = render_message(message, self.params)
        super().__init__(self.message)
        if code:
            self.code = code
        if status:
            self.status = status
        self.field = field

    def localized(self, translate=None):
        """The message in the language of `translate` (a gettext), English without one."""
        return render_message(self.template, self.params, translate)

    def to_dict(self, translate=None):
        """The JSON body: `field` is always there, null when no field is to blame; `params` (what
        the message was filled with) when it has any, for clients that word it themselves."""
        body = {"code": self.code, "message": self.localized(translate), "field": self.field or None}
        if self.params:
            body["params"] = self.params
        return {"error": body}


class ValidationError(AppError):
    """The request is malformed (400) or semantically unacceptable (422 via status=)."""

    status = 400
    code = "invalid_request"


class PayloadTooLarge(ValidationError):
    status = 413
    code = "payload_too_large"


class LoginRequired(AppError):
    """No session and no valid API key."""

    status = 401
    code = "login_required"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class RateLimited(AppError):
    """Too many attempts; `retry_after` seconds until the next one is allowed."""

    status = 429
    code = "rate_limited"

    def __init__(self, message, retry_after, *, params=None):
        super().__init__(message, params=params)
        self.retry_after = retry_after


class QuotaExceeded(AppError):
    """A user's daily images/videos limit is reached."""

    status = 429
    code = "quota_exceeded"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    """The action does not fit the task's current state (e.g. cancelling a finished task)."""

    status = 409
    code = "conflict"


class InsufficientStorage(AppError, OSError):
    """The disk under DATA_DIR is full (ENOSPC) or over quota (EDQUOT); nothing was written.

    It is also an OSError carrying that errno, so code that treats a failed write as "try again
    later" (the pipeline) and `downloads.disk_full` keep recognising it.
    """

    status = 507
    code = "disk_full"
    default_message = N_("The studio's disk is full, so nothing was saved. Free some space where "
                         "DATA_DIR lives and try again.")

    def __init__(self, message=None, *, errno=None):
        AppError.__init__(self, message or self.default_message)
        self.errno = errno

    @classmethod
    def from_os_error(cls, exc):
        """The 507 for a disk-full OSError, or None when `exc` is some other failure."""
        if isinstance(exc, cls):
            return exc
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return cls(errno=exc.errno)
        return None


class ProviderNotConfigured(ValidationError):
    code = "provider_not_configured"


class ProviderError(AppError):
    """A provider refused or failed a call. `retryable` tells the pipeline whether to try later."""

    status = 502
    code = "provider_error"
    retryable = False

    def __init__(self, message, *, provider=None, http_status=None, provider_code=None,
                 request_id=None, code=None, retryable=None, params=None, provider_message=None):
        super().__init__(message, code=code, params=params)
        self.provider = provider
        self.provider_message = provider_message    # the provider's own words in the message, if any
        self.http_status = http_status
        self.provider_code = provider_code
        self.request_id = request_id
        if retryable is not None:
            self.retryable = retryable


    def summary(self):
        """The message as a Text a task keeps, to show in its reader's language."""
        return Text(self.template, **self.params)

    def to_dict(self, translate=None):
        body = super().to_dict(translate)
        if self.provider_message:
            body["error"]["provider_message"] = self.provider_message
        return body


class ProviderAuthError(ProviderError):
    code = "provider_auth"


class ProviderQuotaError(ProviderError):
    code = "provider_quota"


class ProviderRateLimited(ProviderError):
    code = "provider_rate_limited"
    retryable = True

    def __init__(self, message, *, retry_after=None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ProviderRejected(ProviderError):
    code = "provider_rejected"


class ProviderUnavailable(ProviderError):
    code = "provider_unavailable"
    retryable = True


class ProviderBadResponse(ProviderError):
    code = "provider_bad_response"
    retryable = True


class SubmitOutcomeUnknown(ProviderError):
    """A submit was sent but no answer came back: it must be reconciled, never blindly re-sent."""

    code = "submit_outcome_unknown"


# What is wrong with a field, by pydantic's error type (validation.parse_body); `%(field)s` is the
# field's name and the others come from pydantic's context for the error.
FIELD_PROBLEMS = {
    "missing": N_("%(field)s is required."),
    "string_type": N_("%(field)s must be text."),
    "int_type": N_("%(field)s must be a whole number."),
    "int_from_float": N_("%(field)s must be a whole number."),
    "float_type": N_("%(field)s must be a number."),
    "finite_number": N_("%(field)s must be a finite number."),
    "bool_type": N_("%(field)s must be true or false."),
    "list_type": N_("%(field)s must be a list."),
    "dict_type": N_("%(field)s must be a JSON object."),
    "model_type": N_("%(field)s must be a JSON object."),
    "model_attributes_type": N_("%(field)s must be a JSON object."),
    "greater_than_equal": N_("%(field)s must be at least %(ge)s."),
    "greater_than": N_("%(field)s must be greater than %(gt)s."),
    "less_than_equal": N_("%(field)s must be at most %(le)s."),
    "less_than": N_("%(field)s must be less than %(lt)s."),
    "string_too_long": N_("%(field)s must be at most %(max_length)s characters long."),
    "string_too_short": N_("%(field)s must be at least %(min_length)s characters long."),
    "too_long": N_("%(field)s must have at most %(max_length)s items."),
    "too_short": N_("%(field)s must have at least %(min_length)s items."),
    "literal_error": N_("%(field)s must be one of: %(expected)s."),
    "enum": N_("%(field)s must be one of: %(expected)s."),
    "string_pattern_mismatch": N_("%(field)s does not have the expected form."),
    "control_characters": N_("%(field)s must not contain control characters."),
    "not_http_url": N_("%(field)s must be an http:// or https:// URL."),
}
FIELD_PROBLEM = N_("%(field)s has a value that is not accepted.")


def field_problem(error, field):
    """(template, params) for one pydantic error (`{"type", "ctx"?}`) of the field `field`."""
    template = FIELD_PROBLEMS.get(error["type"], FIELD_PROBLEM)
    # pydantic words its list of choices in English ("'a', 'b' or 'c'"): a plain list reads in any language.
    params = {key: str(value).replace(" or ", ", ") for key, value in (error.get("ctx") or {}).items()
              if isinstance(value, str | int | float)}
    return template, {**params, "field": field or "body"}
