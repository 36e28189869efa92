"""Media files: checking uploaded pictures, stripping their metadata, writing files atomically,
H.264 MP4 output, thumbnails.

Uploads arrive as bytes (a multipart file part) or as Base64 (raw or `data:` URI) and are refused
here, with the field named, unless they are a JPEG, PNG, WebP, BMP or HEIC picture of sane size and
shape; the format is decided by the bytes, never by the declared type, and size and shape by the
header before any pixel is decoded. Every picture is decoded once in full, so a damaged one is
refused. A JPEG or PNG then reaches the provider as the person sent it: its metadata is stripped
losslessly by walking its segments or chunks (`strip_jpeg`, `strip_png`: EXIF, XMP, comments and
text go; the colour profile and what else decides the colours stay), never by re-encoding its
pixels. The exception is a picture whose EXIF orientation is not 1: it is re-encoded upright
(recorded as `rotated`), or the provider would see it sideways. Providers take JPEG or PNG, so
WebP, BMP and HEIC are converted (to PNG when the picture has transparency, else JPEG), and
`fit_image` re-encodes a picture over a provider's byte limit (JPEG quality steps, then smaller
scales) rather than refusing it; both are recorded on the picture (`converted`, `reencoded`) and so
on the task's input entry. Videos are written as browser-playable MP4 (H.264, yuv420p, moov atom
first) through PyAV's bundled libx264. Every file this module writes appears under its final name
only once it is complete (`.part` + fsync + rename), so a crash never leaves a half-written picture
or clip behind. `probe_media` is how the pipeline verifies that a downloaded result really is a
readable picture or video before calling a task succeeded.
"""

import base64
import binascii
import hashlib
import io
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pillow_heif
from PIL import BmpImagePlugin, GifImagePlugin, Image, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from errors import N_, PayloadTooLarge, ValidationError
from fileio import fsync_dir

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 50_000_000
MIN_SIDE = 300
MAX_ASPECT = 2.5
CHUNK = 1024 * 1024

# Base64 grows 4/3; line breaks (MIME wraps at 76 columns) add a few per cent more. A string longer
# than this cannot hold a picture within the limit, so it is refused before any work is done on it.
_MAX_BASE64_CHARS = (MAX_IMAGE_BYTES + 2) // 3 * 4 * 11 // 10 + 1024

# Friendly labels for the request fields that carry pictures; other fields are named as they are.
_FIELD_LABELS = {"image": N_("image"), "image_tail": N_("tail frame"), "first": N_("first frame"),
                 "tail": N_("tail frame"), "reference": N_("reference picture")}

_MIME = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp",
         "mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm",
         "mkv": "video/x-matroska"}
_FORMAT_NAMES = {"gif": "GIF", "webp": "WebP", "bmp": "BMP", "tiff": "TIFF", "heic": "HEIC", "avif": "AVIF",
                 "mp4": "MP4 video", "mov": "QuickTime video", "webm": "WebM video",
                 "mkv": "Matroska video"}
VIDEO_FORMATS = {"mp4", "mov", "webm", "mkv"}

# The format plugins are used directly instead of Image.open: Image.open runs PIL's global
# decompression-bomb check, which warns (an error under pytest) from 89 MP on. Our own, lower
# limit is applied from the header instead, before any pixel is decoded.
_PIL_PLUGINS = {"jpeg": JpegImagePlugin.JpegImageFile, "png": PngImagePlugin.PngImageFile,
                "gif": GifImagePlugin.GifImageFile, "webp": WebPImagePlugin.WebPImageFile}
# What PIL raises on corrupt or truncated data, whichever decoder meets it.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
               Image.DecompressionBombError)
# Uploads people have: phones save HEIC, browsers WebP, Windows tools BMP. The HEIC reader is
# pillow-heif's Pillow plugin (libheif in a maintained wheel); it reads the container's header on
# open and decodes pixels only on load(), like the others.
_UPLOAD_PLUGINS = {**{fmt: _PIL_PLUGINS[fmt] for fmt in ("jpeg", "png", "webp")},
                   "bmp": BmpImagePlugin.BmpImageFile, "heic": pillow_heif.HeifImageFile}
