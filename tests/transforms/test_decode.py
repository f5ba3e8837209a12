"""Decode stage: real photos, edge formats, synthetic modes, and every failure path with its reason."""
from __future__ import annotations

import io
import struct
import zlib

import apache_beam as beam
import imagehash
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image, ImageFile

from polycap.schemas import Reason, Reject, Sample
from polycap.schemas.config import DecodeConfig
from polycap.transforms.decode import (
    DecodeFailure,
    DecodeImages,
    decode_bytes,
    decode_sample,
    phash_hex,
    sniff_format,
)
from tests.conftest import jpeg_bytes, make_sample

CFG = DecodeConfig()


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def decoded(data: bytes, cfg: DecodeConfig = CFG):
    return decode_bytes(data, cfg)


def reason_of(data: bytes, cfg: DecodeConfig = CFG) -> tuple[Reason, str]:
    with pytest.raises(DecodeFailure) as e:
        decode_bytes(data, cfg)
    return e.value.reason, e.value.detail


def png_header(w: int, h: int) -> bytes:
    """A valid PNG that declares w x h but carries almost no pixel data (a bomb-sized header)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def stored(d) -> Image.Image:
    return Image.open(io.BytesIO(d.data))


# --- real photos -------------------------------------------------------------------------------

def test_real_jpeg_and_png(eval_dir):
    j = decoded((eval_dir / "photos/sklearn/china.jpg").read_bytes())
    assert (j.format, j.width, j.height, j.orig_format) == ("jpeg", 640, 427, "JPEG")
    assert stored(j).format == "JPEG" and stored(j).size == (640, 427) and stored(j).mode == "RGB"
    assert len(j.phash) == 16 and int(j.phash, 16) >= 0
    g = decoded((eval_dir / "photos/skimage/camera.png").read_bytes())   # 8-bit gray
    assert (g.orig_format, g.info["converted_from"], g.width, g.height) == ("PNG", "L", 512, 512)
    assert g.info["input_bytes"] == (eval_dir / "photos/skimage/camera.png").stat().st_size


def test_real_exif_rotated_photo(eval_dir):
    # rommel.jpg is stored 3072x2304 with EXIF orientation 6 (rotate 90° clockwise to view)
    d = decoded((eval_dir / "photos/imageio_test_images/rommel.jpg").read_bytes(), DecodeConfig(max_side=512))
    assert (d.orig_width, d.orig_height) == (3072, 2304)
    assert (d.width, d.height) == (384, 512)
    assert d.info["transposed"] == 6 and d.info["draft"]   # decoded at reduced scale by libjpeg


def test_edge_formats(eval_dir):
    edge = eval_dir / "photos" / "edge_formats"
    for name in ("chelsea.jxl", "Blackmagic.dng", "multipage_rgb.tif"):
        reason, detail = reason_of((edge / name).read_bytes())
        assert reason == Reason.UNSUPPORTED_FORMAT, (name, detail)
    assert "JPEG XL" in reason_of((edge / "chelsea.jxl").read_bytes())[1]
    gif = decoded((edge / "newtonscradle.gif").read_bytes())
    assert gif.info["frames"] == 36 and gif.info["converted_from"] == "P" and (gif.width, gif.height) == (200, 150)
    nef = decoded((edge / "Nikon_uncompressed.nef").read_bytes())   # Pillow reads the TIFF preview
    assert (nef.orig_format, nef.width, nef.height) == ("TIFF", 320, 218)


# --- synthetic modes ---------------------------------------------------------------------------

def test_cmyk_jpeg_to_rgb():
    d = decoded(encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"))   # pure red ink mix
    r, g, b = stored(d).getpixel((32, 24))
    assert d.info["converted_from"] == "CMYK" and r > 200 and g < 60 and b < 60


def test_16bit_gray_is_scaled_not_clipped():
    a = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
    d = decoded(encode(Image.fromarray(a), "PNG"), DecodeConfig(reencode=True, jpeg_quality=100))
    px = np.asarray(stored(d).convert("L"))[16]
    assert d.info["converted_from"].startswith("I;16")
    assert abs(int(px[128]) - 128) <= 3 and px[0] <= 3 and px[-1] >= 252   # mid-gray stays mid-gray


def test_float_tiff_to_rgb():
    a = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (16, 1))
    d = decoded(encode(Image.fromarray(a, "F"), "TIFF"), DecodeConfig(jpeg_quality=100))
    px = np.asarray(stored(d).convert("L"))[8]
    assert d.info["converted_from"] == "F" and px[0] <= 3 and px[-1] >= 250


def test_palette_with_transparency_and_rgba_composite_on_white():
    rgba = Image.new("RGBA", (40, 40), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 20, 40))       # left half fully transparent black
    d = decoded(encode(rgba, "PNG"))
    im = stored(d)
    assert d.info["converted_from"] == "RGBA"
    assert min(im.getpixel((5, 20))) > 240          # white, not black
    assert im.getpixel((30, 20))[2] > 200 and im.getpixel((30, 20))[0] < 40
    p = rgba.convert("P", palette=Image.Palette.ADAPTIVE)
    p.info["transparency"] = p.getpixel((5, 20))
    dp = decoded(encode(p, "PNG", transparency=p.getpixel((5, 20))))
    assert dp.info["converted_from"] == "P" and min(stored(dp).getpixel((5, 20))) > 240


@pytest.mark.parametrize("mode,color", [("LA", (90, 255)), ("1", 1), ("P", 3), ("L", 200)])
def test_other_modes_to_rgb(mode, color):
    d = decoded(encode(Image.new(mode, (32, 32), color), "PNG"))
    assert d.info["converted_from"] == mode and stored(d).mode == "RGB" and (d.width, d.height) == (32, 32)


def test_exif_orientation_applied():
    im = Image.new("RGB", (60, 30), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 10))            # red marker top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6                                  # view = stored rotated 90° clockwise
    d = decoded(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    out = stored(d)
    assert (d.width, d.height, d.info["transposed"]) == (30, 60, 6)
    assert out.getpixel((25, 4))[0] > 200             # marker now top-right
    assert d.orig_width == 60 and d.orig_height == 30


def test_multipage_tiff_takes_first_frame():
    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    d = decoded(buf.getvalue())
    assert d.info["frames"] == 3 and stored(d).getpixel((16, 12))[0] > 200


def test_resize_and_reencode_options():
    big = jpeg_bytes(800, 400)
    d = decoded(big, DecodeConfig(max_side=200))
    assert (d.width, d.height) == (200, 100) and d.info["resized"] == [200, 100]
    same = decoded(big, DecodeConfig(reencode=False))
    assert same.data == big and same.format == "jpeg" and same.info["reencoded"] is False
    png = encode(Image.new("L", (50, 50), 9), "PNG")   # needs conversion: re-encoded even if reencode=False
    assert decoded(png, DecodeConfig(reencode=False)).format == "jpeg"


def test_phash_hex_is_imagehash_phash(eval_dir):
    im = Image.open(eval_dir / "photos/skimage/rocket.jpg").convert("RGB")
    h = phash_hex(im)
    assert h == str(imagehash.phash(im)) and len(h) == 16
    assert decoded((eval_dir / "photos/skimage/rocket.jpg").read_bytes()).phash == h


# --- failures, each with its own reason ------------------------------------------------------

def test_failure_reasons_are_distinct():
    jpg = jpeg_bytes(256, 256)
    cases = {
        Reason.EMPTY_FILE: b"",
        Reason.NOT_AN_IMAGE: b"<!DOCTYPE html><html><body>404 not found</body></html>",
        Reason.CORRUPT_IMAGE: jpg[: len(jpg) // 2],
        Reason.DECOMPRESSION_BOMB: png_header(30000, 30000),
        Reason.UNSUPPORTED_FORMAT: b"\xff\x0a" + b"\x00" * 64,   # JPEG XL codestream, no decoder
    }
    for want, data in cases.items():
        assert reason_of(data)[0] == want, want
    assert "HTML" in reason_of(cases[Reason.NOT_AN_IMAGE])[1]
    assert "PDF" in reason_of(b"%PDF-1.7\n1 0 obj\n")[1]


def test_truncated_files_are_corrupt(eval_dir):
    data = (eval_dir / "photos/skimage/coffee.png").read_bytes()
    for cut in (len(data) // 2, 2000, 100):
        assert reason_of(data[:cut])[0] == Reason.CORRUPT_IMAGE, cut
    jpg = (eval_dir / "photos/sklearn/china.jpg").read_bytes()
    reason, detail = reason_of(jpg[: len(jpg) - 5000])
    assert reason == Reason.CORRUPT_IMAGE and "truncated" in detail


def test_bomb_limits_from_header():
    # below Pillow's error level but above its warning level: rejected, not just warned about
    reason, detail = reason_of(png_header(10000, 10000))
    assert reason == Reason.DECOMPRESSION_BOMB and "100000000" in detail
    reason, detail = reason_of(jpeg_bytes(100, 100), DecodeConfig(max_pixels=5000))
    assert reason == Reason.DECOMPRESSION_BOMB and "limit 5000" in detail


def test_refuses_when_truncated_loading_is_switched_on(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_bytes(jpeg_bytes(), CFG)


def test_sniff_format():
    assert sniff_format(jpeg_bytes()) == "JPEG"
    assert sniff_format(b"\x00\x00\x00\x1cftypavif") == "AVIF"
    assert sniff_format(b"hello") is None


def test_decode_sample_sets_fields():
    s = make_sample(jpeg_bytes(120, 90), uri="mem://a")
    out = decode_sample(s, CFG)
    assert isinstance(out, Sample) and out.key == s.key and out.hashes.sha256 == s.hashes.sha256
    assert (out.image.width, out.image.height, out.image.format) == (120, 90, "jpeg")
    assert out.hashes.phash and out.provenance["decode"]["input_bytes"] == len(s.image.bytes)
    bad = decode_sample(make_sample(b"", uri="mem://empty"), CFG)
    assert isinstance(bad, Reject) and bad.stage == "decode" and bad.source_uri == "mem://empty"


@pytest.mark.parametrize("threads", [1, 3])
def test_decode_images_ptransform(threads):
    good = [make_sample(jpeg_bytes(100 + i, 80), uri=f"mem://{i}") for i in range(3)]
    bad = [make_sample(b"", uri="mem://e"), make_sample(b"not an image at all", uri="mem://t"),
           make_sample(jpeg_bytes()[:300], uri="mem://c")]
    with TestPipeline() as p:
        kept, rejects = p | beam.Create(good + bad) | DecodeImages(DecodeConfig(threads=threads))
        assert_that(kept | "K" >> beam.Map(lambda s: (s.source.uri, s.image.width, s.image.format)),
                    equal_to([(f"mem://{i}", 100 + i, "jpeg") for i in range(3)]), label="kept")
        assert_that(rejects | "R" >> beam.Map(lambda r: (r.source_uri, str(r.reason), r.stage)),
                    equal_to([("mem://e", "empty_file", "decode"), ("mem://t", "not_an_image", "decode"),
                              ("mem://c", "corrupt_image", "decode")]), label="rejects")


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("max_side", [0, 256])
def test_jpeg_cut_short_with_new_end_marker_is_rejected(eval_dir, progressive, max_side):
    """libjpeg fills what it could not decode (grey for baseline, blur for progressive) and Pillow says
    nothing; the decoder's own warning makes it a reject, also when decoded at a reduced DCT scale."""
    photo = Image.open(eval_dir / "photos/sklearn/china.jpg").convert("RGB")
    data = encode(photo, "JPEG", quality=90, progressive=progressive)
    cfg = DecodeConfig(max_side=max_side)
    assert decoded(data, cfg).width > 0                       # the whole file decodes
    for frac in (0.5, 0.9):
        cut = data[: int(len(data) * frac)] + b"\xff\xd9"
        reason, detail = reason_of(cut, cfg)
        assert reason == Reason.CORRUPT_IMAGE and "truncated or damaged" in detail, (frac, detail)


def test_jpeg_with_stray_bytes_after_the_scan_is_kept():
    data = jpeg_bytes(64, 48)
    assert data.endswith(b"\xff\xd9")
    junk = data[:-2] + b"\x00\x11\x22" + b"\xff\xd9"        # stray bytes before EOI: every pixel still decodes
    d = decoded(junk, DecodeConfig(reencode=True))
    assert (d.width, d.height) == (64, 48)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(ref - np.asarray(stored(d).convert("RGB"))).mean() < 3


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_pixels_match_pillow(eval_dir, mode):
    im = Image.open(eval_dir / "photos/sklearn/china.jpg").convert(mode)
    data = encode(im, "JPEG", quality=85)
    d = decoded(data, DecodeConfig(reencode=False))
    assert (d.data == data) == (mode == "RGB")                 # a conforming RGB JPEG is kept byte for byte
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    got = np.asarray(Image.open(io.BytesIO(decoded(data, DecodeConfig(reencode=True, jpeg_quality=100)).data))
                     .convert("RGB"))
    assert np.abs(ref.astype(int) - got).mean() < 1.5          # q100 re-encode of the same pixels
