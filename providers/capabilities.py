"""The capability tables, typed: what a provider offers, model by model.

A provider describes itself with a `ProviderTable` of `VideoModel`s and `ImageModel`s and hands
out `as_dict()`, the plain JSON shape `GET /api/capabilities` serves and validation.py, the
generate routes and the pages read (`model["modes"]`, ...). The optional keys are `None` when a
model leaves them out, and are then left out of the dict too, so a reader applies the default
named beside each field (`option()` does that here); the API only ever shows what a model says.

Labels, descriptions and mode labels are English, marked with `N_` where they are written, and
translated for the pages by providers/catalog.py.

The pages build their forms from these tables only: `uses_prompt` / `uses_negative_prompt` say
whether a field a model accepts changes its result (the local engine accepts both and ignores
them), so a form can mark or hide it instead of pretending.
"""

import functools
import json
from dataclasses import asdict, dataclass, field, fields

# The smallest side of an input picture where a model documents none (media.MIN_SIDE, the studio's
# check since the start; Kling documents 300 px). A model that takes smaller pictures says so in
# `min_side` (Wan: 240 px), and validation.py checks each picture against its model's value.
STUDIO_MIN_SIDE = 300


@dataclass(frozen=True)
class Combo:
    """One allowed mode x duration pair."""

    mode: str
    duration: str


def combos(cells):
    """Combos from (mode, duration) pairs."""
    return [Combo(mode, duration) for mode, duration in cells]


class _Table:
    """The dict form shared by the model types: optional fields left out while unset (None)."""

    DEFAULTS = {}   # optional field -> the default a reader applies when it is left out

    def as_dict(self):
        """A fresh copy each call (readers may change theirs, as with accounts.py's cache); the
        table is read on every request."""
        return json.loads(json.dumps(self._plain))

    @functools.cached_property
    def _plain(self):
        # dataclasses.asdict is the slow part (about 5x a JSON round trip): done once per frozen model.
        table = asdict(self)
        return {key: value for key, value in table.items() if not (key in self.DEFAULTS and value is None)}

    def option(self, name):
        """An optional field's value, or its default when the model leaves it out."""
        value = getattr(self, name)
        if value is not None:
            return value
        default = self.DEFAULTS[name]
        # A default that names another field reads that field (a list default is never a name).
        named = isinstance(default, str) and default in {f.name for f in fields(self)}
        return getattr(self, default) if named else default

    @classmethod
    def from_dict(cls, table):
        """The typed form of a table entry (round-trips with as_dict)."""
        values = {key: value for key, value in table.items() if key != "kind"}
        for key in ("combos", "tail_combos", "camera_combos", "sound_combos"):
            if values.get(key) is not None:
                values[key] = [Combo(**cell) for cell in values[key]]
        return cls(**values)


@dataclass(frozen=True)
class VideoModel(_Table):
    """A video model; `modes` x `durations` narrowed by `combos`."""

    id: str
    label: str
    image_to_video: bool
    text_to_video: bool
    modes: list
    durations: list
    combos: list                # [Combo] allowed
    tail_combos: list           # [Combo] allowed with a tail frame ([] = no tail frame)
    cfg_scale: bool
    cameras: list
    aspect_ratios: list         # offered for text-to-video
    max_prompt: int
    kind: str = field(default="video", init=False)
    mode_label: str | None = None           # what `modes` mean ["Mode"]; Wan uses them for resolutions
    max_negative_prompt: int | None = None  # [max_prompt]
    negative_prompt: bool | None = None     # whether a negative prompt is accepted at all [True]
    camera_combos: list | None = None       # [Combo] where a camera move is allowed [any combo]
    camera_for: list | None = None          # "text_to_video"/"image_to_video" with a camera move [both]
    camera_with_tail: bool | None = None    # whether a camera move may go with a tail frame [True]
    tail_required: bool | None = None       # the model makes video between two frames only [False]
    sound_combos: list | None = None        # [Combo] where the video may have sound ([] = always silent) [[]]
    sound_default: bool | None = None       # sound when a request does not say [False]
    sound_with_tail: bool | None = None     # whether sound may go with a tail frame [True]
    sound_switch: bool | None = None        # whether a request may choose; False = the model adds it itself [True]
    seed: bool | None = None                # takes a user's `seed` (0..2147483647) [False]
    prompt_extend: bool | None = None       # takes a user's `prompt_extend` (the provider's prompt rewriter) [False]
    note: str | None = None                 # where sources disagree: the reading the table takes [None]
    advanced: dict | None = None            # the model's own settings and their ranges (wan_server) [none]
    uses_prompt: bool | None = None         # the prompt changes the result (else accepted but ignored) [True]
    uses_negative_prompt: bool | None = None    # a negative prompt changes the result [negative_prompt]
    min_side: int | None = None             # smallest side of a first/tail frame, px [STUDIO_MIN_SIDE]

    DEFAULTS = {"mode_label": "Mode", "max_negative_prompt": "max_prompt", "negative_prompt": True,
                "camera_combos": "combos", "camera_for": ["text_to_video", "image_to_video"],
                "camera_with_tail": True, "tail_required": False, "sound_combos": [], "sound_default": False,
                "sound_with_tail": True, "sound_switch": True, "seed": False, "prompt_extend": False, "note": None,
                "advanced": None, "uses_prompt": True, "uses_negative_prompt": "negative_prompt",
                "min_side": STUDIO_MIN_SIDE}


@dataclass(frozen=True)
class ImageModel(_Table):
    """An image model."""

    id: str
    label: str
    text_to_image: bool
    image_to_image: bool
    aspect_ratios: list
    n_min: int
    n_max: int
    image_fidelity: bool
    human_fidelity: bool
    image_reference: list
    negative_prompt_with_image: bool
    max_prompt: int
    kind: str = field(default="image", init=False)
    max_negative_prompt: int | None = None  # [max_prompt]
    negative_prompt: bool | None = None     # whether a negative prompt is accepted at all [True]
    prompt_required: bool | None = None     # a prompt is needed even with a reference picture [False]
    seed: bool | None = None                # takes a user's `seed` (0..2147483647) [False]
    prompt_extend: bool | None = None       # takes a user's `prompt_extend` (the provider's prompt rewriter) [False]
    note: str | None = None                 # where sources disagree: the reading the table takes [None]
    advanced: dict | None = None            # the model's own settings and their ranges (liblib-custom) [none]
    uses_prompt: bool | None = None         # the prompt changes the result (else accepted but ignored) [True]
    uses_negative_prompt: bool | None = None    # a negative prompt changes the result [negative_prompt]
    min_side: int | None = None             # smallest side of a reference picture, px [STUDIO_MIN_SIDE]

    DEFAULTS = {"max_negative_prompt": "max_prompt", "negative_prompt": True, "prompt_required": False,
                "seed": False, "prompt_extend": False, "note": None, "advanced": None, "uses_prompt": True,
                "uses_negative_prompt": "negative_prompt", "min_side": STUDIO_MIN_SIDE}


def model_from_dict(table):
    """The typed model of one table entry, by its kind."""
    return (VideoModel if table["kind"] == "video" else ImageModel).from_dict(table)


@dataclass(frozen=True)
class ProviderTable:
    """A provider's whole table: who it is, whether its keys are set, and its models."""

    name: str
    label: str
    description: str
    configured: bool
    models: list    # [VideoModel | ImageModel]

    def as_dict(self):
        return {"name": self.name, "label": self.label, "description": self.description,
                "configured": self.configured, "models": [model.as_dict() for model in self.models]}