PROVIDER_FORMATS = ("jpeg", "png")      # what every provider takes
# The byte limit every provider documents for an input picture (Kling, DashScope, LiblibAI: 10 MB);
# a provider with another limit says so in `max_image_bytes`.
PROVIDER_MAX_BYTES = 10_000_000
_QUALITY_STEPS = (85, 75, 65)           # JPEG qualities tried, in order, before scaling down
_SCALE_STEPS = (0.8, 0.64, 0.5, 0.4, 0.32, 0.25)


@dataclass(frozen=True)
class DecodedImage:
    """An uploaded picture that passed every check; `data` is the bytes exactly as uploaded."""

    data: bytes
    format: str   # "jpeg" | "png"
    mime: str
    ext: str      # ".jpg" | ".png"
    width: int    # stored pixels (EXIF orientation not applied)
    height: int
    sha256: str
    converted: str | None = None    # e.g. "webp->jpeg" when the upload was in another format
    reencoded: dict | None = None   # {"quality", "scale", "bytes_before"} when fitted to a byte limit
    rotated: int | None = None      # the EXIF orientation (2-8) applied by re-encoding the picture upright

    def record(self):
        """What the task's input entry keeps about this picture (tasks.py documents the fields)."""
        entry = {"width": self.width, "height": self.height, "sha256": self.sha256}
        for name in ("converted", "reencoded", "rotated"):
            if getattr(self, name):
                entry[name] = getattr(self, name)
        return entry


@dataclass(frozen=True)
class Upload:
    """A picture sent as a file part of a multipart/form-data request: its bytes as they came."""

    data: bytes
    filename: str = ""


# (offset, magic bytes, format): how each format a person may upload starts.
_MAGIC = [(0, b"\xff\xd8\xff", "jpeg"), (0, b"\x89PNG\r\n\x1a\n", "png"), (0, b"GIF87a", "gif"),
          (0, b"GIF89a", "gif"), (0, b"BM", "bmp"), (0, b"II*\x00", "tiff"), (0, b"MM\x00*", "tiff")]
_FTYP_BRANDS = {b"heic": "heic", b"heix": "heic", b"hevc": "heic", b"heim": "heic", b"heis": "heic",
                b"mif1": "heic", b"msf1": "heic", b"avif": "avif", b"avis": "avif", b"qt  ": "mov"}


def sniff_format(head):
    """Name the format of a file from its first bytes (at least 32), or None when unknown."""
    for offset, magic, name in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "mp4")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in head[:64] else "mkv"
    return None


def image_limits():
    """The upload checks below, handed to the pages so they can check pictures before sending."""
    return {"max_bytes": MAX_IMAGE_BYTES, "max_pixels": MAX_PIXELS, "min_side": MIN_SIDE, "max_aspect": MAX_ASPECT}


def _invalid(field, label):
    """A 400/422 ValidationError naming `field`; its message template may use %(label)s."""
    def invalid(message, code="invalid_image", status=400, params=None):
        return ValidationError(message, code=code, field=field, status=status,
                               params={"label": label, **(params or {})})
    return invalid


def decode_image(data, field, *, label=None, min_side=MIN_SIDE):
    """Decode and check an uploaded Base64 picture; raise a ValidationError naming `field`.
    `min_side` is the smallest side the chosen model takes (the studio's MIN_SIDE by default)."""
    label = label or _FIELD_LABELS.get(field, field)
    invalid = _invalid(field, label)
    if not isinstance(data, str) or not data.strip():
        raise invalid(N_("%(label)s must be a Base64 string or a data: URI holding a picture (JPG, PNG, WebP, "
                         "BMP, HEIC)"))
    text = data.strip()             # the same string, not a copy, when there is nothing to strip
    start = 0
    if text.startswith("data:"):
        comma = text.find(",")
        if comma == -1 or not text[:comma].endswith(";base64"):
            raise invalid(N_("%(label)s is a data: URI without ';base64,' data"))
        start = comma + 1
    if len(text) - start > _MAX_BASE64_CHARS:
        raise PayloadTooLarge(N_("%(label)s is larger than 10 MiB"), code="image_too_large", field=field,
                              params={"label": label})
    try:
        raw = _base64_bytes(text, start)
    except (binascii.Error, ValueError):
        raise invalid(N_("%(label)s is not valid Base64")) from None
    return check_image_bytes(raw, field, label=label, min_side=min_side)


