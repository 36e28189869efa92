"""The models of the versioned API: what its requests may hold and what its answers look like.

The request models validate the requests (the v1 creates subclass the models of `/generate` and
`/generate_image`, so every rule of those holds here too); the response models shape the answers;
both are what `/openapi.json` is built from (api/openapi.py). v1 reports a task's status in five
words (`V1_STATUS`): queued (queued); processing (submitted, running, downloading); completed
(succeeded); failed; cancelled.
"""

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

import tasks
from image_generate import ImageRequest
from validation import STRICT, Text
from video_extend import VideoRequest

V1_STATUS = {tasks.QUEUED: "queued", tasks.SUBMITTED: "processing", tasks.RUNNING: "processing",
             tasks.DOWNLOADING: "processing", tasks.SUCCEEDED: "completed", tasks.FAILED: "failed",
             tasks.CANCELLED: "cancelled"}
V1Status = Literal["queued", "processing", "completed", "failed", "cancelled"]
# Seconds a task is expected to take when its provider and model have no finished task to learn from.
DEFAULT_ESTIMATE = {"video": 180, "image": 60}


# ---- request models -------------------------------------------------------------------------

def _http_url(value):
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("not_http_url", "must be an http:// or https:// URL")
    return value


CallbackUrl = Annotated[Text, Field(max_length=2000), AfterValidator(_http_url)]


class V1Extras(BaseModel):
    """What v1 adds to the fields of /generate and /generate_image (which carry `seed` themselves)."""

    model_config = STRICT

    width: int | None = Field(None, ge=1, le=16384, description="With height: the nearest aspect ratio offered.")
    height: int | None = Field(None, ge=1, le=16384)
    callback_url: CallbackUrl | None = Field(None, description="POSTed the v1 task body when the task ends.")


class V1VideoRequest(VideoRequest, V1Extras):
    """The fields of `POST /generate`, plus width/height, seed and callback_url."""


class V1ImageRequest(ImageRequest, V1Extras):
    """The fields of `POST /generate_image`, plus width/height, seed and callback_url."""


class ImageServiceParameters(BaseModel):
    """The image service's parameter names; each is mapped onto the studio's (api/image_service.py)."""

    model_config = STRICT

    prompt: Text | None = Field(None, max_length=2500)
    negative_prompt: Text | None = Field(None, max_length=2500)
    negativePrompt: Text | None = Field(None, max_length=2500)      # noqa: N815 - the service's name
    size: Annotated[Text, Field(pattern=r"^[0-9]{1,5}[*x][0-9]{1,5}$")] | None = Field(
        None, description='"W*H", e.g. "1024*1024": the nearest aspect ratio offered.')
    aspect_ratio: Text | None = None
    aspectRatio: Text | None = Field(None, description='"1:1" ..., or square, portrait (3:4), landscape (16:9).')  # noqa: N815
    n: int | None = Field(None, ge=1, le=9)
    imgCount: int | None = Field(None, ge=1, le=9)                  # noqa: N815
    seed: int | None = Field(None, ge=0, le=4294967295)
    width: int | None = Field(None, ge=1, le=16384)
    height: int | None = Field(None, ge=1, le=16384)
    image: Text | None = None
    sourceImage: Text | None = None                                 # noqa: N815
    image_fidelity: float | None = Field(None, ge=0, le=1)
    human_fidelity: float | None = Field(None, ge=0, le=1)
    image_reference: Text | None = None


class ImageServiceRequest(BaseModel):
    """`POST /api/v1/tasks/`: an image task in the image service's shape."""

    model_config = STRICT

    model: Text = Field(max_length=100, description="e.g. wanx2.1-t2i-turbo, star-3-alpha-t2i, local-filters")
    provider: Text | None = Field(None, max_length=64, description="The studio's provider; found from the model "
                                                                     "when left out.")
    parameters: ImageServiceParameters = ImageServiceParameters()
    is_async: Literal[True] = Field(True, description="Tasks are always asynchronous: poll /status and /result.")
    callback_url: CallbackUrl | None = None


# ---- response models ------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    code: str
    message: str = Field(description="In the request's language (Accept-Language, else English).")
    field: str | None = None
    params: dict | None = Field(None, description="What the message was filled with, for clients that word it.")
    provider_message: str | None = Field(None, description="A provider's own words, when it said something.")


class ErrorBody(BaseModel):
    """Every error: `{"error": {"code", "message", "field"}}`."""

    error: ErrorDetail


class V1Created(BaseModel):
    task_id: str
    status: Literal["queued"]
    estimated_time: int = Field(description="Seconds: the median duration of this provider and model's recent "
                                            f"succeeded tasks, else {DEFAULT_ESTIMATE['video']} for a video and "
                                            f"{DEFAULT_ESTIMATE['image']} for images.")
    created_at: str


class V1Output(BaseModel):
    kind: str
    url: str | None = Field(None, description="The studio's copy (needs the same credentials).")
    thumbnail: str | None = None
    original_url: str | None = Field(None, description="The provider's link, without its signature.")
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    bytes: int | None = None
    seed: int | None = None


