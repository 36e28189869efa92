"""The pages' translations of the provider tables' English texts.

The tables (and so `GET /api/capabilities`) stay English: they are data the API, validation and
the pages share. Their labels, descriptions and mode labels are marked with `N_` where each
provider writes them, babel extracts them from providers/ (babel.cfg), and this module hands the
pages `{English text: text in the request's language}` for every such text of every registered
provider, so `_partials.html` no longer repeats them and an edited text cannot silently lose its
translation (a test checks each marked text has its Chinese).
"""

from flask import current_app
from flask_babel import gettext


def table_texts(table):
    """The texts of one capability table a page shows: the provider's label and description, and
    each model's label and mode label."""
    texts = {table["label"], table["description"]}
    for model in table["models"]:
        texts.add(model["label"])
        if model.get("mode_label"):
            texts.add(model["mode_label"])
    return texts


def page_catalog():
    """`{English: translated}` for the texts of the app's providers, in the request's language."""
    texts = set()
    for provider in current_app.extensions["providers"].values():
        texts |= table_texts(provider.capabilities())
    return {text: gettext(text) for text in sorted(texts)}