def _base64_bytes(text, start):
    """The bytes of the Base64 in text[start:]: straight from the string when it is one clean run
    (what browsers and scripts send), else with line breaks dropped and padding restored."""
    encoded = text.encode("ascii")          # UnicodeEncodeError is a ValueError: not Base64
    try:
        return binascii.a2b_base64(memoryview(encoded)[start:], strict_mode=True)
    except binascii.Error:
        compact = b"".join(encoded[start:].split())     # at most _MAX_BASE64_CHARS: checked before
        return base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)


def check_image_bytes(raw, field, *, label=None, min_side=MIN_SIDE):
    """Check picture bytes (an upload's, decoded Base64 or a fetched URL's) and return them as a
    DecodedImage: a JPEG or PNG with its metadata stripped losslessly (or re-encoded upright when
    its EXIF orientation says so), any other accepted format converted."""
    label = label or _FIELD_LABELS.get(field, field)
    invalid = _invalid(field, label)
    if not raw:
        raise invalid(N_("%(label)s is empty"))
    if len(raw) > MAX_IMAGE_BYTES:
        raise PayloadTooLarge(N_("%(label)s is larger than 10 MiB"), code="image_too_large", field=field,
                              params={"label": label})
    fmt = sniff_format(raw[:64])
    if fmt not in _UPLOAD_PLUGINS:
        raise invalid(N_("%(label)s must be a JPG, PNG, WebP, BMP or HEIC picture (this looks like %(found)s)")
                      if fmt in _FORMAT_NAMES else N_("%(label)s must be a JPG, PNG, WebP, BMP or HEIC picture"),
                      code="unsupported_image_format", params={"found": _FORMAT_NAMES.get(fmt)})
    name = _FORMAT_NAMES.get(fmt, fmt.upper())
    stripped = None
    if fmt in _STRIPPERS:
        try:
            stripped = _STRIPPERS[fmt](raw)     # the structure first: cheaper than a decode
        except ValueError as exc:
            raise invalid(N_("%(label)s is a damaged %(name)s file (%(detail)s)"),     # the detail stays English
                          params={"name": name, "detail": str(exc)}) from None
    try:
        img = _UPLOAD_PLUGINS[fmt](io.BytesIO(raw))
    except _PIL_ERRORS:
        raise invalid(N_("%(label)s is a damaged %(name)s file (its header cannot be read)"),
                      params={"name": name}) from None
    with img:
        _check_header(img, label, field, invalid, min_side)
        try:
            img.load()      # every pixel decoded once: a picture that does not decode is refused
        except _PIL_ERRORS:
            raise invalid(N_("%(label)s is a truncated or damaged %(name)s file"),
                          params={"name": name}) from None
        return _provider_picture(img, fmt, stripped, label, invalid, min_side)


def _check_header(img, label, field, invalid, min_side):
    """Size and shape from the header: a picture refused for them is never decoded (a 1 × 50,000,000
    px PNG is 95 KB of file and seconds of decoding). EXIF rotation only swaps the sides, which
    changes neither the smaller side nor the ratio's bounds."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise PayloadTooLarge(
            N_("%(label)s is %(width)s×%(height)s px (%(mp).0f MP); at most %(max)s MP is accepted"),
            code="image_too_many_pixels", field=field, params={
                "label": label, "width": width, "height": height, "mp": width * height / 1e6,
                "max": MAX_PIXELS // 1_000_000})
    _check_shape(width, height, label, invalid, min_side)


def _provider_picture(img, fmt, stripped, label, invalid, min_side):
    """The decoded upload as what providers take: the stripped bytes of a JPEG or PNG, unless its
    orientation needs a re-encode; a WebP, BMP or HEIC converted."""
    orientation = _orientation(img)
    if stripped is not None and orientation == 1:
        return _decoded(stripped, fmt, img.width, img.height)
    target = fmt if fmt in PROVIDER_FORMATS else ("png" if _has_alpha(img) else "jpeg")
    upright = ImageOps.exif_transpose(img)
    raw = _reencode(upright, target, img.info.get("icc_profile"))
    _check_shape(upright.width, upright.height, label, invalid, min_side)
    return _decoded(raw, target, upright.width, upright.height,
                    converted=None if target == fmt else f"{fmt}->{target}",
                    rotated=orientation if orientation != 1 else None)


def _orientation(img):
    """The EXIF orientation (1 = upright; anything out of the 1-8 range counts as upright)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except _PIL_ERRORS:
        return 1
    return value if value in range(1, 9) else 1


