"""The provider registry and the shape of the capability tables.

`PROVIDERS` maps a provider id to its class. Each class's `capabilities()` returns one table:

    {"name", "label", "description", "configured": bool,
     "models": [
       {"id", "kind": "video", "label", "image_to_video", "text_to_video",
        "modes": [...], "durations": ["5", "10"],
        "combos": [{"mode", "duration"}],        # allowed mode x duration
        "tail_combos": [{"mode", "duration"}],   # allowed with a tail frame ([] = no tail frame)
        "cfg_scale": bool, "cameras": [...], "aspect_ratios": [...] (text-to-video), "max_prompt"},
       {"id", "kind": "image", "label", "text_to_image", "image_to_image",
        "aspect_ratios": [...], "n_min", "n_max", "image_fidelity": bool, "human_fidelity": bool,
        "image_reference": [...], "negative_prompt_with_image": bool, "max_prompt"}]}

Optional model keys (defaults in brackets): "mode_label" ["Mode"] for what `modes` mean (Wan
models use them for resolution tiers), "max_negative_prompt" [max_prompt], "negative_prompt"
[true] whether a negative prompt is accepted at all, "camera_combos" [any combo] where a camera
move is allowed, "camera_for" [both] "text_to_video"/"image_to_video" where a camera move is
allowed, "camera_with_tail" [true] whether a camera move may go with a tail frame,
"prompt_required" [false] whether an image model needs a prompt even with a reference picture.

The same table validates API requests (validation.py) and tells the pages what to offer, so the
page, the API and the provider always agree.
"""

from providers.ai302 import Ai302Provider
from providers.dashscope import DashScopeProvider
from providers.kling import KlingProvider
from providers.liblib import LiblibProvider
from providers.local import LocalProvider

PROVIDERS = {
    "local": LocalProvider,
    "kling": KlingProvider,
    "ai302": Ai302Provider,
    "dashscope": DashScopeProvider,
    "liblib": LiblibProvider,
}


def build_providers(config):
    """One instance of every registered provider, keyed by id."""
    return {name: cls(config) for name, cls in PROVIDERS.items()}
