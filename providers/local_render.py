"""The local engine's effects: camera moves over a picture, and looks for picture variations.

Pure functions of files in and files out, used by providers/local.py and bench/render_bench.py.
`render_video` moves a virtual camera over the first frame (zoom, pan or tilt, eased, optionally
blending into a tail frame) and writes H.264 with `media.Mp4Writer`; `render_images` crops a
reference picture to the asked aspect ratio and gives each copy a different OpenCV look.
`should_stop()` is checked between frames; `progress(done, total)` is called after each.
"""

import logging
import re
from pathlib import Path

import cv2
import numpy as np

import media

log = logging.getLogger(__name__)

FPS = 24
ZOOM = 1.2          # the camera moves in (or out) by 20 %; pans and tilts travel inside a 1.2x crop
STYLE_SIDE = 768    # the slow OpenCV looks run at this long side and are scaled up afterwards
MIN_KEPT = 0.5      # a crop keeping less than half of the picture is padded instead
ASPECT_RATIOS = ["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"]
CAMERAS = ["zoom_in", "zoom_out", "pan_left", "pan_right", "tilt_up", "tilt_down"]

# Prompt phrases that pick a camera move; the phrase that comes first in the prompt wins.
_CAMERA_PHRASES = {
    "zoom_in": r"\bzoom(?:s|ing)?[\s-]*in(?:to)?\b|\bpush(?:es|ing)?[\s-]*in\b|\bdolly(?:ing)?[\s-]*in\b|"
               r"推近|拉近|推镜|镜头推进|放大",
    "zoom_out": r"\bzoom(?:s|ing)?[\s-]*out\b|\bpull(?:s|ing)?[\s-]*(?:back|out)\b|"
                r"\bdolly(?:ing)?[\s-]*out\b|拉远|镜头拉开|缩小",
    "pan_left": r"\bpan(?:s|ning)?[\s-]*(?:to\s+the\s+)?left\b|左移|左摇|向左",
    "pan_right": r"\bpan(?:s|ning)?[\s-]*(?:to\s+the\s+)?right\b|右移|右摇|向右",
    "tilt_up": r"\btilt(?:s|ing)?[\s-]*up\b|上摇|向上",
    "tilt_down": r"\btilt(?:s|ing)?[\s-]*down\b|下摇|向下",
}


class RenderCancelled(Exception):
    """The render was asked to stop; its partial files are dropped."""


def camera_from_prompt(prompt):
    """The camera move a prompt asks for (first phrase mentioned), else a gentle zoom in."""
    text = (prompt or "").lower()
    found = [(match.start(), camera) for camera, pattern in _CAMERA_PHRASES.items()
             if (match := re.search(pattern, text))]
    return min(found)[1] if found else "zoom_in"


def _smoothstep(t):
    t = min(max(t, 0.0), 1.0)
    return t * t * (3 - 2 * t)


def _window(camera, eased):
    """Crop window (fraction of the picture, centre x, centre y) at eased progress 0..1."""
    if camera == "zoom_in":
        return 1 / (1 + (ZOOM - 1) * eased), 0.5, 0.5
    if camera == "zoom_out":
        return 1 / (ZOOM - (ZOOM - 1) * eased), 0.5, 0.5
    crop = 1 / ZOOM
    travel = (1 - crop) / 2 * (1 - 2 * eased)   # from one edge of the margin to the other
    # Panning left shows what lies to the left: the window moves left, the content moves right.
    return {"pan_left": (crop, 0.5 + travel, 0.5), "pan_right": (crop, 0.5 - travel, 0.5),
            "tilt_up": (crop, 0.5, 0.5 + travel), "tilt_down": (crop, 0.5, 0.5 - travel)}[camera]