# ---- lossless metadata stripping
#
# JPEG: what is kept decides how the pixels look (tables, frames, scans, restart intervals) plus
# APP0 JFIF, APP2 ICC_PROFILE (the colour profile) and APP14 Adobe (it says whether the data is
# YCbCr or RGB/CMYK); every other APPn (EXIF and XMP in APP1, Photoshop's IPTC in APP13, MPF's
# second pictures in APP2 ...) and COM goes, as do bytes after EOI (phones append whole videos).
# PNG: the critical chunks plus transparency and the colour chunks are kept; text, EXIF, times and
# every other ancillary chunk go. Both walkers refuse a file whose structure is broken (ValueError
# with the reason), and return the very same bytes object when nothing is to be dropped.

_JPEG_KEEP_APP = {0xE0: (b"JFIF\0",), 0xE2: (b"ICC_PROFILE\0",), 0xEE: (b"Adobe",)}
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}       # TEM, RST0-7
_JPEG_FRAMES = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}    # SOF0-15 (not DHT, JPG, DAC)
# In scan data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker; anything else is
# the next segment's marker (after any fill bytes).
_JPEG_SCAN_END = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
_PNG_KEEP = _PNG_CRITICAL | {b"tRNS", b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"sBIT", b"cICP", b"mDCV", b"cLLI"}


def _kept(raw, spans):
    """raw itself when the spans cover all of it, else the spans joined (one copy)."""
    view = memoryview(raw)
    merged = []
    for start, end in spans:
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    if merged == [(0, len(raw))]:
        return raw
    return b"".join(view[start:end] for start, end in merged)


def strip_jpeg(raw):
    """A JPEG's bytes without its metadata segments (see above); ValueError when it is malformed."""
    if raw[:2] != b"\xff\xd8":
        raise ValueError("no start-of-image marker")
    spans, pos, seen = [(0, 2)], 2, set()
    while True:
        marker, start, pos = _jpeg_marker(raw, pos)
        seen.add(marker)
        if marker == 0xD9:                              # EOI: what follows is not the picture
            spans.append((start, pos))
            break
        end = pos if marker in _JPEG_NO_LENGTH else _jpeg_segment_end(raw, marker, pos)
        if _keep_jpeg_segment(raw, marker, pos):
            spans.append((start, end))
        pos = end
    if not seen & _JPEG_FRAMES or 0xDA not in seen:
        raise ValueError("no frame or no scan before the end-of-image marker")
    return _kept(raw, spans)


def _jpeg_marker(raw, pos):
    """(marker, where its 0xFF is, where its segment starts) for the marker at `pos`."""
    if pos >= len(raw) or raw[pos] != 0xFF:
        raise ValueError(f"truncated, or no marker at byte {pos}")
    while pos < len(raw) and raw[pos] == 0xFF:       # fill bytes may precede a marker
        pos += 1
    if pos >= len(raw):
        raise ValueError("truncated after a marker")
    return raw[pos], pos - 1, pos + 1


def _jpeg_segment_end(raw, marker, pos):
    if pos + 2 > len(raw):
        raise ValueError("truncated segment length")
    length = int.from_bytes(raw[pos:pos + 2], "big")
    if length < 2 or pos + length > len(raw):
        raise ValueError(f"segment 0x{marker:02X} runs past the end of the file")
    end = pos + length
    if marker == 0xDA:                                  # SOS: the scan's data follows its header
        found = _JPEG_SCAN_END.search(raw, end)
        if found is None:
            raise ValueError("scan data runs to the end without an end-of-image marker")
        end = found.end() - 2
    return end


