"""Tests for media.py: upload checks, atomic writes, the H.264 writer, thumbnails and probing."""

import base64
import hashlib
import io
import struct
import time
import zlib

import av
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import media
from errors import PayloadTooLarge, ValidationError

# ---- pictures built in code


def picture_bytes(width, height, fmt="PNG", colour=(40, 120, 200), **save_args):
    buffer = io.BytesIO()
    mode = "RGBA" if len(colour) == 4 else "RGB"
    Image.new(mode, (width, height), colour).save(buffer, fmt, **save_args)
    return buffer.getvalue()


def b64(data):
    return base64.b64encode(data).decode()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_claiming(width, height):
    """A tiny valid-looking PNG whose header claims width×height pixels it does not contain."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def jpeg_claiming(width, height):
    """A small real JPEG whose frame header (SOF0) is rewritten to claim width×height."""
    data = bytearray(picture_bytes(320, 320, "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def decode_error(data, field="image"):
    with pytest.raises(ValidationError) as caught:
        media.decode_image(data, field)
    assert caught.value.field == field
    return caught.value


# ---- decode_image: good cases


def test_decode_raw_base64_jpeg():
    raw = picture_bytes(640, 480, "JPEG")
    image = media.decode_image(b64(raw), "image")
    assert (image.format, image.mime, image.ext) == ("jpeg", "image/jpeg", ".jpg")
    assert (image.width, image.height) == (640, 480)
    assert image.data.startswith(b"\xff\xd8\xff")          # re-encoded, still a JPEG
    assert image.sha256 == hashlib.sha256(image.data).hexdigest()


def test_metadata_is_stripped_and_orientation_applied():
    """Phone photos carry GPS and an orientation tag: store them upright and without metadata."""
    img = Image.new("RGB", (640, 400), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6                      # orientation: rotate 90° clockwise to view
    exif[0x010F] = "SecretCam"            # camera make, standing in for GPS and owner data
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif)
    image = media.decode_image(b64(out.getvalue()), "image")
    assert (image.width, image.height) == (400, 640)
    assert b"SecretCam" not in image.data and b"Exif" not in image.data[:200]


def test_png_declared_as_jpeg_in_data_uri_is_accepted_as_png():
    raw = picture_bytes(400, 300)
    image = media.decode_image("data:image/jpeg;base64," + b64(raw), "image")
    assert (image.format, image.mime, image.ext) == ("png", "image/png", ".png")
    assert image.data == raw


def test_decode_tolerates_line_breaks_and_missing_padding():
    raw = next(data for width in range(300, 340) if len(data := picture_bytes(width, 300)) % 3)
    encoded = b64(raw)
    assert encoded.endswith("=")  # so stripping it below really drops padding
    wrapped = "\n".join(encoded.rstrip("=")[i:i + 76] for i in range(0, len(encoded), 76))
    assert media.decode_image(" " + wrapped + "\r\n", "image").data == raw


def test_decode_accepts_the_limits_exactly():
    assert media.decode_image(b64(picture_bytes(300, 300)), "image").width == 300
    assert media.decode_image(b64(picture_bytes(750, 300)), "image").width == 750  # 2.5 : 1
    assert media.decode_image(b64(picture_bytes(300, 750)), "image").height == 750  # 1 : 2.5


# ---- decode_image: refusals


@pytest.mark.parametrize("data", [None, 123, b"bytes", "", "   \n"])
def test_decode_refuses_non_strings_and_empty(data):
    error = decode_error(data)
    assert (error.status, error.code) == (400, "invalid_image")


@pytest.mark.parametrize("data", ["not base64 at all!", "QUJD$RA==", "data:image/png,iVBORw0KGgo=",
                                  "A", "QQ==QQ==", "üöä"])
def test_decode_refuses_invalid_base64(data):
    error = decode_error(data, field="image_tail")
    assert (error.status, error.code) == (400, "invalid_image")


def test_decode_refuses_truncated_picture():
    raw = picture_bytes(640, 480, "PNG", colour=(1, 2, 3))
    noisy = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(noisy, "PNG")
    for broken in (raw[: len(raw) // 2], noisy.getvalue()[: len(noisy.getvalue()) // 2],
                   b"\xff\xd8\xff\xe0" + b"\x00" * 100):
        error = decode_error(b64(broken))
        assert (error.status, error.code) == (400, "invalid_image")


def test_decode_refuses_more_than_10_mib_before_decoding():
    just_over = b"\x89PNG\r\n\x1a\n" + bytes(media.MAX_IMAGE_BYTES - 8 + 1)
    error = decode_error(b64(just_over))
    assert isinstance(error, PayloadTooLarge)
    assert (error.status, error.code) == (413, "image_too_large")

    huge = "A" * (200 * 1024 * 1024)
    started = time.perf_counter()
    error = decode_error(huge)
    assert error.code == "image_too_large"
    assert time.perf_counter() - started < 0.25  # refused by its length alone, nothing decoded


def test_decode_exactly_10_mib_is_not_too_large():
    exactly = b"\x89PNG\r\n\x1a\n" + bytes(media.MAX_IMAGE_BYTES - 8)
    assert decode_error(b64(exactly)).code == "invalid_image"  # size passes; the content does not


@pytest.mark.parametrize(("data", "named"), [
    (picture_bytes(400, 400, "GIF"), "GIF"),
    (picture_bytes(400, 400, "TIFF"), "TIFF"),
    (b"hello, this is plain text and not a picture", None),
])
def test_decode_refuses_formats_it_cannot_convert(data, named):
    error = decode_error("data:image/png;base64," + b64(data))
    assert (error.status, error.code) == (400, "unsupported_image_format")
    assert "JPG, PNG, WebP, BMP or HEIC" in error.message
    if named:
        assert named in error.message


def photo(width, height, fmt, mode="RGB", seed=0, **save_args):
    """A noisy photo-like picture (compresses like a photo, not like a flat colour)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, fmt, **save_args)
    return buffer.getvalue()


