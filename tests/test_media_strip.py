"""Pictures reach the provider as the person sent them: metadata stripped from the bytes, pixels untouched.

media.strip_jpeg / strip_png walk a file's segments or chunks and drop what is metadata (EXIF,
XMP, IPTC, comments, text, times, trailers) while keeping what decides the colours (ICC, Adobe,
JFIF; iCCP, sRGB, gAMA, cHRM, sBIT, tRNS). The decoded pixels must be byte-identical to the
upload's; a JPEG whose EXIF orientation is not 1 is the one exception (re-encoded upright and
recorded); a malformed file is a 400 naming the field.
"""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, PngImagePlugin

import media
from errors import ValidationError
from tests.conftest import b64, picture


def srgb_icc():
    from PIL import ImageCms
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def pixels(data):
    # The JPEG reader itself: Image.open would take a fake MPF segment for a multi-picture file.
    opener = JpegImagePlugin.JpegImageFile if data[:2] == b"\xff\xd8" else Image.open
    with opener(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB"))


def jpeg_markers(data):
    """The markers of a JPEG's segments, in order, as the walker sees them (scans skipped)."""
    markers, pos = [], 2
    while pos < len(data):
        marker = data[pos + 1]
        markers.append(marker)
        if marker == 0xD9:
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        pos += 2 + length
        if marker == 0xDA:
            pos = media._JPEG_SCAN_END.search(data, pos).end() - 2
    return markers


def png_chunks(data):
    kinds, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        kinds.append(kind.decode())
        pos += 12 + length
    return kinds


def segment(marker, body):
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_segments(jpeg, *segments):
    """A JPEG with extra segments right after SOI (as cameras write APP1 there)."""
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def with_chunks(png, *chunks):
    """A PNG with extra chunks right after IHDR."""
    ihdr_end = 8 + 12 + 13
    return png[:ihdr_end] + b"".join(chunks) + png[ihdr_end:]


def refused(data, field="image"):
    with pytest.raises(ValidationError) as caught:
        media.check_image_bytes(data, field)
    return caught.value


# ---- JPEG

def test_jpeg_metadata_goes_and_the_colour_segments_and_the_pixels_stay():
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    exif[0x0112] = 1                                     # upright: nothing to re-encode
    out = io.BytesIO()
    Image.open(io.BytesIO(picture(640, 400))).convert("RGB").save(
        out, "JPEG", quality=90, exif=exif.tobytes(), icc_profile=srgb_icc(), comment=b"secret-comment")
    original = with_segments(out.getvalue(),
                             segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>secret-xmp</x:xmpmeta>"),
                             segment(0xED, b"Photoshop 3.0\08BIM secret-iptc"),
                             segment(0xE2, b"MPF\0secret-second-picture"),
                             segment(0xEE, b"Adobe\0\x64\0\0\0\0\x01"))
    assert {0xE1, 0xED, 0xFE}.issubset(jpeg_markers(original))
    image = media.check_image_bytes(original, "image")
    markers = jpeg_markers(image.data)
    assert not {0xE1, 0xED, 0xFE} & set(markers)
    assert markers.count(0xE2) == 1 and 0xEE in markers and 0xE0 in markers         # ICC, Adobe, JFIF
    for secret in (b"SecretCam", b"secret-comment", b"secret-xmp", b"secret-iptc", b"secret-second-picture"):
        assert secret not in image.data
    assert b"ICC_PROFILE\0" in image.data
    assert np.array_equal(pixels(image.data), pixels(original))
    assert image.rotated is None and image.converted is None and "rotated" not in image.record()
    # Lossless: what is left is the original's bytes, the scan data untouched.
    scan = original.index(b"\xff\xda")
    assert image.data.endswith(original[scan:])


def test_a_clean_jpeg_is_the_very_same_bytes():
    raw = picture(640, 400, "JPEG")
    assert media.strip_jpeg(raw) is raw
    assert media.check_image_bytes(raw, "image").data == raw


def test_bytes_after_the_end_of_a_jpeg_are_dropped():
    raw = picture(640, 400, "JPEG")
    image = media.check_image_bytes(raw + b"\0\0\0\x18ftypmp42 motion photo video", "image")
    assert image.data == raw


def test_a_comment_between_the_scans_of_a_progressive_jpeg_goes():
    out = io.BytesIO()
    Image.open(io.BytesIO(picture(640, 400))).convert("RGB").save(out, "JPEG", progressive=True)
    raw = out.getvalue()
    second_scan = raw.index(b"\xff\xda", raw.index(b"\xff\xda") + 2)
    original = raw[:second_scan] + segment(0xFE, b"secret-between-scans") + raw[second_scan:]
    image = media.check_image_bytes(original, "image")
    assert b"secret-between-scans" not in image.data and image.data == raw
    assert np.array_equal(pixels(image.data), pixels(raw))


@pytest.mark.parametrize(("orientation", "size"), [(3, (640, 400)), (6, (400, 640)), (8, (400, 640))])
def test_a_jpeg_turned_by_exif_is_re_encoded_upright_and_says_so(orientation, size):
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "SecretCam"
    out = io.BytesIO()
    Image.open(io.BytesIO(picture(640, 400))).convert("RGB").save(out, "JPEG", exif=exif.tobytes(),
                                                                   icc_profile=srgb_icc())
    image = media.check_image_bytes(out.getvalue(), "image")
    assert (image.width, image.height) == size and image.rotated == orientation
    assert image.record()["rotated"] == orientation
    assert b"SecretCam" not in image.data and 0xE1 not in jpeg_markers(image.data)
    assert b"ICC_PROFILE\0" in image.data                 # the colour profile survives the re-encode
    with Image.open(io.BytesIO(image.data)) as stored:
        assert stored.size == size and stored.getexif().get(0x0112, 1) == 1


def test_the_route_records_the_rotation_on_the_task_input(client, app):
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.open(io.BytesIO(picture(640, 400))).convert("RGB").save(out, "JPEG", exif=exif.tobytes())
    resp = client.post("/generate", json={"image": b64(out.getvalue()), "prompt": "turn"})
    assert resp.status_code == 202, resp.get_json()
    entry = app.extensions["task_store"].get(resp.get_json()["task_id"])["inputs"][0]
    assert (entry["rotated"], entry["width"], entry["height"]) == (6, 400, 640)


def truncated_scan(raw):
    return raw[: len(raw) - 200]


@pytest.mark.parametrize("broken", [
    lambda raw: raw[:2] + segment(0xE1, b"Exif\0\0")[:3],                       # cut in a length
    lambda raw: raw[:2] + b"\xff\xe1\xff\xff" + raw[2:],                         # a length past the end
    lambda raw: raw[:2] + b"\xff\xe1\x00\x01" + raw[2:],                         # a length below 2
    lambda raw: raw[:20] + b"\x12\x34" + raw[20:],                                # no marker after JFIF
    truncated_scan,                                                               # no EOI
    lambda raw: b"\xff\xd8" + raw[raw.index(b"\xff\xda"):],                       # a scan with no frame
], ids=["cut-length", "long-segment", "short-length", "no-marker", "no-eoi", "no-frame"])
def test_a_malformed_jpeg_is_refused_with_the_field_named(broken):
    error = refused(broken(picture(640, 400, "JPEG")), field="image_tail")
    assert (error.status, error.code, error.field) == (400, "invalid_image", "image_tail")
    assert "damaged JPEG" in error.message


# ---- PNG

def test_png_text_exif_and_time_go_and_colour_and_transparency_stay():
    rgba = np.dstack([pixels(picture(640, 400)), np.full((400, 640), 128, np.uint8)])
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret-text")
    info.add_text("Author", "secret-ztxt", zip=True)
    info.add_itxt("XML:com.adobe.xmp", "secret-xmp")
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG", pnginfo=info, icc_profile=srgb_icc(), dpi=(300, 300))
    exif = Image.Exif()
    exif[0x010F] = "secret-exif"
    original = with_chunks(out.getvalue(), chunk(b"eXIf", exif.tobytes()[6:]),
                           chunk(b"tIME", b"\x07\xea\x0c\x01\0\0\0"),
                           chunk(b"gAMA", struct.pack(">I", 45455)), chunk(b"sBIT", b"\x08\x08\x08\x08"))
    assert {"tEXt", "zTXt", "iTXt", "eXIf", "tIME", "pHYs"}.issubset(png_chunks(original))
    image = media.check_image_bytes(original, "image")
    kinds = png_chunks(image.data)
    assert not {"tEXt", "zTXt", "iTXt", "eXIf", "tIME", "pHYs"} & set(kinds)
    assert {"iCCP", "gAMA", "sBIT"}.issubset(kinds) and kinds[0] == "IHDR" and kinds[-1] == "IEND"
    for secret in (b"secret-text", b"secret-xmp", b"secret-exif"):
        assert secret not in image.data
    assert np.array_equal(pixels(image.data), pixels(original))


def test_a_palette_png_keeps_its_transparency():
    img = Image.open(io.BytesIO(picture(640, 400))).convert("P", palette=Image.Palette.ADAPTIVE)
    img.info["transparency"] = 0
    out = io.BytesIO()
    img.save(out, "PNG", transparency=0)
    original = with_chunks(out.getvalue(), chunk(b"tEXt", b"Comment\0secret"))
    image = media.check_image_bytes(original, "image")
    assert "tRNS" in png_chunks(image.data) and b"secret" not in image.data
    assert np.array_equal(pixels(image.data), pixels(original))


def test_a_clean_png_is_the_very_same_bytes():
    raw = picture(640, 400)
    assert media.strip_png(raw) is raw


def _bad_crc(raw):
    return raw[:30] + bytes([raw[30] ^ 1]) + raw[31:]       # a byte of IHDR's data flipped


@pytest.mark.parametrize("broken", [
    _bad_crc,
    lambda raw: raw[: len(raw) - 6],                                              # cut in IEND
    lambda raw: raw[:8] + chunk(b"tEXt", b"a\0b") + raw[8:],                      # IHDR not first
    lambda raw: with_chunks(raw, chunk(b"ZZZZ", b"critical")),                    # unknown critical chunk
    lambda raw: with_chunks(raw, struct.pack(">I", 2**31) + b"tEXt"),             # a length past the end
    lambda raw: with_chunks(raw, chunk(b"t3Xt", b"x")),                          # not a chunk name
    lambda raw: raw[:33] + raw[-12:],                                             # no IDAT
], ids=["crc", "truncated", "ihdr-not-first", "unknown-critical", "long-chunk", "bad-name", "no-idat"])
def test_a_malformed_png_is_refused_with_the_field_named(broken):
    error = refused(broken(picture(640, 400)))
    assert (error.status, error.code, error.field) == (400, "invalid_image", "image")
    assert "damaged PNG" in error.message


def test_webp_is_still_converted():
    out = io.BytesIO()
    Image.open(io.BytesIO(picture(640, 400))).save(out, "WEBP")
    image = media.check_image_bytes(out.getvalue(), "image")
    assert (image.format, image.converted) == ("jpeg", "webp->jpeg")