def _keep_jpeg_segment(raw, marker, pos):
    if marker == 0xFE:                                  # COM
        return False
    if 0xE0 <= marker <= 0xEF:
        body = raw[pos + 2:pos + 16]
        return any(body.startswith(tag) for tag in _JPEG_KEEP_APP.get(marker, ()))
    return True


def strip_png(raw):
    """A PNG's bytes without its metadata chunks (see above); ValueError when it is malformed."""
    if raw[:8] != _PNG_SIGNATURE:
        raise ValueError("no PNG signature")
    spans, pos, view, seen = [(0, 8)], 8, memoryview(raw), []
    while not seen or seen[-1] != b"IEND":
        if pos + 12 > len(raw):
            raise ValueError("truncated before the IEND chunk")
        length, kind = struct.unpack_from(">I4s", raw, pos)
        end = pos + 12 + length
        if not kind.isalpha() or end > len(raw):
            raise ValueError(f"chunk at byte {pos} is malformed or runs past the end of the file")
        if zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(raw[end - 4:end], "big"):
            raise ValueError(f"chunk {kind.decode()} fails its checksum")
        if kind[0:1].isupper() and kind not in _PNG_CRITICAL:
            raise ValueError(f"unknown critical chunk {kind.decode()}")
        if not seen and kind != b"IHDR":
            raise ValueError("the first chunk is not IHDR")
        seen.append(kind)
        if kind in _PNG_KEEP:
            spans.append((pos, end))
        pos = end
    if b"IDAT" not in seen:
        raise ValueError("no image data")
    return _kept(raw, spans)


_STRIPPERS = {"jpeg": strip_jpeg, "png": strip_png}


def _decoded(raw, fmt, width, height, **notes):
    return DecodedImage(data=raw, format=fmt, mime=_MIME[fmt], ext=".jpg" if fmt == "jpeg" else ".png",
                        width=width, height=height, sha256=hashlib.sha256(raw).hexdigest(), **notes)


def _has_alpha(img):
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def fit_image(image, max_bytes=PROVIDER_MAX_BYTES):
    """`image` (a DecodedImage) within `max_bytes`: as it is when it fits, else re-encoded as JPEG at
    falling qualities, then at smaller scales (never below MIN_SIDE), with what was done recorded in
    `reencoded`. A picture that cannot be made to fit is refused (413, naming the limit)."""
    if len(image.data) <= max_bytes:
        return image
    with Image.open(io.BytesIO(image.data)) as img:
        img.load()
        # JPEG has no transparency: put it on white, as the pictures the pipeline draws do.
        rgb = _on_white(img) if _has_alpha(img) else img.convert("RGB")
    scales = [1.0] + [s for s in _SCALE_STEPS if min(rgb.size) * s >= MIN_SIDE]
    for scale in scales:
        sized = rgb if scale == 1.0 else rgb.resize((round(rgb.width * scale), round(rgb.height * scale)),
                                                    Image.Resampling.LANCZOS)
        for quality in _QUALITY_STEPS:
            out = io.BytesIO()
            sized.save(out, "JPEG", quality=quality)
            if out.tell() <= max_bytes:
                converted = image.converted
                if image.format != "jpeg":
                    converted = f"{converted.split('->')[0] if converted else image.format}->jpeg"
                log.info("picture re-encoded to fit %d bytes: quality %d, scale %.2f", max_bytes, quality, scale)
                return _decoded(out.getvalue(), "jpeg", sized.width, sized.height, converted=converted,
                                reencoded={"quality": quality, "scale": scale, "bytes_before": len(image.data)})
    raise PayloadTooLarge(N_("The picture cannot be made smaller than %(max_bytes)s bytes"), code="image_too_large",
                          params={"max_bytes": max_bytes})


def _on_white(img):
    rgba = img.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def _check_shape(width, height, label, invalid, min_side=MIN_SIDE):
    if min(width, height) < min_side:
        raise invalid(N_("%(label)s is %(width)s×%(height)s px; each side must be at least %(min)s px"),
                      code="image_too_small", status=422, params={"width": width, "height": height, "min": min_side})
    if not 1 / MAX_ASPECT <= width / height <= MAX_ASPECT:
        raise invalid(N_("%(label)s is %(width)s×%(height)s px (aspect ratio %(ratio).2f); width/height must "
                         "be between 1:%(max)s and %(max)s:1"),
                      code="image_bad_aspect_ratio", status=422,
                      params={"width": width, "height": height, "ratio": width / height, "max": MAX_ASPECT})


