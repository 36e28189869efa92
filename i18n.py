"""Which language a page is shown in: English or Chinese, chosen per request.

This is its own module because the choice is one concern shared by every page and no feature
module owns it: `?lang=` wins (the language toggle links set it), then the `lang` cookie that the
toggle leaves behind so the choice persists (the session's choice), then the browser's
Accept-Language, then English. The same choice words the server's messages: error bodies and the
messages a task keeps are translated at render with `translate`. Flask-Babel does
the translating; its catalogs live in `translations/<lang>/LC_MESSAGES/` (Chinese is `zh`).
"""

from urllib.parse import urlencode

from flask import request, url_for
from flask_babel import Babel, get_locale, gettext

from providers.catalog import page_catalog

LANGUAGES = ("en", "zh")
DEFAULT = "en"
COOKIE = "lang"
COOKIE_MAX_AGE = 365 * 24 * 3600


def select_locale():
    """The request's language: ?lang=, then the toggle's cookie, then Accept-Language."""
    for choice in (request.args.get("lang"), request.cookies.get(COOKIE)):
        if choice in LANGUAGES:
            return choice
    return request.accept_languages.best_match(LANGUAGES) or DEFAULT


def translate(text):
    """`text` (an English message template) in the request's language, unfilled: the `translate`
    that errors.render_message and tasks.for_client take."""
    return gettext(text) if text else text


def _remember_choice(response):
    """Keep a `?lang=` choice in a cookie, so the next pages open in the same language."""
    choice = request.args.get("lang")
    if choice in LANGUAGES and request.cookies.get(COOKIE) != choice:
        response.set_cookie(COOKIE, choice, max_age=COOKIE_MAX_AGE, samesite="Lax", httponly=True)
    return response


def switch_url(lang):
    """This page's URL (with its query) in another language, for the toggle."""
    # url_for reads `_method`, `_external`, `_scheme` and `_anchor` as options: never from the query.
    args = {**{k: v for k, v in request.args.items() if not k.startswith("_")}, "lang": lang}
    if request.endpoint is None:
        # No route matched (an error page for a 404 or 405): the same path, by a relative link.
        return "?" + urlencode(args)
    return url_for(request.endpoint, **(request.view_args or {}), **args)


def _template_globals():
    lang = str(get_locale() or DEFAULT)
    return {"current_lang": lang, "html_lang": "zh-Hans" if lang == "zh" else "en",
            "languages": LANGUAGES, "switch_url": switch_url, "provider_catalog": page_catalog}


def init_app(app):
    """Attach Flask-Babel with our locale choice, the cookie, and the template helpers."""
    Babel(app, locale_selector=select_locale)
    app.after_request(_remember_choice)
    app.context_processor(_template_globals)