def _even_fit(width, height, max_side):
    """Even output size with the picture's aspect, long side at most max_side, never upscaled."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _cover(img, width, height):
    """Scale and centre-crop `img` to exactly width×height."""
    h, w = img.shape[:2]
    scale = max(width / w, height / h)
    resized = cv2.resize(img, (max(width, round(w * scale)), max(height, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return resized[top:top + height, left:left + width]


def render_video(first, out, *, tail=None, camera="zoom_in", duration=5, fps=FPS, max_side=1280,
                 progress=None, should_stop=None):
    """Render a camera move over `first` (blending into `tail`) as an H.264 MP4 at `out`."""
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera move {camera!r}; expected one of {', '.join(CAMERAS)}")
    picture = media.load_bgr(first)
    src_h, src_w = picture.shape[:2]
    width, height = _even_fit(src_w, src_h, max_side)
    # Keep up to ZOOM times the output resolution, so the closest framing is still sharp.
    extra = min(ZOOM, max(1.0, max(src_w, src_h) / max(width, height)))
    work = cv2.resize(picture, (round(width * extra), round(height * extra)), interpolation=cv2.INTER_AREA)
    work_h, work_w = work.shape[:2]
    tail_frame = _cover(media.load_bgr(tail), width, height) if tail else None

    frames = int(duration * fps)
    with media.Mp4Writer(out, width, height, fps) as writer:
        for index in range(frames):
            if should_stop and should_stop():
                raise RenderCancelled
            t = index / max(1, frames - 1)
            crop, cx, cy = _window(camera, _smoothstep(t))
            # Inverse map (output pixel -> work pixel, pixel centres aligned): float offsets give
            # sub-pixel motion, so slow moves glide instead of stepping a whole pixel at a time.
            sx, sy = crop * work_w / width, crop * work_h / height
            x0, y0 = (cx - crop / 2) * work_w, (cy - crop / 2) * work_h
            matrix = np.float32([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]])
            frame = cv2.warpAffine(work, matrix, (width, height),
                                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_REPLICATE)
            if tail_frame is not None and t > 0.5:
                alpha = _smoothstep((t - 0.5) * 2)  # the tail fades in over the second half
                frame = cv2.addWeighted(frame, 1 - alpha, tail_frame, alpha, 0)
            writer.write(frame)
            if progress:
                progress(index + 1, frames)
    return {"width": width, "height": height, "frames": frames, "fps": fps, "duration": frames / fps}


# ---- image looks: each takes a BGR picture and returns a restyled one of the same size

def _at_style_size(look):
    """Run a slow look at STYLE_SIDE and scale the result back up smoothly."""
    def run(img):
        h, w = img.shape[:2]
        scale = STYLE_SIDE / max(h, w)
        if scale >= 1:
            return look(img)
        small = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        return cv2.resize(look(small), (w, h), interpolation=cv2.INTER_CUBIC)
    run.__name__ = look.__name__
    return run


@_at_style_size
def painterly(img):
    return cv2.stylization(img, sigma_s=60, sigma_r=0.45)


@_at_style_size
def colour_pencil(img):
    return cv2.pencilSketch(img, sigma_s=50, sigma_r=0.07, shade_factor=0.05)[1]


@_at_style_size
def detail(img):
    return cv2.detailEnhance(img, sigma_s=10, sigma_r=0.15)


@_at_style_size
def soft(img):
    return cv2.edgePreservingFilter(img, flags=cv2.RECURS_FILTER, sigma_s=60, sigma_r=0.4)


@_at_style_size
def cartoon(img):
    smooth = img
    for _ in range(3):
        smooth = cv2.bilateralFilter(smooth, 9, 60, 60)
    step = 40  # few colour levels give flat, cel-shaded areas
    flat = (smooth // step * step + step // 2).astype(np.uint8)
    gray = cv2.medianBlur(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), 7)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return cv2.bitwise_and(flat, flat, mask=edges)


def _split_tone(img, shadows_bgr, highlights_bgr):
    """Push dark areas towards one tint and bright areas towards another."""
    luma = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)[..., None] / 255
    shift = (1 - luma) * np.float32(shadows_bgr) + luma * np.float32(highlights_bgr)
    return np.clip(img + shift, 0, 255).astype(np.uint8)


def warm(img):
    return _split_tone(img, (-18, 4, 22), (-30, 6, 28))


def cool(img):
    return _split_tone(img, (28, 8, -20), (22, 4, -24))


def teal_orange(img):
    return _split_tone(img, (30, 14, -26), (-34, 8, 32))


def sepia(img):
    return cv2.transform(img, np.float32([[0.131, 0.534, 0.272],     # B from (B, G, R)
                                          [0.168, 0.686, 0.349],     # G
                                          [0.189, 0.769, 0.393]]))   # R


# One look per variation, most striking first; n_max in capabilities() is len(LOOKS).
LOOKS = [painterly, teal_orange, colour_pencil, cartoon, warm, detail, cool, soft, sepia]


def _fit_aspect(img, aspect_ratio, max_side):
    """Centre-crop to the ratio; when that would keep less than MIN_KEPT of the picture (a portrait
    photo asked for 21:9), show the whole picture on a blurred, darkened copy of itself instead."""
    rw, rh = (int(part) for part in aspect_ratio.split(":"))
    target = rw / rh
    h, w = img.shape[:2]
    crop_w, crop_h = (round(h * target), h) if w / h > target else (w, round(w / target))
    if crop_w * crop_h >= MIN_KEPT * w * h:
        scale = min(1.0, max_side / max(crop_w, crop_h))
        return _cover(img, max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
    # The smallest canvas of the ratio that holds the whole picture, never larger than max_side.
    canvas_w, canvas_h = (round(h * target), h) if w / h < target else (w, round(w / target))
    scale = min(1.0, max_side / max(canvas_w, canvas_h))
    canvas_w, canvas_h = max(1, round(canvas_w * scale)), max(1, round(canvas_h * scale))
    backdrop = cv2.GaussianBlur(_cover(img, max(1, canvas_w // 8), max(1, canvas_h // 8)), (0, 0), 4)
    canvas = cv2.resize(cv2.convertScaleAbs(backdrop, alpha=0.55), (canvas_w, canvas_h),
                        interpolation=cv2.INTER_CUBIC)
    fg_w, fg_h = min(canvas_w, max(1, round(w * scale))), min(canvas_h, max(1, round(h * scale)))
    left, top = (canvas_w - fg_w) // 2, (canvas_h - fg_h) // 2
    canvas[top:top + fg_h, left:left + fg_w] = cv2.resize(img, (fg_w, fg_h), interpolation=cv2.INTER_AREA)
    return canvas


def render_images(reference, out_dir, *, n=1, aspect_ratio="1:1", fidelity=0.5, max_side=1536,
                  progress=None, should_stop=None):
    """Write `n` looks of `reference` as out_dir/image-1.png … image-n.png; return their paths.

    `fidelity` blends each look with the cropped original: 1.0 gives the crop itself.
    """
    if not 1 <= n <= len(LOOKS):
        raise ValueError(f"n must be 1 to {len(LOOKS)}, one variation per look")
    if aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f"unknown aspect ratio {aspect_ratio!r}; expected one of {', '.join(ASPECT_RATIOS)}")
    fidelity = min(max(float(fidelity), 0.0), 1.0)
    base = _fit_aspect(media.load_bgr(reference), aspect_ratio, max_side)
    paths = []
    for index in range(n):
        if should_stop and should_stop():
            raise RenderCancelled
        picture = cv2.addWeighted(base, fidelity, LOOKS[index](base), 1 - fidelity, 0)
        ok, png = cv2.imencode(".png", picture, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise RuntimeError("PNG encoding failed")
        path = Path(out_dir) / f"image-{index + 1}.png"
        media.save_bytes_atomic(png.tobytes(), path)
        paths.append(path)
        if progress:
            progress(index + 1, n)
    return paths
