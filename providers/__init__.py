"""The provider registry: `PROVIDERS` maps a provider id to its class.

Each class's `capabilities()` returns its capability table as a dict, the JSON shape
`GET /api/capabilities` serves. The shape, its optional keys and their defaults are typed in
providers/capabilities.py (`ProviderTable`, `VideoModel`, `ImageModel`). The same table validates
API requests (validation.py) and tells the pages what to offer, so the page, the API and the
provider always agree; its labels and descriptions reach the pages translated through
providers/catalog.py. Every provider has `close()`, which releases its HTTP connections.
"""

from providers.ai302 import Ai302Provider
from providers.dashscope import DashScopeProvider
from providers.kling import KlingProvider
from providers.liblib import LiblibProvider
from providers.local import LocalProvider
from providers.wan_server import WanServerProvider

PROVIDERS = {
    "local": LocalProvider,
    "kling": KlingProvider,
    "ai302": Ai302Provider,
    "dashscope": DashScopeProvider,
    "liblib": LiblibProvider,
    "wan_server": WanServerProvider,
}


def build_providers(config):
    """One instance of every registered provider, keyed by id."""
    return {name: cls(config) for name, cls in PROVIDERS.items()}
