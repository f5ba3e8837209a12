"""Dedup stage: LSH banding against brute force, kept-image choice, real near-dups, determinism, and the
inputs == kept + rejected invariant over decode -> filter -> dedup on the real photos."""
from __future__ import annotations

import random
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from polycap.schemas import Reason, Sample
from polycap.schemas.config import DecodeConfig, DedupConfig, FilterConfig
from polycap.transforms.decode import DecodeImages, decode_sample
from polycap.transforms.dedup import (
    DedupImages,
    Member,
    UnionFind,
    band_keys,
    band_widths,
    bucket_edges,
    choose_kept,
    components,
    hamming,
    n_bands,
)
from polycap.transforms.filters import FilterSamples
from tests.conftest import jpeg_bytes, make_sample


def flip_bits(h: int, k: int, rng: random.Random) -> int:
    for b in rng.sample(range(64), k):
        h ^= 1 << b
    return h


def lsh_groups(members: list[Member], cfg: DedupConfig) -> dict[str, tuple[str, str, int]]:
    """The Beam graph of DedupImages, run with plain dicts: bands -> buckets -> edges -> components."""
    buckets = defaultdict(list)
    for m in members:
        for bk in band_keys(m.phash, band_widths(n_bands(cfg))):
            buckets[bk].append(m)
    edges = [e for (band, _), ms in sorted(buckets.items()) for e in bucket_edges(band, ms, cfg)]
    return dict(components(edges))


def brute_force(members: list[Member], t: int) -> dict[str, tuple[str, str, int]]:
    uf = UnionFind()
    for a, b in combinations(members, 2):
        if hamming(a.phash, b.phash) <= t:
            uf.union(a.key, b.key)
    comp = defaultdict(list)
    for m in members:
        comp[uf.find(m.key)].append(m)
    out = {}
    for ms in comp.values():
        kept = choose_kept(ms)
        out.update({m.key: (kept.key, kept.uri, hamming(m.phash, kept.phash)) for m in ms if m is not kept})
    return out


def test_bands_cover_64_bits_and_pigeonhole_holds():
    rng = random.Random(0)
    for t in (0, 3, 8, 12):
        widths = band_widths(t + 1)
        assert sum(widths) == 64 and max(widths) - min(widths) <= 1
        for _ in range(300):
            a = rng.getrandbits(64)
            b = flip_bits(a, rng.randint(0, t), rng)
            assert any(x == y for x, y in zip(band_keys(a, widths), band_keys(b, widths)))


def test_lsh_finds_exactly_the_brute_force_components():
    rng = random.Random(1)
    members = []
    for i in range(150):                      # 150 unrelated hashes, some with planted near copies
        h = rng.getrandbits(64)
        members.append(Member(f"k{i:04d}", h, rng.randint(1, 9) * 100, f"u{i}"))
        for j in range(rng.choice([0, 0, 1, 3])):
            members.append(Member(f"k{i:04d}_{j}", flip_bits(h, rng.randint(0, 10), rng), rng.randint(1, 9) * 100,
                                  f"u{i}_{j}"))
    for t in (4, 8):
        cfg = DedupConfig(max_hamming=t)
        got = lsh_groups(members, cfg)
        assert got == brute_force(members, t)
        assert got                            # planted pairs within t exist, so something merged


def test_kept_is_largest_area_then_smallest_key():
    a, b, c = Member("b", 1, 100, "u1"), Member("a", 1, 100, "u2"), Member("c", 1, 50, "u3")
    assert choose_kept([a, b, c]).key == "a"
    assert choose_kept([c, Member("z", 3, 900, "u")]).key == "z"


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
    # china.jpg (640x427) and its q30/watermark copies have the same area: smallest key wins
    kept_china = min(s.key for s in samples if "china" in s.source.uri and s.image.width == 640)
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
    samples.append(samples[3])                          # the same input listed twice
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
    assert sum(r[4] == "duplicate" for r in rejected) >= 1   # the repeated input at least


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
