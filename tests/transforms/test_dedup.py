"""Dedup stage: the Beam graph against brute force + numpy centre rounds (with split keys), no chains, flat
colours as an exact class, the best copy kept, text cards of one layout kept apart, real near-dups,
determinism, and the inputs == kept + rejected invariant over decode -> filter -> dedup on the real photos."""
from __future__ import annotations

import io
import random
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image, ImageDraw, ImageFont, ImageOps

from polycap.schemas import Hashes, Reason, Sample
from polycap.schemas.config import DecodeConfig, DedupConfig, FilterConfig
from polycap.transforms.decode import DecodeImages, decode_sample
from polycap.transforms.dedup import DedupImages, rank
from polycap.transforms.filters import FilterSamples
from polycap.transforms.neardup import centre_rounds
from tests.conftest import jpeg_bytes, make_sample

FONTS = {"en": "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
         "ko": "/usr/share/fonts/truetype/nanum/NanumGothic.ttf"}


def flip_bits(h: int, k: int, rng: random.Random) -> int:
    for b in rng.sample(range(64), k):
        h ^= 1 << b
    return h


def hashed(i: int, h: int, area: int = 10_000) -> Sample:
    """A sample that carries only a content pHash (no thumbnail: the pHash decides) and a content area."""
    s = make_sample(f"sample {i}".encode(), uri=f"u{i:04d}")
    return replace(s, hashes=Hashes(sha256=s.hashes.sha256, content_phash=f"{h:016x}",
                                    content_box=[0, 0, area, 1], quality=90))


def run_dedup(samples: list[Sample], cfg: DedupConfig, check_kept, check_rejects) -> None:
    with TestPipeline() as p:
        kept, rejects = p | beam.Create(samples) | DedupImages(cfg)
        assert_that(kept | "KeptKeys" >> beam.Map(lambda s: s.key), check_kept, label="kept")
        assert_that(rejects, check_rejects, label="rejects")


@pytest.mark.parametrize("bound,one_key,buffer", [(2048, True, None), (2048, False, None), (16, True, None),
                                                   (2048, True, 3), (2048, False, 3), (16, True, 3)])
def test_beam_graph_drops_what_brute_force_pairs_and_centre_rounds_drop(bound, one_key, buffer, monkeypatch):
    """Candidate keys under each plan (max_key_items 2048: these ~300 items choose EXACT, all in one key
    group, or under EXACT's t + 1 keys with dedup.ONE_KEY_ITEMS 0; 16: MIH, with keys split into blocks
    around a 60-copy hot cluster), verified pairs and clustering rounds in Beam give exactly the numpy centre
    rounds over brute-force pairs; also when the per-bundle gathering of substring counts and key lists
    (dedup.BUFFER) emits after every item instead of once a bundle."""
    import polycap.transforms.dedup as dedup
    if not one_key:
        monkeypatch.setattr(dedup, "ONE_KEY_ITEMS", 0)
    if buffer is not None:
        monkeypatch.setattr(dedup, "BUFFER", buffer)
    rng = random.Random(1)
    hashes = []
    for _ in range(120):                      # unrelated hashes, some with planted near copies
        h = rng.getrandbits(64)
        hashes += [h] + [flip_bits(h, rng.randint(0, 10), rng) for _ in range(rng.choice([0, 0, 1, 3]))]
    hot = rng.getrandbits(64)
    hashes += [flip_bits(hot, rng.randint(0, 6), rng) for _ in range(60)]
    samples = [hashed(i, h, area=rng.randint(1, 9) * 1000) for i, h in enumerate(hashes)]
    order = sorted(range(len(samples)), key=lambda i: rank(samples[i]))     # node id = rank position
    pos = {i: n for n, i in enumerate(order)}
    t = 8
    better, worse = [], []
    for i, k in combinations(range(len(samples)), 2):
        if (hashes[i] ^ hashes[k]).bit_count() <= t:
            better.append(min(pos[i], pos[k]))
            worse.append(max(pos[i], pos[k]))
    centre, _ = centre_rounds(np.array(better), np.array(worse), len(samples), rounds=4)
    want_dropped = {samples[order[n]].key: samples[order[c]].key for n, c in enumerate(centre) if c not in (n, -1)}
    assert len(want_dropped) > 60

    def check_rejects(rows):
        got = {r.key: r.detail.split()[3] for r in rows}
        assert got == want_dropped
        assert all(r.reason == Reason.DUPLICATE for r in rows)

    run_dedup(samples, DedupConfig(max_hamming=t, max_key_items=bound), lambda keys: None, check_rejects)


