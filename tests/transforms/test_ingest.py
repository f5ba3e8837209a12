"""Ingest sources dir / webdataset / llava: pure helpers, then ReadSource on real eval data and crafted bad inputs."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from polycap.schemas import Reason, Reject, Sample
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms.ingest import (
    IMAGE_TOKEN,
    ReadSource,
    check_member,
    iter_json_records,
    merge_conversations,
    normalize_turns,
    parse_llava_record,
    read_dir_group,
    split_sidecars,
    wds_split,
)
from polycap.transforms.input_files import Refused, list_inputs
from tests.hostile.helpers import read_source

CFG = IngestConfig()


def key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def run(src: SourceConfig) -> tuple[list[Sample], list[Reject]]:
    """Run ReadSource and collect both outputs."""
    return read_source(src, CFG)


# ---- pure helpers ----

def test_list_inputs_folder_glob_and_hidden(tmp_path):
    root = tmp_path / ".me" / "data"          # a hidden folder above the root does not hide anything
    (root / ".cache").mkdir(parents=True)
    (root / ".cache/a.jpg").write_bytes(b"x")
    (root / "sub").mkdir()
    for name in ("sub/b.jpg", "c.png", ".DS_Store"):
        (root / name).write_bytes(b"x")
    got = list_inputs(str(root), None, CFG)
    assert sorted(x for x in got if isinstance(x, str)) == [str(root / "c.png"), str(root / "sub/b.jpg")]
    assert sorted((os.path.basename(r.path), r.reason) for r in got if isinstance(r, Refused)) == [
        (".DS_Store", Reason.HIDDEN_FILE), (".cache", Reason.HIDDEN_FILE)]
    assert list_inputs(str(root / "*.png"), None, CFG) == [str(root / "c.png")]
    assert list_inputs(str(root), (".jpg",), CFG) == [str(root / "sub/b.jpg")]   # other kinds: by extension
    assert list_inputs(str(root / "nope"), None, CFG) == []


def test_split_sidecars_img2dataset_layout():
    inputs, txt, js = split_sidecars(["d/0001.txt", "d/0001.jpg", "d/0001.json", "d/0001.png"])
    assert inputs == ["d/0001.jpg", "d/0001.png"] and txt == "d/0001.txt" and js == "d/0001.json"
    assert split_sidecars(["d/README.txt"]) == ([], "d/README.txt", None)


def test_read_dir_group_unreadable_file_is_a_reject(tmp_path):
    out = list(read_dir_group([str(tmp_path / "gone.jpg")], SourceConfig(kind="dir", path=str(tmp_path))))
    assert len(out) == 1 and out[0].reason == Reason.UNREADABLE and "No such file" in out[0].detail


def test_wds_split_and_member_checks():
    assert wds_split("./a/b.c.JPG") == ("a/b", "c.jpg") and wds_split("0001.json") == ("0001", "json")

    def info(name, kind=tarfile.REGTYPE):
        t = tarfile.TarInfo(name)
        t.type = kind
        return t
    assert check_member(info("a/b.jpg")) is None
    for bad in ("../evil.jpg", "/etc/x.jpg", "a/../../b.jpg", "C:/x.jpg", "..\\x.jpg"):
        assert check_member(info(bad)) == Reason.UNSAFE_PATH, bad
    assert check_member(info("l.jpg", tarfile.SYMTYPE)) == Reason.UNSAFE_PATH


def test_normalize_turns_sharegpt_llamafactory_and_content_parts():
    assert normalize_turns({"conversations": [{"from": "human", "value": "<image>\nHi"},
                                              {"from": "gpt", "value": "Yo"}]}) == (
        [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}], [], None)
    turns, imgs, system = normalize_turns({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image_url", "value": "a.jpg"}, {"type": "text", "value": "Hi"}]},
        {"role": "assistant", "content": "Yo"}]})
    assert turns == [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Yo"}]
    assert imgs == ["a.jpg"] and system == "Be brief."
    assert "does not start with a human" in normalize_turns({"conversations": [{"from": "gpt", "value": "x"}]})
    assert "unknown role" in normalize_turns({"messages": [{"role": "robot", "content": "x"}]})
    assert "no `conversations`" in normalize_turns({"text": "x"})


def test_parse_llava_record_bad_cases():
    conv = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]
    ok = parse_llava_record({"id": 7, "image": "x/a.jpg", "conversations": conv}, "/d/f.json", 0, "/root")
    assert ok.image == "/root/x/a.jpg" and ok.rid == "7"
    same_twice = parse_llava_record({"images": ["a.jpg", "a.jpg"], "conversations": conv}, "/d/f.json", 3, "/r")
    assert same_twice.image == "/r/a.jpg" and same_twice.rid == "f.json:3"
    reason, detail = parse_llava_record({"conversations": conv}, "f", 0, "/r")
    assert reason == Reason.BAD_RECORD and "text-only" in detail
    reason, detail = parse_llava_record({"image": ["a.jpg", "b.jpg"], "conversations": conv}, "f", 0, "/r")
    assert reason == Reason.BAD_RECORD and "multi-image" in detail
    assert parse_llava_record(["x"], "f", 0, "/r")[0] == Reason.BAD_RECORD


def test_merge_conversations_keeps_one_image_token_first():
    conv1 = [{"from": "human", "value": "What is it?<image>"}, {"from": "gpt", "value": "A cat."}]
    conv2 = [{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "  Black. "}]
    recs = [parse_llava_record({"image": "a.jpg", "conversations": c}, "f", i, "/r")
            for i, c in enumerate((conv1, conv2))]
    merged = merge_conversations(recs)
    assert merged == [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."},
                      {"from": "human", "value": "Color?"}, {"from": "gpt", "value": "  Black. "}]
    assert conv1[0]["value"] == "What is it?<image>"  # inputs untouched


def test_iter_json_records_list_jsonl_and_object():
    assert [(w, r) for w, r, _ in iter_json_records('[{"a": 1}, 2]')] == [("record=0", {"a": 1}), ("record=1", 2)]
    jl = list(iter_json_records('{"a": 1}\n{oops\n\n{"b": 2}\n'))
    assert [(w, e is None) for w, _, e in jl] == [("line=1", True), ("line=2", False), ("line=4", True)]
    ((_, _, err),) = iter_json_records('{\n "x": {"file_name": "a.json"}\n}')
    assert "top-level JSON object" in err
    with pytest.raises(ValueError):
        list(iter_json_records('[{"a": 1},'))


# ---- dir ----

def test_dir_real_photos_every_file_is_an_input(eval_dir):
    root = eval_dir / "photos"
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if not f.startswith(".")]
    inputs = [f for f in files if not f.endswith((".txt", ".json"))]
    samples, rejects = run(SourceConfig(kind="dir", path=str(root), name="photos"))
    assert rejects == []
    assert sorted(s.source.uri for s in samples) == sorted(inputs)
    by_uri = {s.source.uri: s for s in samples}
    jxl = by_uri[str(root / "edge_formats/chelsea.jxl")]  # not decodable by Pillow: still ingested, decode rejects it
    data = (root / "edge_formats/chelsea.jxl").read_bytes()
    assert jxl.image.bytes == data and jxl.key == key_of(data) and jxl.hashes.sha256 == hashlib.sha256(data).hexdigest()
    assert jxl.source.kind == "dir" and jxl.source.name == "photos" and jxl.source.license is None


def test_dir_sidecars_empty_hidden_and_glob(tmp_path, eval_dir):
    img = (eval_dir / "photos/skimage/rocket.jpg").read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/0001.jpg").write_bytes(img)
    (tmp_path / "sub/0001.txt").write_text("  a rocket on a pad \n")
    (tmp_path / "sub/0001.json").write_text('{"url": "http://x/1.jpg", "width": 3}')
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "bad.gif").write_bytes(b"GIF89a")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "orphan.txt").write_text("caption without image")
    src = SourceConfig(kind="dir", path=str(tmp_path), license="cc0")
    samples, rejects = run(src)
    assert [(os.path.basename(r.source_uri), r.reason) for r in rejects] == [(".DS_Store", Reason.HIDDEN_FILE)]
    by_name = {os.path.basename(s.source.uri): s for s in samples}
    assert sorted(by_name) == ["0001.jpg", "bad.gif", "empty.png", "notes.md"]
    s = by_name["0001.jpg"]
    assert s.source.orig_caption == "a rocket on a pad"
    assert s.source.meta == {"json": {"url": "http://x/1.jpg", "width": 3}}
    assert s.source.license == "cc0" and s.source.name == "dir"
    assert by_name["empty.png"].image.bytes == b"" and "json_error" in by_name["bad.gif"].source.meta
    samples, _ = run(SourceConfig(kind="dir", path=str(tmp_path / "*.png")))
    assert [os.path.basename(s.source.uri) for s in samples] == ["empty.png"]


def test_dir_nothing_matches_is_a_reject(tmp_path):
    samples, rejects = run(SourceConfig(kind="dir", path=str(tmp_path / "nope")))
    assert samples == [] and len(rejects) == 1
    assert rejects[0].reason == Reason.UNREADABLE and "no input files" in rejects[0].detail


# ---- webdataset ----

def _members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}


def test_webdataset_img2dataset_shards(eval_dir):
    shards = eval_dir / "webdataset/img2dataset_generated/shards"
    samples, rejects = run(SourceConfig(kind="webdataset", path=str(shards), name="i2d"))
    assert rejects == [] and len(samples) == 42
    members = _members(shards / "00000.tar")
    s = next(s for s in samples if s.source.uri.endswith("00000.tar#0000000.jpg"))
    assert s.source.uri == f"tar://{shards}/00000.tar#0000000.jpg" and s.image.bytes == members["0000000.jpg"]
    assert s.source.orig_caption == members["0000000.txt"].decode().strip()
    assert s.source.meta["json"] == json.loads(members["0000000.json"]) and s.source.meta["wds_key"] == "0000000"
    assert s.source.meta["fields"] == ["jpg", "json", "txt"]


def test_webdataset_tgz_and_image_only_tars(eval_dir):
    wds = eval_dir / "webdataset"
    samples, rejects = run(SourceConfig(kind="webdataset", path=str(wds / "webdataset_testdata/sample.tgz")))
    assert rejects == [] and len(samples) == 90
    assert all(s.source.uri.endswith(".png") and s.source.meta["extra"]["cls"].isdigit() for s in samples)
    samples, rejects = run(SourceConfig(kind="webdataset", path=str(wds / "clip_retrieval_test_tars")))
    n = sum(len(_members(wds / "clip_retrieval_test_tars" / t)) for t in ("image1.tar", "image2.tar"))
    assert rejects == [] and len(samples) == n and all(s.source.orig_caption is None for s in samples)


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind=tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data) if kind == tarfile.REGTYPE else 0, link
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_webdataset_crafted_unsafe_and_missing_image(tmp_path, eval_dir):
    img = (eval_dir / "photos/skimage/rocket.jpg").read_bytes()
    shard = tmp_path / "evil-000000.tar"
    with tarfile.open(shard, "w") as tf:
        _add(tf, "ok.jpg", img)
        _add(tf, "ok.txt", b"fine")
        _add(tf, "../evil.jpg", img)
        _add(tf, "/abs/evil.jpg", img)
        _add(tf, "a/../../evil2.jpg", img)
        _add(tf, "link.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tf, "nocap.txt", b"caption only")
        _add(tf, "sub/two.json", b'{"k": 1}')
        _add(tf, "sub/two.png", img)
    samples, rejects = run(SourceConfig(kind="webdataset", path=str(shard)))
    assert sorted((s.source.uri.split("#")[1], s.source.orig_caption) for s in samples) == [
        ("ok.jpg", "fine"), ("sub/two.png", None)]
    got = sorted((str(r.reason), r.source_uri.split("#")[1]) for r in rejects)
    assert got == [("missing_image", "nocap"), ("unsafe_path", "../evil.jpg"), ("unsafe_path", "/abs/evil.jpg"),
                   ("unsafe_path", "a/../../evil2.jpg"), ("unsafe_path", "link.jpg")]
    assert not (tmp_path.parent / "evil.jpg").exists() and not os.path.exists("/abs/evil.jpg")


@pytest.mark.parametrize("name,cut", [("img2dataset_generated/shards/00000.tar", 1_000_000),
                                      ("webdataset_testdata/sample.tgz", 12_000)])
def test_webdataset_truncated_shard_keeps_what_was_read(tmp_path, eval_dir, name, cut):
    full = eval_dir / "webdataset" / name
    bad = tmp_path / os.path.basename(name)
    bad.write_bytes(full.read_bytes()[:cut])
    samples, rejects = run(SourceConfig(kind="webdataset", path=str(bad)))
    assert len(rejects) == 1 and rejects[0].reason == Reason.UNREADABLE and "after" in rejects[0].detail
    originals = set(_members(full).values())
    assert 0 < len(samples) < len(originals) and all(s.image.bytes in originals for s in samples)


def test_webdataset_not_a_tar(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"this is not a tar archive at all" * 40)
    samples, rejects = run(SourceConfig(kind="webdataset", path=str(tmp_path)))
    assert samples == [] and [r.reason for r in rejects] == [Reason.UNREADABLE]


# ---- llava ----

def _convs(samples):
    return {s.key: s.conversations["en"] for s in samples}


def test_llava_merges_records_per_image(eval_dir):
    text = eval_dir / "text"
    src = SourceConfig(kind="llava", path=str(text / "derived/llamafactory_mllm_demo_llava.json"),
                       image_root=str(text / "llamafactory"))
    samples, rejects = run(src)
    assert rejects == [] and len(samples) == 3
    for s in samples:
        conv = s.conversations["en"]
        assert len(conv) == 8 and [t["from"] for t in conv] == ["human", "gpt"] * 4
        assert conv[0]["value"].startswith(IMAGE_TOKEN + "\n") and sum(t["value"].count(IMAGE_TOKEN) for t in conv) == 1
        assert s.key == key_of((text / "llamafactory" / "mllm_demo_data" / os.path.basename(s.source.uri)).read_bytes())
    one = next(s for s in samples if s.source.uri.endswith("1.jpg"))
    assert one.source.meta["ids"] == ["mllm_demo_0", "mllm_demo_3"] and len(one.source.meta["records"]) == 2
    assert one.conversations["en"][:3] == [{"from": "human", "value": "<image>\nWho are they?"},
                                           {"from": "gpt", "value": "They're Kane and Gretzka from Bayern Munich."},
                                           {"from": "human", "value": "What are they doing?"}]
    # the LLaMA-Factory original (messages/images, role/content) gives the very same samples
    lf_samples, lf_rejects = run(SourceConfig(kind="llava", path=str(text / "llamafactory/mllm_demo.json")))
    assert lf_rejects == [] and _convs(lf_samples) == _convs(samples)


@pytest.mark.slow
def test_llava_content_parts_multi_processing(tmp_path, eval_dir):
    """OpenAI-style content parts (LLaMA-Factory v1 demo) give the same samples, also across 2 worker processes."""
    (tmp_path / "data").symlink_to(eval_dir / "text/llamafactory")  # its paths are `data/mllm_demo_data/N.jpg`
    src = SourceConfig(kind="llava", path=str(eval_dir / "text/llamafactory/v1_multimodal_demo.jsonl"),
                       image_root=str(tmp_path))
    ref, _ = run(SourceConfig(kind="llava", path=str(eval_dir / "text/llamafactory/mllm_demo.json")))
    n_records = sum(1 for ln in (eval_dir / "text/llamafactory/v1_multimodal_demo.jsonl").open() if ln.strip())
    want = sorted((k, json.dumps(c[:4]), 1) for k, c in _convs(ref).items())
    opts = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with TestPipeline(options=opts) as p:   # image_root holds a link leading out of it: allowed explicitly
        samples, rejects = p | ReadSource(src, IngestConfig(follow_symlinks=True))
        assert_that(samples | beam.Map(lambda s: (s.key, json.dumps(s.conversations["en"][:4]),
                                                  sum(t["value"].count(IMAGE_TOKEN) for t in s.conversations["en"]))),
                    equal_to(want))
        assert_that(samples | "Ids" >> beam.FlatMap(lambda s: s.source.meta["ids"]) | beam.combiners.Count.Globally(),
                    equal_to([n_records]), label="AllRecordsMerged")
        assert_that(rejects, equal_to([]), label="NoRejects")


def test_llava_bad_records_and_missing_images(tmp_path, eval_dir):
    (tmp_path / "a.jpg").write_bytes((eval_dir / "photos/skimage/rocket.jpg").read_bytes())
    conv = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A rocket."}]
    lines = [json.dumps({"id": "good", "image": "a.jpg", "conversations": conv}), "{broken json",
             json.dumps({"id": "text-only", "conversations": conv}),
             json.dumps({"id": "two", "image": ["a.jpg", "b.jpg"], "conversations": conv}),
             json.dumps({"id": "gone", "image": "missing.jpg", "conversations": conv})]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    samples, rejects = run(SourceConfig(kind="llava", path=str(tmp_path / "d.jsonl")))
    assert [s.source.meta["ids"] for s in samples] == [["good"]]
    got = sorted((str(r.reason), r.source_uri.rsplit("/", 1)[1]) for r in rejects)
    assert got == [("bad_record", "d.jsonl#line=2"), ("bad_record", "d.jsonl#line=3"),
                   ("bad_record", "d.jsonl#line=4"), ("missing_image", "missing.jpg")]
    assert all(r.stage == "ingest" and r.detail for r in rejects)


def test_llava_real_coco_records_without_images(eval_dir):
    """LLaVA-Bench COCO records name val2014 images that are not in the corpus: each is a MISSING_IMAGE."""
    path = eval_dir / "text/derived/coco_captions_80_caption_task.json"
    samples, rejects = run(SourceConfig(kind="llava", path=str(path)))
    assert samples == [] and len(rejects) == len(json.loads(path.read_text()))
    assert {r.reason for r in rejects} == {Reason.MISSING_IMAGE}


def test_read_source_assert_that_and_unknown_kind(eval_dir):
    with pytest.raises(ValueError, match="kind"):
        ReadSource(SourceConfig(kind="ftp", path="x"), CFG)
    path = eval_dir / "photos/llava_examples"
    want = sorted(key_of(p.read_bytes()) for p in path.iterdir())
    with TestPipeline() as p:
        samples, rejects = p | ReadSource(SourceConfig(kind="dir", path=str(path)), CFG)
        assert_that(samples | beam.Map(lambda s: s.key), equal_to(want))
        assert_that(rejects, equal_to([]), label="NoRejects")


def test_webdataset_reingests_polycap_shards_with_every_caption_and_language(eval_dir, tmp_path):
    """Round trip: polycap's own shards (one text member per run language, some empty) come back with
    every caption, language, conversation and licence they were written with."""
    import dataclasses

    from polycap.schemas import Caption
    from tests.sharding.conftest import decoded_sample, run_write

    photos = sorted((eval_dir / "photos" / "img2dataset_tests").glob("*.jpg"))[:4]
    samples = [decoded_sample(p.read_bytes(), str(p), "i2d", langs)
               for p, langs in zip(photos, [("en", "ko", "vi"), ("en",), (), ("en", "ko")])]
    samples[0] = dataclasses.replace(
        samples[0], captions={**samples[0].captions, "pt-BR": Caption("legenda", "translation", translated_from="en")},
        conversations={"en": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
        source=dataclasses.replace(samples[0].source, license="CC-BY-4.0", orig_caption="alt text"))
    out = tmp_path / "run"
    run_write(samples, str(out), max_samples=3)
    got, rejects = run(SourceConfig(kind="webdataset", path=str(out / "shards"), name="again"))
    assert rejects == [] and len(got) == 4
    by_key = {s.key: s for s in got}
    for s in samples:
        g = by_key[s.key]
        assert g.captions == s.captions and g.conversations == s.conversations
        assert g.source.license == s.source.license and g.source.orig_caption == s.source.orig_caption
        assert g.source.meta["polycap"]["key"] == s.key and "extra" not in g.source.meta
    assert set(by_key[samples[0].key].captions) == {"en", "ko", "vi", "pt-BR"}
    assert by_key[samples[2].key].captions == {}
