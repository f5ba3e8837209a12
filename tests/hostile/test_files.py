"""Hostile files in an input folder: FIFOs, device links, dangling and escaping links, hidden files, glob
characters in a real folder name, LLaVA paths leaving image_root, lone surrogates."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from polycap.schemas import Reason
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms.input_files import Refused, list_inputs
from tests.conftest import jpeg_bytes
from tests.hostile.helpers import read_source, run_job


@pytest.fixture
def hostile_dir(tmp_path):
    """One good photo next to everything a folder can hold that must not be read."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.jpg").write_bytes(jpeg_bytes(96, 96))
    os.mkfifo(src / "pipe.jpg")                                  # opening it would block forever
    (src / "zero.jpg").symlink_to("/dev/zero")                   # reading it would never end
    (src / "gone.jpg").symlink_to(src / "nowhere.jpg")           # dangling
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(80, 80, (0, 0, 255)))
    (src / "escape.jpg").symlink_to(tmp_path / "secret.jpg")     # a file outside the input folder
    (src / ".hidden.jpg").write_bytes(jpeg_bytes(70, 70))
    return src


@pytest.mark.timeout(90)
def test_special_files_links_and_hidden_are_counted_not_read(tmp_path, hostile_dir):
    r = run_job(tmp_path, [{"kind": "dir", "path": str(hostile_dir), "name": "h"}], timeout=80)
    assert r["rc"] == 0, r["stderr"]
    assert r["inputs"] == 6 and r["kept"] == 1 and r["inputs"] == r["kept"] + r["rejected"]
    by_name = {os.path.basename(x["source_uri"]): x["reason"] for x in r["rejects"]}
    assert by_name == {"pipe.jpg": "not_a_file", "zero.jpg": "unsafe_path", "gone.jpg": "not_a_file",
                       "escape.jpg": "unsafe_path", ".hidden.jpg": "hidden_file"}
    assert r["written_outside"] == [] and r["maxrss_mb"] < 1500


def test_follow_symlinks_still_never_opens_a_device(hostile_dir, tmp_path):
    got = {os.path.basename(x.path if isinstance(x, Refused) else x): x.reason if isinstance(x, Refused) else None
           for x in list_inputs(str(hostile_dir), None, IngestConfig(follow_symlinks=True))}
    assert got == {"good.jpg": None, "escape.jpg": None, "pipe.jpg": Reason.NOT_A_FILE,
                   "zero.jpg": Reason.NOT_A_FILE, "gone.jpg": Reason.NOT_A_FILE, ".hidden.jpg": Reason.HIDDEN_FILE}


@pytest.mark.timeout(30)
def test_a_named_fifo_or_device_is_refused_before_opening(hostile_dir):
    for name in ("pipe.jpg", "zero.jpg"):
        samples, rejects = read_source(SourceConfig(kind="dir", path=str(hostile_dir / name)))
        assert samples == [] and [r.reason for r in rejects] == [Reason.NOT_A_FILE]


@pytest.mark.timeout(30)
def test_a_file_over_max_bytes_is_refused(tmp_path):
    (tmp_path / "big.jpg").write_bytes(b"\xff\xd8" + b"\0" * 5000)
    samples, rejects = read_source(SourceConfig(kind="dir", path=str(tmp_path)), IngestConfig(max_bytes=4096))
    assert samples == [] and [r.reason for r in rejects] == [Reason.TOO_LARGE_INPUT]


@pytest.mark.timeout(30)
def test_folder_name_with_glob_characters_is_read_literally(tmp_path):
    src = tmp_path / "photos[2024]"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "photos2.jpg").write_bytes(jpeg_bytes(64, 64))      # what `photos[2024]` would match as a glob
    samples, rejects = read_source(SourceConfig(kind="dir", path=str(src)))
    assert [os.path.basename(s.source.uri) for s in samples] == ["a.jpg"] and rejects == []


@pytest.mark.timeout(90)
def test_llava_paths_outside_root_and_bad_text_are_one_reject_each(tmp_path):
    root = tmp_path / "llava"
    (root / "img").mkdir(parents=True)
    (root / "img/a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(70, 70))
    (root / "img/link.jpg").symlink_to(tmp_path / "secret.jpg")

    def rec(i, image, text="Describe."):
        return {"id": str(i), "image": image, "conversations": [
            {"from": "human", "value": f"<image>\n{text}"}, {"from": "gpt", "value": "A red square."}]}
    lines = [json.dumps(rec(0, "img/a.jpg")), json.dumps(rec(1, "../secret.jpg")), json.dumps(rec(2, "/etc/passwd")),
             json.dumps(rec(3, "img/link.jpg")), json.dumps(rec(4, "img/a.jpg", "bad \ud800 text")),
             json.dumps(rec(5, "img/a.jpg", "nul \x00 here"))]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    side = tmp_path / "side"
    side.mkdir()
    (side / "b.jpg").write_bytes(jpeg_bytes(100, 80, (0, 200, 0)))
    (side / "b.json").write_text('{"note": "\\ud800 lone"}')        # sidecar meta with a lone surrogate
    r = run_job(tmp_path, [{"kind": "llava", "path": str(root / "data.jsonl"), "name": "l"},
                           {"kind": "dir", "path": str(side), "name": "d"}], timeout=80)
    assert r["rc"] == 0, r["stderr"]
    assert r["inputs"] == 7 and r["kept"] == 2 and r["inputs"] == r["kept"] + r["rejected"]
    reasons = sorted(x["reason"] for x in r["rejects"])
    assert reasons == ["bad_record", "bad_record", "unsafe_path", "unsafe_path", "unsafe_path"]
    assert r["written_outside"] == []


def test_llava_follow_symlinks_opens_the_root(tmp_path):
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(70, 70))
    root = tmp_path / "root"
    root.mkdir()
    conv = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "A square."}]
    (root / "d.json").write_text(json.dumps([{"image": "../secret.jpg", "conversations": conv}]))
    src = SourceConfig(kind="llava", path=str(root / "d.json"))
    assert [r.reason for r in read_source(src)[1]] == [Reason.UNSAFE_PATH]
    samples, rejects = read_source(src, IngestConfig(follow_symlinks=True))
    assert len(samples) == 1 and rejects == []


def test_unlistable_subfolder_is_a_reject(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    (tmp_path / "locked").mkdir()
    (tmp_path / "ok.jpg").write_bytes(jpeg_bytes())
    os.chmod(tmp_path / "locked", 0)
    try:
        got = list_inputs(str(tmp_path), None, IngestConfig())
    finally:
        os.chmod(tmp_path / "locked", 0o755)
        shutil.rmtree(tmp_path / "locked")
    assert [x.reason for x in got if isinstance(x, Refused)] == [Reason.UNREADABLE]
