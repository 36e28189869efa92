"""providers/errors_map.py: the first matching rule decides; codes, prefixes, statuses and phases."""

import pytest
import requests

from errors import ProviderAuthError, ProviderRateLimited, ProviderRejected, SubmitOutcomeUnknown
from providers import dashscope, kling
from providers.errors_map import OTHER, SERVER_ERRORS, SUBMIT, map_error, rule

FACTS = {"provider": "p"}


def answer(status, retry_after=None):
    response = requests.Response()
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response


def decide(table, status, code, phase=OTHER, retry_after=None, **context):
    return map_error(table, answer(status, retry_after), code=code, phase=phase, context=context, facts=FACTS)


TABLE = [
    rule(SubmitOutcomeUnknown, "maybe created (%(status)s)", statuses=SERVER_ERRORS, phase=SUBMIT),
    rule(ProviderAuthError, "key: %(said)s", codes=("InvalidApiKey",), statuses=(401,)),
    rule(ProviderRateLimited, "slow down", codes=("Throttling*",), statuses=(429,), retry_after=True, retry_default=7),
    rule(ProviderRejected, "no (HTTP %(status)s, code %(code)s)"),
]


def test_first_matching_rule_decides():
    assert isinstance(decide(TABLE, 500, "InvalidApiKey", SUBMIT), SubmitOutcomeUnknown)
    assert isinstance(decide(TABLE, 500, "InvalidApiKey", OTHER, said="x"), ProviderAuthError)
    error = decide(TABLE, 400, "Other")
    assert isinstance(error, ProviderRejected) and error.message == "no (HTTP 400, code Other)"


def test_code_prefix_and_status_either_match():
    assert isinstance(decide(TABLE, 400, "Throttling.RateQuota"), ProviderRateLimited)
    assert isinstance(decide(TABLE, 429, None), ProviderRateLimited)
    assert isinstance(decide(TABLE, 400, "Throttl"), ProviderRejected)
    assert isinstance(decide(TABLE, 400, ["Throttling"]), ProviderRejected)    # not a code at all


def test_retry_after_from_the_header_else_the_default():
    assert decide(TABLE, 429, None, retry_after="3").retry_after == 3.0
    assert decide(TABLE, 429, None).retry_after == 7
    header_only = [rule(ProviderRateLimited, "busy", statuses=(429,), retry_after=True), TABLE[-1]]
    assert decide(header_only, 429, None).retry_after is None


def test_facts_and_the_provider_message_are_passed_not_matched():
    error = decide(TABLE, 401, None, said="the key is revoked")
    assert error.message == "key: the key is revoked" and error.provider == "p"


def test_a_table_without_a_catch_all_is_refused():
    with pytest.raises(LookupError):
        decide(TABLE[:1], 400, None)


@pytest.mark.parametrize("table", [kling.ERRORS, dashscope.ERRORS])
def test_provider_tables_end_with_a_catch_all(table):
    assert not table[-1].codes and not table[-1].statuses and table[-1].phase is None


def test_kling_code_beats_the_status_and_a_submit_failure_is_unknown():
    said = {"said": "x"}
    assert type(decide(kling.ERRORS, 429, 1102, SUBMIT, **said)).__name__ == "ProviderQuotaError"
    assert isinstance(decide(kling.ERRORS, 429, None, SUBMIT, **said), SubmitOutcomeUnknown)
    assert isinstance(decide(kling.ERRORS, 429, None, OTHER, **said), ProviderRateLimited)
    assert type(decide(kling.ERRORS, 200, 5001, OTHER, **said)).__name__ == "ProviderUnavailable"
