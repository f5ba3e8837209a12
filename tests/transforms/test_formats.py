import json

import pytest

from transforms.formats import FormatError, detect_format, read_records, set_slots, text_slots, write_records

LLAVA = {"id": "1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                        {"from": "gpt", "value": "A cat."}]}
SHAREGPT = {"messages": [{"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": "Kane."}],
            "images": ["1.jpg"]}
OPENAI = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.jpg"}},
                                                    {"type": "text", "text": "Who?"}]},
                       {"role": "assistant", "content": [{"type": "text", "value": "Kane."}]}]}


def test_detect_each_format():
    assert detect_format(LLAVA, "json") == "llava"
    assert detect_format(SHAREGPT, "json") == "sharegpt"
    assert detect_format(OPENAI, "jsonl") == "messages"
    assert detect_format({"caption": "x"}, "parquet") == "captions"
    assert detect_format(None, "shards") == "shards"


@pytest.mark.parametrize("rec,fmt,n", [(LLAVA, "llava", 2), (SHAREGPT, "sharegpt", 2), (OPENAI, "messages", 2)])
def test_slots_round_trip_only_changes_text(rec, fmt, n):
    slots = text_slots(rec, fmt, ["caption"])
    assert len(slots) == n
    out = set_slots(rec, fmt, "ko", {p: f"T{i}" for i, (p, _) in enumerate(slots)})
    assert [t for _, t in text_slots(out, fmt, [])] == [f"T{i}" for i in range(n)]
    strip = json.dumps(out).replace("T0", "").replace("T1", "")
    orig = json.dumps(rec)
    for _, t in slots:
        orig = orig.replace(json.dumps(t)[1:-1], "", 1)
    assert strip == orig                                   # everything but the texts is identical
    assert rec == json.loads(json.dumps(rec))              # input not mutated


def test_caption_fields_strings_and_lists_other_fields_copied():
    rec = {"id": 3, "captions": ["a", "b"], "note": "x", "bbox": [0.1, 0.2]}
    slots = text_slots(rec, "captions", ["captions"])
    assert [p for p, _ in slots] == [("captions", 0), ("captions", 1)]
    out = set_slots(rec, "captions", "vi", {p: "z" for p, _ in slots})
    assert out == {"id": 3, "captions": ["z", "z"], "note": "x", "bbox": [0.1, 0.2]}


@pytest.mark.parametrize("rec,fmt", [({"conversations": "nope"}, "llava"), ([1, 2], "llava"),
                                     ({"messages": [{"content": "x"}]}, "sharegpt"),
                                     ({"messages": [{"role": "user", "content": [3]}]}, "messages"),
                                     ({"other": 1}, "captions")])
def test_malformed_records_raise_format_error(rec, fmt):
    with pytest.raises(FormatError):
        text_slots(rec, fmt, ["caption"])


def test_jsonl_bad_line_is_a_record_with_error_and_blank_lines_are_skipped(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"caption": "a"}\n{broken\n\n{"caption": "b"}\n', encoding="utf-8")
    recs = list(read_records(str(p)))
    assert [r.record is None for r in recs] == [False, True, False]
    assert "line 2" in recs[1].error


def test_write_parquet_and_json_round_trip(tmp_path):
    rows = [{"caption": "ảnh", "n": 1}, {"caption": "사진", "n": 2}]
    for name in ("a.parquet", "a.json", "a.jsonl"):
        write_records(str(tmp_path / name), name.split(".")[1], rows)
        assert [r.record for r in read_records(str(tmp_path / name))] == rows
