"""Joining video clips into one H.264 MP4, and a clip's last frame, with PyAV.

`join(clips, dest, size, fps, crossfade)` decodes each clip, scales every frame to fit `size`
(letterboxed on black when a clip's shape differs), resamples it to `fps` by time (the frame
showing at each output instant, so a clip keeps its length whatever its own frame rate), and
writes the frames with `media.Mp4Writer` (H.264, yuv420p, even sides, faststart; the file
appears only when whole). With a crossfade of c seconds, the last c seconds of a clip blend
into the first c seconds of the next, so the result is c shorter per join. Clips are streamed:
only the frames of one crossfade are held in memory.

`last_frame(path)` is the clip's final frame as RGB, for a storyboard scene that starts where the
previous one ended (storyboards.py).
"""

from collections import deque
from pathlib import Path

import av
import cv2
import numpy as np

import media

DEFAULT_FPS = 24


def clip_info(path):
    """(width, height, duration in seconds) of a clip's first video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height, _duration(container, stream)


def _duration(container, stream):
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if stream.frames and stream.average_rate:
        return float(stream.frames / stream.average_rate)
    return (container.duration or 0) / av.time_base


def _fit(frame_bgr, width, height):
    """The frame scaled to fit width×height, centred on black where the shapes differ."""
    h, w = frame_bgr.shape[:2]
    if (w, h) == (width, height):
        return frame_bgr
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = cv2.resize(frame_bgr, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    if (new_w, new_h) == (width, height):
        return scaled
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top: top + new_h, left: left + new_w] = scaled
    return canvas


def resampled(path, size, fps):
    """The clip's frames as BGR arrays of `size`, one per 1/fps second of its duration."""
    width, height = size
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = max(1, round(_duration(container, stream) * fps))
        emitted, current = 0, None
        for frame in container.decode(stream):
            shown_at = float(frame.time or 0.0)
            picture = _fit(frame.to_ndarray(format="bgr24"), width, height)
            # Output instants before this frame's time still show the previous frame.
            while emitted < total and current is not None and emitted / fps < shown_at - 1e-6:
                yield current
                emitted += 1
            current = picture
        while emitted < total and current is not None:
            yield current
            emitted += 1
    if current is None:
        raise ValueError(f"video {Path(path).name} has no frames")


class JoinStopped(Exception):
    """`should_stop()` said so between frames; no file was left at `dest`."""


class _Writer:
    """An Mp4Writer that asks `should_stop` before every frame."""

    def __init__(self, writer, should_stop):
        self.writer, self.should_stop = writer, should_stop

    def write(self, frame):
        if self.should_stop is not None and self.should_stop():
            raise JoinStopped
        self.writer.write(frame)


def join(clips, dest, size, fps=DEFAULT_FPS, crossfade=0.0, should_stop=None):
    """Write `clips` one after another into `dest` (see the module docstring); returns the frame count.
    `should_stop()` is asked between frames: JoinStopped, and the unfinished file is removed."""
    width, height = size[0] // 2 * 2, size[1] // 2 * 2
    overlap = round(crossfade * fps)
    with media.Mp4Writer(dest, width, height, fps) as mp4:
        writer = _Writer(mp4, should_stop)
        held = deque()                  # the previous clip's last `overlap` frames, not yet written
        for path in clips:
            frames = resampled(path, (width, height), fps)
            while held:                 # blend the held tail into this clip's start
                incoming = next(frames, None)
                outgoing = held.popleft()
                if incoming is None:
                    writer.write(outgoing)
                    continue
                weight = (overlap - len(held)) / (overlap + 1)
                writer.write(cv2.addWeighted(outgoing, 1 - weight, incoming, weight, 0))
            for frame in frames:
                held.append(frame)
                if len(held) > overlap:
                    writer.write(held.popleft())
        for frame in held:
            writer.write(frame)
        return mp4.frames


def last_frame(path):
    """The clip's final frame as an RGB array; ValueError when it has none."""
    last = None
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                last = frame
            if last is None:
                raise ValueError(f"video {Path(path).name} has no frames")
            return last.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError) as exc:
        raise ValueError(f"unreadable video {Path(path).name}: {exc}") from None