def test_no_chain_merge_beyond_the_radius():
    """a ~ b and b ~ c within t, a and c 10 bits apart: b joins a, c stays (it is never dropped via b)."""
    a = 0x0F0F_F0F0_3C3C_C3C3
    b = a ^ 0b11111                           # 5 bits from a
    c = b ^ (0b11111 << 20)                   # 5 bits from b, 10 from a
    samples = [hashed(0, a, area=3000), hashed(1, b, area=2000), hashed(2, c, area=1000)]

    def check_rejects(rows):
        assert [(r.key, r.detail.split()[3]) for r in rows] == [(samples[1].key, samples[0].key)]

    run_dedup(samples, DedupConfig(max_hamming=8), equal_to([samples[0].key, samples[2].key]), check_rejects)


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def jpeg_of(im: Image.Image, q: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return buf.getvalue()


def decoded(data: bytes, uri: str, **kw) -> Sample:
    out = decode_sample(make_sample(data, uri=uri, **kw), DecodeConfig())
    assert isinstance(out, Sample)
    return out


def test_flat_colours_are_one_exact_class_each():
    red_big = decoded(png_bytes(Image.new("RGB", (400, 300), (200, 30, 30))), "red_big")
    red_small = decoded(jpeg_bytes(120, 90, (201, 31, 29)), "red_small")
    blue = decoded(png_bytes(Image.new("RGB", (400, 300), (30, 30, 200))), "blue")
    assert red_big.hashes.solid == red_small.hashes.solid != blue.hashes.solid

    def check_rejects(rows):
        assert [(r.source_uri, r.detail.split()[3]) for r in rows] == [("red_small", red_big.key)]
        assert "flat colour" in rows[0].detail

    run_dedup([red_big, red_small, blue], DedupConfig(), equal_to([red_big.key, blue.key]), check_rejects)


def card(text: str, lang: str = "en", size: tuple[int, int] = (800, 450)) -> Image.Image:
    """One layout for every card: plain background, the text in two lines at the same place."""
    im = Image.new("RGB", size, (246, 244, 238))
    d = ImageDraw.Draw(im)
    f = ImageFont.truetype(FONTS[lang], 34)
    words = text.split()
    for n, line in enumerate((" ".join(words[:len(words) // 2]), " ".join(words[len(words) // 2:]))):
        d.text((60, 170 + 60 * n), line, fill=(30, 30, 40), font=f)
    return im


def test_best_copy_is_kept_and_border_crop_recompress_variants_merge(eval_dir):
    """A lossless original beats a framed copy (same content area, an added border), a q30 recompression
    (lower quality, though it carries a caption) and a 5 % crop (smaller); all three name it as kept."""
    im = Image.open(eval_dir / "photos/skimage/coffee.png").convert("RGB")      # 600x400
    orig = decoded(png_bytes(im), "z_original.png")
    framed = decoded(jpeg_of(ImageOps.expand(im, 24, fill=(0, 0, 0)), 95), "a_framed.jpg")
    q30 = decoded(jpeg_of(im, 30), "b_q30.jpg", orig_caption="a caption")
    cw, ch = round(600 * 0.975), round(400 * 0.975)
    crop = decoded(jpeg_of(im.crop((8, 4, 8 + cw, 4 + ch)), 92), "c_crop5.jpg")
    assert framed.hashes.bordered and not orig.hashes.bordered
    assert framed.hashes.content_box == [24, 24, 624, 424] and orig.hashes.content_box == [0, 0, 600, 400]
    assert orig.hashes.quality == 100 and q30.hashes.quality == 30

    def check_rejects(rows):
        assert sorted(r.source_uri for r in rows) == ["a_framed.jpg", "b_q30.jpg", "c_crop5.jpg"]
        for r in rows:
            assert r.detail.startswith(f"near duplicate of {orig.key} (pHash Hamming"), r.detail
            assert "detail blocks correlating" in r.detail and "kept z_original.png" in r.detail

    run_dedup([framed, q30, crop, orig], DedupConfig(), equal_to([orig.key]), check_rejects)


def test_distinct_text_cards_of_one_layout_are_not_merged():
    texts = [("Welsh AMs worried about looking like muppets", "en"),
             ("Plans to change the name of the assembly", "en"),
             ("The assembly will change its name soon", "en"),
             ("Members of the assembly are worried", "en"),
             ("웨일스 의회 의원들은 바보처럼 보일까 걱정한다", "ko"),
             ("의회의 이름을 바꾸려는 계획이 있다", "ko")]
    samples = [decoded(png_bytes(card(t, lang)), f"card{i}") for i, (t, lang) in enumerate(texts)]
    run_dedup(samples, DedupConfig(), equal_to([s.key for s in samples]), equal_to([]))


def test_watermarked_card_and_cropped_texture_merge_distinct_pages_stay():
    """The default radius and pixel check through the Beam graph: a watermarked text card and a 5 % crop
    of a textured photo are dropped for their originals; pages of one template are all kept."""
    from tests.transforms.test_neardup import centred_card, crop5, page, photo_like, watermarked

    card_im = centred_card(["Welsh AMs worried about", "looking like muppets", "in the assembly"])
    texture = photo_like(3)
    orig_card, orig_tex = decoded(png_bytes(card_im), "card.png"), decoded(png_bytes(texture), "texture.png")
    marked = decoded(jpeg_of(watermarked(card_im), 85), "card_watermark.jpg")
    cropped = decoded(jpeg_of(crop5(texture, 1.0, 0.0), 90), "texture_crop5.jpg")
    pages = [decoded(png_bytes(page(seed)), f"page{seed}.png") for seed in range(1, 6)]

    def check_rejects(rows):
        got = sorted((r.source_uri, r.detail.split()[3]) for r in rows)
        assert got == sorted([("card_watermark.jpg", orig_card.key), ("texture_crop5.jpg", orig_tex.key)]), got

    run_dedup([marked, cropped, orig_card, orig_tex, *pages], DedupConfig(),
              equal_to([orig_card.key, orig_tex.key, *(p.key for p in pages)]), check_rejects)


def near_dup_samples(eval_dir: Path) -> list[Sample]:
    files = ["photos/sklearn/china.jpg", "neardup/generated/china/resize_50.jpg",
             "neardup/generated/china/watermark_text.jpg", "neardup/generated/china/jpeg_q30.jpg",
             "photos/skimage/coffee.png", "photos/skimage/rocket.jpg", "photos/matplotlib/grace_hopper.jpg"]
    raw = [make_sample((eval_dir / f).read_bytes(), uri=f) for f in files]
    raw.append(make_sample((eval_dir / files[4]).read_bytes(), uri="copy/of/coffee.png"))   # exact copy
    out = [decode_sample(s, DecodeConfig()) for s in raw]
    assert all(isinstance(s, Sample) for s in out)
    return out


def test_dedup_images_on_real_near_duplicates(eval_dir):
    samples = near_dup_samples(eval_dir)
    china_keys = {s.key for s in samples if "china" in s.source.uri}
    # china.jpg (640x427) and its q30/watermark copies have the same content area: the highest quality wins
    kept_china = next(s.key for s in samples if s.source.uri == "photos/sklearn/china.jpg")
    with TestPipeline() as p:
        kept, rejects = p | beam.Create(samples) | DedupImages(DedupConfig())
        assert_that(kept | "K" >> beam.Map(lambda s: s.source.uri), equal_to(sorted(
            [s.source.uri for s in samples if s.key == kept_china]
            + ["copy/of/coffee.png", "photos/skimage/rocket.jpg", "photos/matplotlib/grace_hopper.jpg"])),
            label="kept")

        def check(rows):
            by_uri = {r.source_uri: r for r in rows}
            assert set(by_uri) == {s.source.uri for s in samples if s.key in china_keys and s.key != kept_china} | {
                "photos/skimage/coffee.png"}
            for r in rows:
                assert r.reason == Reason.DUPLICATE and r.stage == "dedup"
            assert "exact duplicate of" in by_uri["photos/skimage/coffee.png"].detail
            assert "kept copy/of/coffee.png" in by_uri["photos/skimage/coffee.png"].detail
            for uri, r in by_uri.items():
                if "china" in uri:
                    assert f"near duplicate of {kept_china}" in r.detail and "pHash Hamming" in r.detail
        assert_that(rejects, check, label="rejects")


def test_near_and_exact_switches():
    a = make_sample(jpeg_bytes(120, 90, (10, 200, 30)), uri="a")
    b = make_sample(jpeg_bytes(120, 90, (10, 200, 30)), uri="b")       # same bytes as a
    c = make_sample(jpeg_bytes(60, 45, (10, 200, 30)), uri="c")        # same picture, smaller
    samples = [decode_sample(s, DecodeConfig()) for s in (a, b, c)]
    with TestPipeline() as p:
        kept, _ = p | beam.Create(samples) | DedupImages(DedupConfig(near=False))
        assert_that(kept | beam.Map(lambda s: s.source.uri), equal_to(["a", "c"]))
    with TestPipeline() as p:
        kept, _ = p | beam.Create(samples) | DedupImages(DedupConfig(exact=False, near=False))
        assert_that(kept | beam.Map(lambda s: s.source.uri), equal_to(["a", "b", "c"]))
    with TestPipeline() as p:
        kept, rej = p | beam.Create(samples) | DedupImages(DedupConfig())
        assert_that(kept | beam.Map(lambda s: s.source.uri), equal_to(["a"]))
        assert_that(rej | "R" >> beam.Map(lambda r: r.source_uri), equal_to(["b", "c"]), label="rej")


def read_input(item: tuple[str, str]) -> Sample:
    path, uri = item
    return make_sample(Path(path).read_bytes(), uri=uri)


def run_chain_to_text(inputs: list[tuple[str, str]], out: Path, args: list[str]) -> list[str]:
    """(path, uri) -> read -> decode -> filter -> dedup; every kept sample or reject as one sorted line.
    Files are read inside the pipeline (beam.Create of ~50 MB of samples would pickle + bz2 them)."""
    with beam.Pipeline(options=PipelineOptions(args)) as p:
        s = p | beam.Create(inputs) | "Read" >> beam.Map(read_input)
        s, r1 = s | "Decode" >> DecodeImages(DecodeConfig())
        s, r2 = s | "Filter" >> FilterSamples(FilterConfig())
        s, r3 = s | "Dedup" >> DedupImages(DedupConfig())
        kept = s | "KeptLine" >> beam.Map(lambda x: f"kept\t{x.key}\t{x.source.uri}\t{x.hashes.phash}")
        rej = ((r1, r2, r3) | beam.Flatten()
               | "RejLine" >> beam.Map(lambda r: f"reject\t{r.key}\t{r.source_uri}\t{r.stage}\t{r.reason}\t{r.detail}"))
        (kept, rej) | "All" >> beam.Flatten() | beam.io.WriteToText(str(out), shard_name_template="")
    return sorted(out.read_text().splitlines())


def photo_inputs(eval_dir: Path) -> list[tuple[str, str]]:
    paths = sorted(p for p in (eval_dir / "photos").rglob("*") if p.is_file())
    return [(str(p), str(p.relative_to(eval_dir))) for p in paths]


def test_chain_on_real_photos_conserves_inputs(eval_dir, tmp_path):
    samples = photo_inputs(eval_dir)
    samples.append(next(x for x in samples if x[1] == "photos/skimage/coffee.png"))   # listed twice
    lines = run_chain_to_text(samples, tmp_path / "a.txt", [])
    assert len(lines) == len(samples)                   # inputs == kept + rejected
    kept = [ln for ln in lines if ln.startswith("kept")]
    rejected = [ln.split("\t") for ln in lines if ln.startswith("reject")]
    assert len(kept) + len(rejected) == len(samples) and kept
    reasons = {r[2]: r[4] for r in rejected}
    for name, want in {"chelsea.jxl": "unsupported_format", "Blackmagic.dng": "unsupported_format",
                       "multipage_rgb.tif": "unsupported_format", "MANIFEST.md": "not_an_image",
                       "README.txt": "not_an_image"}.items():
        assert [v for k, v in reasons.items() if k.endswith(name)] == [want], name
    for name in ("newtonscradle.gif", "Nikon_uncompressed.nef"):
        assert any(ln.split("\t")[2].endswith(name) for ln in kept), name
    dups = [r for r in rejected if r[4] == "duplicate"]
    assert [r[2] for r in dups if "exact duplicate" in r[5]] == ["photos/skimage/coffee.png"]


@pytest.mark.slow
def test_chain_same_across_input_order_and_multi_processing(eval_dir, tmp_path):
    samples = near_dup_samples(eval_dir)
    raw = [(str(eval_dir / ("photos/skimage/coffee.png" if s.source.uri.startswith("copy") else s.source.uri)),
            s.source.uri) for s in samples]
    raw += [(str(eval_dir / f), f) for f in ("photos/edge_formats/chelsea.jxl", "photos/sklearn/README.txt")]
    one = run_chain_to_text(raw, tmp_path / "one.txt", [])
    rng = random.Random(7)
    shuffled = rng.sample(raw, len(raw))
    assert run_chain_to_text(shuffled, tmp_path / "two.txt", []) == one
    multi = run_chain_to_text(raw[::-1], tmp_path / "three.txt",
                              ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert multi == one and sum(ln.startswith("kept") for ln in one) == 4


def test_an_exception_in_the_decision_is_an_internal_error_reject_per_sample(monkeypatch):
    import polycap.transforms.dedup as dedup

    a = make_sample(jpeg_bytes(120, 90, (10, 200, 30)), uri="a")
    b = make_sample(jpeg_bytes(120, 90, (10, 200, 30)), uri="b")       # same bytes as a: one group
    c = make_sample(jpeg_bytes(90, 120, (200, 10, 30)), uri="c")
    samples = [decode_sample(s, DecodeConfig()) for s in (a, b, c)]
    real = dedup.decide

    def broken(key, group, drops, cfg):
        if key == samples[0].key:
            raise RuntimeError("decision bug")
        return real(key, group, drops, cfg)

    monkeypatch.setattr(dedup, "decide", broken)
    with TestPipeline() as p:
        kept, rejects = p | beam.Create(samples) | DedupImages(DedupConfig(near=False))
        assert_that(kept | beam.Map(lambda s: s.source.uri), equal_to(["c"]), label="kept")
        assert_that(rejects | "R" >> beam.Map(lambda r: (r.source_uri, r.key, r.stage, str(r.reason),
                                                         "decision bug" in r.detail)),
                    equal_to([(u, samples[0].key, "dedup", "internal_error", True) for u in ("a", "b")]),
                    label="rejects")
        # inputs == kept + rejected: the failed group's two samples are both accounted for
        total = ((kept, rejects) | "Both" >> beam.Flatten() | beam.combiners.Count.Globally())
        assert_that(total, equal_to([len(samples)]), label="conserved")


def _copy(w: int, h: int, box: list[int], quality: int, i: int) -> Sample:
    s = make_sample(f"copy {i}".encode(), uri=f"c{i}")
    return replace(s, image=replace(s.image, orig_width=w, orig_height=h),
                   hashes=Hashes(sha256=s.hashes.sha256, content_box=box, quality=quality))


def test_rank_prefers_the_original_copy():
    """The copies bench/neardup_eval.py saw kept instead of their originals (boxes as measured there)."""
    card = _copy(800, 450, [74, 158, 726, 288], 100, 0)                 # lossless card, text box peeled
    framed = _copy(854, 504, [100, 186, 754, 316], 90, 1)               # framed q90 copy, box peeled 2 px wider
    letterboxed = _copy(800, 800, [80, 330, 720, 466], 90, 2)
    card_crop = _copy(780, 439, [56, 156, 708, 285], 90, 3)
    card_small = _copy(400, 225, [37, 79, 363, 144], 100, 4)            # half size, lossless: still worse
    for worse in (framed, letterboxed, card_crop, card_small):
        assert rank(card) < rank(worse)
    photo = _copy(512, 600, [0, 0, 512, 600], 80, 5)                    # a q80 JPEG original
    crop = _copy(499, 585, [0, 0, 499, 585], 90, 6)                     # its 5 % crop at q90
    border = _copy(572, 660, [30, 30, 542, 630], 90, 7)
    assert rank(photo) < rank(crop) and rank(photo) < rank(border)
    strip = _copy(321, 421, [0, 29, 321, 421], 75, 8)                   # a flat strip peeled off
    q30 = _copy(321, 421, [0, 7, 321, 421], 30, 9)                      # at q30 the strip is no longer flat
    assert rank(strip) < rank(q30)
    big_q30 = _copy(2048, 1536, [0, 0, 2048, 1536], 30, 10)             # but 4x the pixels win over quality
    assert rank(big_q30) < rank(_copy(1024, 768, [0, 0, 1024, 768], 95, 11))