def _reencode(upright, fmt, icc_profile=None):
    """An (already upright) picture re-encoded in `fmt` with no EXIF, GPS or other metadata but its
    colour profile: what people upload is passed on to providers, and phone photos carry their location."""
    # Pillow writes back what `info` holds (a JPEG's COM comment, XMP, a PNG's text chunks): start
    # from nothing but the pixels, keeping only a PNG's transparency, which is picture data.
    kept = {"transparency": upright.info["transparency"]} if fmt == "png" and "transparency" in upright.info else {}
    upright = upright.copy()
    upright.info = kept
    if fmt == "jpeg":
        upright = upright.convert("RGB") if upright.mode not in ("RGB", "L") else upright
        options = {"quality": 95, "subsampling": 0}
    else:
        # A BMP or HEIC may be in a mode PNG cannot hold (CMYK, 16-bit variants): RGB(A) then.
        if upright.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
            upright = upright.convert("RGBA" if _has_alpha(upright) else "RGB")
        options = {"compress_level": 6}
    if icc_profile:
        options["icc_profile"] = icc_profile
    out = io.BytesIO()
    upright.save(out, "JPEG" if fmt == "jpeg" else "PNG", **options)
    return out.getvalue()


def _part_path(path):
    return path.with_name(path.name + ".part")


def _publish(part, path):
    """Make a finished `.part` file durable and visible under its final name."""
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, path)
    fsync_dir(path.parent)


def save_bytes_atomic(data, path):
    """Write `data` to `path` so that readers see either nothing or the whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(path)
    try:
        with open(part, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class Mp4Writer:
    """Encode BGR uint8 frames into a browser-playable H.264 MP4 (yuv420p, faststart).

    Use as a context manager: the file appears at `path` only when the block ends normally;
    on an exception the partial file is removed. Odd sizes are rounded down to even (yuv420p
    needs even sides) and frames are cropped by that last row/column.
    """

    def __init__(self, path, width, height, fps, *, crf=21, preset="veryfast"):
        self.path = Path(path)
        self.width, self.height = int(width) // 2 * 2, int(height) // 2 * 2
        if self.width < 2 or self.height < 2:
            raise ValueError(f"video size {width}x{height} is too small")
        self.fps = fps
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._part = _part_path(self.path)
        # The muxer needs the format named: the .part suffix hides it from FFmpeg's guesser.
        self._container = av.open(str(self._part), mode="w", format="mp4",
                                  options={"movflags": "+faststart"})
        try:
            self._stream = self._container.add_stream(
                "libx264", rate=fps, options={"crf": str(crf), "preset": preset})
            self._stream.width, self._stream.height = self.width, self.height
            self._stream.pix_fmt = "yuv420p"
            # Frames are converted by OpenCV (BT.601, limited range: 5x faster than swscale here),
            # so say so in the stream: untagged HD is shown as BT.709 by browsers, shifting colours.
            context = self._stream.codec_context
            context.colorspace, context.color_range = 6, 1            # smpte170m matrix, tv range
            context.color_primaries, context.color_trc = 1, 1         # bt709 = the sRGB primaries
        except BaseException:
            self.abort()
            raise

    def write(self, frame_bgr):
        """Encode one H×W×3 uint8 BGR frame."""
        even = np.ascontiguousarray(frame_bgr[: self.height, : self.width])
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(even, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        frame.pts = self.frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self):
        """Flush the encoder, finish the file and move it into place."""
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()  # with +faststart this rewrites the file with moov first
            _publish(self._part, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self):
        """Drop the unfinished file."""
        try:
            self._container.close()
        except (av.FFmpegError, OSError, ValueError):
            log.debug("closing an aborted MP4 failed", exc_info=True)
        self._part.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def sha256_file(path):
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_head(path):
    with open(path, "rb") as fh:
        return fh.read(64)


def open_image(fp):
    """Open a JPEG/PNG/GIF/WebP from a binary file header-only; ValueError for anything else.

    Refuses more than MAX_PIXELS before decoding, so downloads cannot be decompression bombs either.
    """
    fmt = sniff_format(fp.read(64))
    fp.seek(0)
    if fmt not in _PIL_PLUGINS:
        raise ValueError(f"not a JPEG, PNG, GIF or WebP picture ({fmt or 'unknown format'})")
    try:
        img = _PIL_PLUGINS[fmt](fp)
    except _PIL_ERRORS as exc:
        raise ValueError(f"unreadable {fmt.upper()} picture: {exc}") from None
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise ValueError(f"picture is {img.width}x{img.height} px, over {MAX_PIXELS} pixels")
    return img


def load_rgb(path):
    """Decode a picture file into an upright (EXIF-applied) RGB PIL image; ValueError if unreadable."""
    with open(path, "rb") as fh, open_image(fh) as img:
        try:
            img.load()
            upright = ImageOps.exif_transpose(img)
        except _PIL_ERRORS as exc:
            raise ValueError(f"unreadable picture {Path(path).name}: {exc}") from None
        if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
            # Transparent areas become white rather than whatever colour hides under alpha 0.
            rgba = upright.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        return upright.convert("RGB")


def load_bgr(path):
    """Decode a picture file into an upright BGR uint8 array (OpenCV's layout)."""
    return cv2.cvtColor(np.asarray(load_rgb(path)), cv2.COLOR_RGB2BGR)


def first_video_frame(path):
    """First frame of a video as an RGB array: OpenCV first, PyAV when OpenCV cannot read it."""
    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
    finally:
        capture.release()
    if ok and frame is not None:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise ValueError(f"unreadable video {Path(path).name}: {exc}") from None
    raise ValueError(f"video {Path(path).name} has no frames")


def make_thumbnail(src, dest, max_side=480):
    """Write a JPEG thumbnail (or a video's poster) of `src` to `dest`; return its size."""
    src, dest = Path(src), Path(dest)
    if sniff_format(_read_head(src)) in VIDEO_FORMATS:
        picture = Image.fromarray(first_video_frame(src))
    else:
        picture = load_rgb(src)
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85, optimize=True)
    save_bytes_atomic(buffer.getvalue(), dest)
    return {"width": picture.width, "height": picture.height}