def heic_bytes(width, height, mode="RGB"):
    import pillow_heif

    buffer = io.BytesIO()
    pillow_heif.from_pillow(Image.new(mode, (width, height), (200, 80, 20) + ((128,) if mode == "RGBA" else ()))
                            ).save(buffer, quality=80)
    return buffer.getvalue()


@pytest.mark.parametrize(("data", "converted", "fmt"), [
    (photo(640, 400, "WEBP"), "webp->jpeg", "jpeg"),
    (photo(640, 400, "WEBP", mode="RGBA", lossless=True), "webp->png", "png"),
    (photo(640, 400, "BMP"), "bmp->jpeg", "jpeg"),
    (heic_bytes(640, 400), "heic->jpeg", "jpeg"),
])
def test_webp_bmp_and_heic_are_accepted_and_converted(data, converted, fmt):
    image = media.decode_image(b64(data), "image")
    assert (image.format, image.converted, image.reencoded) == (fmt, converted, None)
    assert (image.width, image.height) == (640, 400)
    with Image.open(io.BytesIO(image.data)) as stored:
        assert stored.format == fmt.upper() and stored.size == (640, 400)
    assert image.record() == {"width": 640, "height": 400, "sha256": image.sha256, "converted": converted}


@pytest.mark.parametrize("data", [photo(200, 180, "WEBP"), photo(200, 180, "BMP"), heic_bytes(200, 180)])
def test_converted_formats_get_the_same_size_checks(data):
    assert decode_error(b64(data)).code == "image_too_small"


