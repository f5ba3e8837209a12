import json

import pytest

from polycap.transforms.dataset_formats import (
    FormatError,
    detect_format,
    read_records,
    set_slots,
    text_slots,
    write_records,
)

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


@pytest.mark.parametrize("records", [[], [{"a": 1, "b": ["x", {"c": "한국어 <image>"}]}],
                                     [{"a": 1}, {"a": 2, "t": "Tiếng Việt\nline"}, [1, 2], "s"]])
def test_streamed_json_is_byte_identical_to_json_dump(tmp_path, records):
    from polycap.transforms.dataset_formats import RecordWriter

    w = RecordWriter(str(tmp_path / "o.json"), "json")
    for r in records:
        w.write(r)
    assert not (tmp_path / "o.json").exists()  # only the temp file until close
    w.close()
    assert (tmp_path / "o.json").read_text(encoding="utf-8") == \
        json.dumps(records, ensure_ascii=False, indent=2) + "\n"


def test_streamed_parquet_batches_keep_the_given_schema(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from polycap.transforms.dataset_formats import RecordWriter

    schema = pa.schema([("caption", pa.string()), ("n", pa.int64()), ("note", pa.string())])
    monkeypatch.setattr(RecordWriter, "PARQUET_BATCH", 3)
    rows = [{"caption": f"c{i}", "n": i, "note": None if i < 5 else "x"} for i in range(8)]  # 1st batch: all null
    w = RecordWriter(str(tmp_path / "o.parquet"), "parquet", schema)
    for r in rows:
        w.write(r)
    w.close()
    t = pq.read_table(tmp_path / "o.parquet")
    assert t.schema.equals(schema) and t.to_pylist() == rows
    empty = RecordWriter(str(tmp_path / "e.parquet"), "parquet", schema)
    empty.close()
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0
    with pytest.raises(ValueError):
        RecordWriter(str(tmp_path / "x.tar"), "shards")