def _probe_video(path):
    """Width, height and duration of a video whose every packet can be read."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if stream.duration is not None and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (container.duration or 0) / av.time_base
            # Demuxing every packet (cheap) proves the file is complete: a truncated download
            # ends early here even though its header looks fine. Decoding until the first
            # frame comes out proves the packets are really video.
            packets, decoded = 0, False
            for packet in container.demux(stream):
                packets += 1 if packet.size else 0
                if not decoded:
                    decoded = bool(packet.decode())  # the final empty packet flushes the decoder
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise ValueError(f"unreadable video {path.name}: {exc}") from None
    if not width or not height or not decoded:
        raise ValueError(f"video {path.name} has no readable frames")
    if stream.frames and packets < stream.frames:
        raise ValueError(f"video {path.name} is truncated ({packets} of {stream.frames} frames)")
    return width, height, round(duration, 3)


def probe_media(path):
    """Verify a picture or video file and describe it; ValueError when it is not readable."""
    path = Path(path)
    try:
        size = path.stat().st_size
        head = _read_head(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path.name}: {exc}") from None
    fmt = sniff_format(head)
    if fmt in VIDEO_FORMATS:
        width, height, duration = _probe_video(path)
    elif fmt in _PIL_PLUGINS:
        with open(path, "rb") as fh, open_image(fh) as img:
            width, height = img.size
            try:
                img.load()  # decode everything: a truncated download must not pass
            except _PIL_ERRORS as exc:
                raise ValueError(f"unreadable picture {path.name}: {exc}") from None
        duration = None
    else:
        raise ValueError(f"{path.name} is not a picture or video this studio can read")
    return {"bytes": size, "sha256": sha256_file(path), "width": width, "height": height,
            "duration": duration, "mime": _MIME[fmt]}