def bmp_claiming(width, height):
    """A small BMP whose header claims width×height pixels."""
    data = bytearray(picture_bytes(320, 320, "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def test_a_bmp_bomb_is_refused_from_its_header():
    started = time.perf_counter()
    error = decode_error(b64(bmp_claiming(20_000, 20_000)))
    assert (error.status, error.code) == (413, "image_too_many_pixels")
    assert time.perf_counter() - started < 0.5


def test_a_jpeg_or_png_is_not_converted():
    assert media.decode_image(b64(photo(640, 400, "JPEG")), "image").converted is None
    assert media.decode_image(b64(photo(640, 400, "PNG")), "image").converted is None


# ---- fitting a provider's byte limit


def test_a_picture_within_the_limit_is_left_alone():
    image = media.decode_image(b64(photo(640, 400, "JPEG")), "image")
    assert media.fit_image(image, len(image.data)) is image


def test_quality_steps_come_before_scaling():
    image = media.decode_image(b64(photo(800, 600, "PNG")), "image")
    at_85 = io.BytesIO()
    Image.open(io.BytesIO(image.data)).convert("RGB").save(at_85, "JPEG", quality=85)
    fitted = media.fit_image(image, at_85.tell())
    assert fitted.reencoded == {"quality": 85, "scale": 1.0, "bytes_before": len(image.data)}
    assert (fitted.format, fitted.converted, fitted.width, fitted.height) == ("jpeg", "png->jpeg", 800, 600)
    assert len(fitted.data) <= at_85.tell()


def test_an_oversized_picture_is_scaled_down_to_fit_and_says_so():
    image = media.decode_image(b64(photo(1200, 900, "JPEG")), "image")
    limit = len(image.data) // 5
    fitted = media.fit_image(image, limit)
    assert len(fitted.data) <= limit and fitted.reencoded["scale"] < 1.0
    assert fitted.reencoded["quality"] in (85, 75, 65) and fitted.reencoded["bytes_before"] == len(image.data)
    assert (fitted.width, fitted.height) == (round(1200 * fitted.reencoded["scale"]),
                                             round(900 * fitted.reencoded["scale"]))
    with Image.open(io.BytesIO(fitted.data)) as stored:
        assert stored.size == (fitted.width, fitted.height)


def test_a_picture_that_cannot_fit_is_refused():
    image = media.decode_image(b64(photo(640, 400, "JPEG")), "image")
    with pytest.raises(PayloadTooLarge):
        media.fit_image(image, 1000)       # below MIN_SIDE before it could fit


def test_the_route_stores_the_fitted_picture_and_records_it(tmp_path, monkeypatch):
    from app import create_app
    from providers.local import LocalProvider

    monkeypatch.setattr(LocalProvider, "max_image_bytes", 300_000, raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "BACKUP_DIR": str(tmp_path / "bk"),
                      "SECRET_KEY": "t"})
    upload = photo(900, 700, "WEBP", quality=100)
    assert len(upload) > 300_000
    resp = app.test_client().post("/generate_image", json={"provider": "local", "image": b64(upload)})
    assert resp.status_code == 202, resp.get_json()
    (entry,) = app.extensions["task_store"].get(resp.get_json()["task_id"])["inputs"]
    assert entry["converted"] == "webp->jpeg" and entry["reencoded"]["bytes_before"] > 300_000
    stored = (tmp_path / "data" / entry["path"]).read_bytes()
    assert len(stored) <= 300_000 and entry["path"].endswith(".jpg")
    assert (entry["width"], entry["height"]) == Image.open(io.BytesIO(stored)).size


@pytest.mark.parametrize("data", [png_header_claiming(10_000, 10_000), png_header_claiming(9_000, 9_000),
                                  png_header_claiming(20_000, 20_000), jpeg_claiming(10_000, 10_000)])
def test_decode_refuses_decompression_bombs_from_the_header(data):
    started = time.perf_counter()
    error = decode_error(b64(data))
    assert (error.status, error.code) == (413, "image_too_many_pixels")
    assert "MP" in error.message
    assert time.perf_counter() - started < 0.5  # nothing was decoded


def test_decode_refuses_small_pictures_with_their_size():
    error = decode_error(b64(picture_bytes(200, 180)), field="image_tail")
    assert (error.status, error.code) == (422, "image_too_small")
    assert "tail frame is 200×180 px" in error.message
    assert "300 px" in error.message
    assert decode_error(b64(picture_bytes(800, 299))).code == "image_too_small"


def test_decode_uses_a_caller_label():
    with pytest.raises(ValidationError) as caught:
        media.decode_image(b64(picture_bytes(200, 180)), "image", label="first frame")
    assert caught.value.message.startswith("first frame is 200×180 px")


@pytest.mark.parametrize("size", [(1000, 300), (300, 751), (2000, 700)])
def test_decode_refuses_extreme_aspect_ratios(size):
    error = decode_error(b64(picture_bytes(*size)))
    assert (error.status, error.code) == (422, "image_bad_aspect_ratio")
    assert f"{size[0]}×{size[1]} px" in error.message


def one_pixel_wide_png(height):
    """A real, fully decodable 1×height greyscale PNG: about 95 KB for 50,000,000 rows."""
    rows = zlib.compressobj(9)
    body = b"".join(rows.compress(b"\0\0" * 1_000_000) for _ in range(height // 1_000_000)) + rows.flush()
    ihdr = struct.pack(">IIBBBBB", 1, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def test_a_thin_png_is_refused_from_its_header_before_decoding():
    data = b64(one_pixel_wide_png(50_000_000))
    started = time.perf_counter()
    error = decode_error(data)
    took = time.perf_counter() - started
    assert (error.status, error.code) == (422, "image_too_small")
    # Decoding those 50 M rows takes about 2.5 s; the header alone is a few milliseconds.
    assert took < 0.25, f"refusing a 1×50,000,000 px PNG took {took * 1000:.0f} ms (budget 50 ms, bound 250 ms)"


@pytest.mark.parametrize("size,code", [((1, 40_000_000), "image_too_small"), ((3000, 310), "image_bad_aspect_ratio")])
def test_shape_is_judged_without_decoding_a_single_pixel(size, code):
    # The header claims the size, the pixel data is garbage: only a decoder would notice, so a
    # shape error (not "damaged") proves the decoder was never reached.
    error = decode_error(b64(png_header_claiming(*size)))
    assert (error.status, error.code) == (422, code)


def jpeg_segments(data):
    """The markers of a JPEG's header segments, up to the start of scan."""
    markers, pos = [], 2
    while pos < len(data) and data[pos] == 0xFF and data[pos + 1] != 0xDA:
        marker = data[pos + 1]
        markers.append(marker)
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return markers


def test_jpeg_comment_exif_and_xmp_are_all_stripped():
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"                  # Make
    exif[0x8825] = {2: (48.0, 51.0, 24.0)}      # GPS latitude
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>secret-xmp</rdf:RDF></x:xmpmeta>'
    original = picture_bytes(640, 400, "JPEG", exif=exif.tobytes(), comment=b"secret-comment", xmp=xmp,
                             icc_profile=b"\0" * 128)
    assert {0xFE, 0xE1}.issubset(jpeg_segments(original))     # the upload really carries COM and APP1
    stored = media.decode_image(b64(original), "image").data
    markers = jpeg_segments(stored)
    assert 0xFE not in markers, "a COM segment survived"
    # APP2 stays: it holds the ICC profile (colour), not metadata (tests/test_media_strip.py).
    assert not [m for m in markers if 0xE1 <= m <= 0xEF and m != 0xE2], f"APPn survived: {[hex(m) for m in markers]}"
    for secret in (b"secret-comment", b"secret-xmp", b"SecretCam"):
        assert secret not in stored


def test_png_text_and_icc_chunks_are_stripped_and_transparency_kept():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret-text")
    info.add_itxt("XML:com.adobe.xmp", "secret-xmp")
    original = picture_bytes(640, 400, "PNG", colour=(10, 20, 30, 0), pnginfo=info)
    stored = media.decode_image(b64(original), "image").data
    assert b"secret-text" not in stored and b"secret-xmp" not in stored
    assert b"tEXt" not in stored and b"iTXt" not in stored
    assert Image.open(io.BytesIO(stored)).mode == "RGBA"


# ---- atomic writes


def test_save_bytes_atomic_creates_parents_and_leaves_no_part(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    media.save_bytes_atomic(b"first", target)
    media.save_bytes_atomic(b"second", target)
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_save_bytes_atomic_removes_part_on_failure(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(OSError):
        media.save_bytes_atomic(b"data", target)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


# ---- MP4 writer


def top_level_atoms(path):
    atoms, data = [], path.read_bytes()
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        atoms.append(kind.decode())
        offset += size if size else len(data)
    return atoms


def write_clip(path, width, height, frames=48, fps=24, first_colour=(0, 0, 255)):
    with media.Mp4Writer(path, width, height, fps) as writer:
        for index in range(frames):
            frame = np.full((height, width, 3), first_colour if index == 0 else (index * 5 % 255, 90, 30),
                            np.uint8)
            writer.write(frame)
    return path


def test_mp4_is_h264_yuv420p_faststart_with_right_frames(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 321, 241)  # odd sides are rounded down to even
    atoms = top_level_atoms(clip)
    assert atoms[:2] == ["ftyp", "moov"]
    assert atoms.index("moov") < atoms.index("mdat")
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (320, 240)
        assert stream.average_rate == 24
        assert sum(1 for _ in container.decode(stream)) == 48
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_mp4_writer_leaves_nothing_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError), media.Mp4Writer(tmp_path / "clip.mp4", 64, 64, 24) as writer:
        writer.write(np.zeros((64, 64, 3), np.uint8))
        raise RuntimeError("render broke")
    assert list(tmp_path.iterdir()) == []


# ---- thumbnails


def test_thumbnail_of_an_image_keeps_aspect(tmp_path):
    source = tmp_path / "picture.png"
    source.write_bytes(picture_bytes(800, 600))
    size = media.make_thumbnail(source, tmp_path / "thumbs" / "picture.jpg")
    assert size == {"width": 480, "height": 360}
    with Image.open(tmp_path / "thumbs" / "picture.jpg") as thumb:
        assert (thumb.format, thumb.size) == ("JPEG", (480, 360))


def test_thumbnail_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise
    source = tmp_path / "phone.jpg"
    source.write_bytes(picture_bytes(800, 600, "JPEG", exif=exif))
    assert media.make_thumbnail(source, tmp_path / "thumb.jpg") == {"width": 360, "height": 480}


def test_thumbnail_puts_transparency_on_white(tmp_path):
    source = tmp_path / "clear.png"
    source.write_bytes(picture_bytes(400, 400, colour=(0, 0, 0, 0)))
    media.make_thumbnail(source, tmp_path / "thumb.jpg", max_side=100)
    with Image.open(tmp_path / "thumb.jpg") as thumb:
        assert min(thumb.getpixel((50, 50))) > 240


def test_thumbnail_of_a_video_is_its_first_frame(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 640, 360, frames=12)
    size = media.make_thumbnail(clip, tmp_path / "poster.jpg")
    assert size == {"width": 480, "height": 270}
    with Image.open(tmp_path / "poster.jpg") as poster:
        red, green, blue = poster.getpixel((240, 135))
    assert red > 200 and green < 60 and blue < 60  # the first frame is pure red (BGR 0,0,255)


def test_video_thumbnail_falls_back_to_pyav(tmp_path, monkeypatch):
    clip = write_clip(tmp_path / "clip.mp4", 320, 240, frames=6)

    class Unreadable:
        def __init__(self, path):
            pass

        def isOpened(self):  # noqa: N802 - OpenCV's name
            return False

        def release(self):
            pass

    monkeypatch.setattr(media.cv2, "VideoCapture", Unreadable)
    assert media.make_thumbnail(clip, tmp_path / "poster.jpg", max_side=160) == {"width": 160, "height": 120}


def test_thumbnail_of_garbage_raises_value_error(tmp_path):
    source = tmp_path / "junk.jpg"
    source.write_bytes(b"not a picture")
    with pytest.raises(ValueError):
        media.make_thumbnail(source, tmp_path / "thumb.jpg")
    assert not (tmp_path / "thumb.jpg").exists()


# ---- probe_media and sha256_file


def test_probe_an_image(tmp_path):
    source = tmp_path / "picture.jpg"
    source.write_bytes(picture_bytes(640, 480, "JPEG"))
    info = media.probe_media(source)
    assert info == {"bytes": source.stat().st_size, "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                    "width": 640, "height": 480, "duration": None, "mime": "image/jpeg"}


def test_probe_a_video(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 320, 240, frames=48)
    info = media.probe_media(clip)
    assert (info["width"], info["height"], info["mime"]) == (320, 240, "video/mp4")
    assert info["duration"] == pytest.approx(2.0, abs=0.05)
    assert info["sha256"] == media.sha256_file(clip) == hashlib.sha256(clip.read_bytes()).hexdigest()


def test_probe_refuses_garbage_empty_missing_and_truncated_files(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 320, 240, frames=48)
    noisy = np.random.default_rng(2).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "PNG")
    cases = {"garbage.mp4": b"\x00\x01garbage" * 100, "empty.png": b"",
             "half.png": buffer.getvalue()[: len(buffer.getvalue()) // 2],
             "half.mp4": clip.read_bytes()[: clip.stat().st_size // 2],
             "header-only.mp4": clip.read_bytes()[:2000]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name in [*cases, "missing.png"]:
        with pytest.raises(ValueError):
            media.probe_media(tmp_path / name)


def test_sha256_file_streams_large_files(tmp_path):
    data = bytes(range(256)) * (5 * 4096 + 7)  # spans several 1 MiB chunks
    (tmp_path / "big.bin").write_bytes(data)
    assert media.sha256_file(tmp_path / "big.bin") == hashlib.sha256(data).hexdigest()