class V1Result(BaseModel):
    output_path: str | None
    thumbnail: str | None
    outputs: list[V1Output]


class V1TaskError(BaseModel):
    code: str
    message: str = Field(description="In the request's language (Accept-Language, else English).")
    retryable: bool = False
    params: dict | None = None
    provider_message: str | None = Field(None, description="The provider's own words, beside the summary.")


class V1Task(BaseModel):
    task_id: str
    kind: Literal["video", "image"]
    provider: str
    model: str
    status: V1Status = Field(description="queued (queued); processing (submitted, running, downloading); "
                                         "completed (succeeded); failed; cancelled.")
    progress: int | None
    result: V1Result | None = Field(description="Set once the task is completed.")
    error: V1TaskError | None
    created_at: str
    updated_at: str
    retry_of: str | None = None
    callback_url: str | None = None
    queue_position: int | None = Field(None, description="While queued: the place in line for a slot of its "
                                                         "provider (1 = sent next).")
    eta_seconds: int | None = Field(None, description="While queued or in progress: the seconds left, from the "
                                                      "median of this provider and model's recent tasks; null "
                                                      "without such history.")
    storyboard_id: str | None = Field(None, description="A scene: the storyboard it belongs to.")
    scene_index: int | None = Field(None, description="A scene: its place in the storyboard, from 0.")
    scenes: dict[str, int] | None = Field(None, description="A storyboard: how many scenes are in each state "
                                                            "(queued, running, succeeded, ...; waiting: a scene "
                                                            "that starts from the previous one's last frame).")


class V1TaskList(BaseModel):
    tasks: list[V1Task]
    total: int
    offset: int
    limit: int


class V1ListQuery(BaseModel):
    """The listing's query arguments (checked by task_query's listing rules)."""

    status: str | None = Field(None, max_length=200, description="Comma-separated v1 statuses.")
    kind: Literal["video", "image"] | None = None
    provider: str | None = Field(None, max_length=64)
    q: str | None = Field(None, max_length=500, description="Text in the prompt.")
    offset: int | None = Field(None, ge=0, le=10**9)
    limit: int | None = Field(None, ge=1, le=200)


class ServiceCreated(V1Created):
    success: Literal[True]
    message: str


class ServiceStatus(BaseModel):
    success: Literal[True]
    task_id: str
    status: V1Status
    progress: int | None
    message: str
    error: V1TaskError | None


class ServiceImage(BaseModel):
    original_url: str | None = Field(description="The provider's link, without its signature.")
    local_url: str | None = Field(description="The studio's copy.")
    thumbnail_url: str | None
    seed: int | None
    size: str | None = Field(description='"W*H"')
    width: int | None
    height: int | None


class ServiceResults(BaseModel):
    task_id: str
    status: V1Status
    images: list[ServiceImage]
    videos: list[V1Output]


class ServiceResult(BaseModel):
    success: bool = Field(description="True when the task completed.")
    message: str
    results: ServiceResults


class V1Health(BaseModel):
    status: Literal["ok", "unavailable"]
    ready: bool
    checks: dict[str, str]


# ---- batches (api/batches.py) ---------------------------------------------------------------

class V1BatchCounts(BaseModel):
    queued: int
    processing: int
    completed: int
    failed: int
    cancelled: int
    refused: int = Field(description="Items refused before they became tasks (bad picture, prompt too long ...).")


class V1BatchItemError(BaseModel):
    code: str
    message: str
    field: str | None = None


class V1BatchItem(BaseModel):
    name: str = Field(description='The item\'s name, e.g. "Episode-01/Shot-003".')
    task_id: str | None
    status: Literal["queued", "processing", "completed", "failed", "cancelled", "refused"]
    error: V1BatchItemError | None
    prompt: str | None = None
    progress: int | None = None
    thumbnail: str | None = None
    outputs: list[str] = []


class V1BatchSummary(BaseModel):
    batch_id: str
    name: str
    kind: Literal["video", "image"]
    provider: str
    model: str
    settings: dict
    status: Literal["running", "paused", "cancelled", "completed", "completed_with_errors"]
    counts: V1BatchCounts
    total: int
    progress: int = Field(description="Percent of the items finished (items in flight count with their progress).")
    eta_seconds: int | None = Field(description="From the median time of finished items; null before one finished.")
    created_at: str
    finished_at: str | None
    cost: dict | None = Field(description="The providers' charges summed per unit.")
    paused: bool


class V1Batch(V1BatchSummary):
    """A batch with its items."""

    items: list[V1BatchItem]


class V1BatchList(BaseModel):
    batches: list[V1BatchSummary]


class V1BatchCreated(BaseModel):
    """The batch made (or added to): `created` tasks are new, the rest were done or in flight already."""

    batch_id: str
    status: str
    counts: V1BatchCounts
    created: int


class V1BatchRetried(BaseModel):
    """Tasks made for the failed and cancelled items; `refused` ones could not be retried."""

    batch_id: str
    created: int
    refused: list[dict]
