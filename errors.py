"""The one exception hierarchy of the studio and its JSON shape.

Every failure that reaches a client is an `AppError`; it renders as
`{"error": {"code", "message", "field"}}` (`field` null when no field is to blame) with its HTTP
status, or as an HTML page for a browser (error_pages.py does the answering; this module stays
free of Flask because low-level modules raise these errors too). Provider failures carry the
provider's structured code so the pipeline can decide retry/fail from data, never from text.
"""

import errno as _errno

DISK_FULL_ERRNOS = (_errno.ENOSPC, _errno.EDQUOT)


class AppError(Exception):
    """Base of every error the studio answers with; `status` is the HTTP status."""

    status = 500
    code = "internal_error"

    def __init__(self, message, *, code=None, field=None, status=None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.field = field

    def to_dict(self):
        """The JSON body: `field` is always there, null when no field is to blame."""
        return {"error": {"code": self.code, "message": self.message, "field": self.field or None}}


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

    def __init__(self, message, retry_after):
        super().__init__(message)
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
    default_message = ("The studio's disk is full, so nothing was saved. Free some space where "
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
                 request_id=None, code=None, retryable=None):
        super().__init__(message, code=code)
        self.provider = provider
        self.http_status = http_status
        self.provider_code = provider_code
        self.request_id = request_id
        if retryable is not None:
            self.retryable = retryable


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
