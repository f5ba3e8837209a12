import json

import pytest

from polycap.transforms.dataset_formats import (
    FormatError,
    RecordWriter,
    count_records,
    detect_format,
    read_records,
    set_slots,
    text_slots,
)

LLAVA = {"id": "1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                        {"from": "gpt", "value": "A cat."}]}
SHAREGPT = {"messages": [{"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": "Kane."}],
            "images": ["1.jpg"]}
OPENAI = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.jpg"}},
                                                    {"type": "text", "text": "Who?"}]},
                       {"role": "assistant", "content": [{"type": "text", "value": "Kane."}]}]}


def test_detect_each_format():
    assert detect_format(LLAVA) == "llava"
    assert detect_format(SHAREGPT) == "sharegpt"
    assert detect_format(OPENAI) == "messages"
    assert detect_format({"caption": "x"}) == "captions"


@pytest.mark.parametrize("rec,fmt,n", [(LLAVA, "llava", 2), (SHAREGPT, "sharegpt", 2), (OPENAI, "messages", 2)])
def test_slots_round_trip_only_changes_text(rec, fmt, n):
    slots = text_slots(rec, fmt, ["caption"])
    assert len(slots) == n
    out = set_slots(rec, "ko", {p: f"T{i}" for i, (p, _) in enumerate(slots)})
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
    out = set_slots(rec, "vi", {p: "z" for p, _ in slots})
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


def test_write_parquet_and_json_round_trip_and_count(tmp_path):
    rows = [{"caption": "ảnh", "n": 1}, {"caption": "사진", "n": 2}]
    for name in ("a.parquet", "a.json", "a.jsonl"):
        w = RecordWriter(str(tmp_path / name), name.split(".")[1])
        for r in rows:
            w.write(r)
        w.close()
        assert [r.record for r in read_records(str(tmp_path / name))] == rows
        assert count_records(str(tmp_path / name)) == 2


def test_count_records_counts_what_read_records_yields_or_says_it_does_not_know(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"caption": "a"}\n{broken\n\n{"caption": "b"}\n', encoding="utf-8")
    assert count_records(str(p)) == len(list(read_records(str(p)))) == 3    # a broken line is a record
    big = tmp_path / "big.json"
    big.write_text(json.dumps([{"caption": "x"}] * 50))
    assert count_records(str(big)) == 50 and count_records(str(big), max_bytes=100) is None
    (tmp_path / "cut.json").write_text('[{"caption": "x"},')
    assert count_records(str(tmp_path / "cut.json")) is None
    with pytest.raises(FormatError, match="shards: a .tar"):
        count_records(str(tmp_path / "x.tar"))


@pytest.mark.parametrize("records", [[], [{"a": 1, "b": ["x", {"c": "한국어 <image>"}]}],
                                     [{"a": 1}, {"a": 2, "t": "Tiếng Việt\nline"}, [1, 2], "s"]])
def test_streamed_json_is_byte_identical_to_json_dump(tmp_path, records):
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


# -- tool turns, alpaca, system, dataset_info.json, ids ---------------------------------------------
CALL = '{"name": "get_weather", "arguments": {"city": "Seoul"}}'
GLAIVE = {"id": "w-1-en", "system": "You are a helpful assistant.", "tools": '[{"name": "get_weather"}]',
          "conversations": [{"from": "human", "value": "Weather in Seoul?"},
                            {"from": "function_call", "value": CALL},
                            {"from": "observation", "value": '{"temp": 21}'},
                            {"from": "gpt", "value": "It is 21 degrees."}]}
TOOL_CALLS = {"messages": [
    {"role": "system", "content": "Use the tools."},
    {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                                 {"type": "image_url", "image_url": {"url": "a.jpg"}}]},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": CALL}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."}], "lang": "en"}
ALPACA = {"instruction": "Name a fruit.", "input": "", "output": "An apple.", "system": "Be brief.",
          "history": [["Hi.", "Hello!"]]}


def _texts(rec, fmt):
    return [t for _, t in text_slots(rec, fmt)]


def test_tool_turns_and_tool_calls_are_not_slots_and_pass_through():
    assert detect_format(GLAIVE) == "sharegpt"
    assert _texts(GLAIVE, "sharegpt") == ["You are a helpful assistant.", "Weather in Seoul?", "It is 21 degrees."]
    assert detect_format(TOOL_CALLS) == "messages"
    assert _texts(TOOL_CALLS, "messages") == ["Use the tools.", "Weather here?", "It is 21 degrees."]
    for rec, fmt in ((GLAIVE, "sharegpt"), (TOOL_CALLS, "messages")):
        out = set_slots(rec, "ko", {p: "번역" for p, _ in text_slots(rec, fmt)})
        turns = out.get("conversations") or out["messages"]
        orig = rec.get("conversations") or rec["messages"]
        for a, b in zip(orig, turns):
            if a.get("from", a.get("role")) in ("function_call", "observation", "tool") or "tool_calls" in a:
                assert json.dumps(a) == json.dumps(b)         # byte for byte
            else:
                assert a != b
        assert out.get("tools") == rec.get("tools")
    assert set_slots(GLAIVE, "ko", {("system",): "시스템"})["system"] == "시스템"


def test_null_content_is_malformed_unless_it_calls_tools():
    rec = {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(FormatError, match="tool_calls"):
        text_slots(rec, "messages")


def test_llamafactory_sharegpt_with_role_content_tags_under_conversations():
    rec = {"conversations": [{"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": "Kane."}],
           "images": ["1.jpg"]}
    assert detect_format(rec) == "sharegpt"
    assert _texts(rec, "sharegpt") == ["<image>Who?", "Kane."]


def test_alpaca_is_detected_and_system_history_instruction_input_output_are_slots():
    assert detect_format(ALPACA) == "alpaca"
    slots = text_slots(ALPACA, "alpaca")
    assert [p for p, _ in slots] == [("system",), ("history", 0, 0), ("history", 0, 1), ("instruction",),
                                      ("input",), ("output",)]
    out = set_slots(ALPACA, "vi", {p: f"v{i}" for i, (p, _) in enumerate(slots)})
    assert out == {"system": "v0", "history": [["v1", "v2"]], "instruction": "v3", "input": "v4", "output": "v5"}
    with pytest.raises(FormatError, match="history"):
        text_slots({**ALPACA, "history": [["only one"]]}, "alpaca")


@pytest.mark.parametrize("rec", [{"conversations": [], "messages": []},
                                 {"instruction": "x", "output": "y", "conversations": []},
                                 {"messages": [{"from": "human", "value": "a"}, {"role": "user", "content": "b"}]}])
def test_ambiguous_records_name_the_format_option(rec):
    with pytest.raises(FormatError, match="--format"):
        detect_format(rec)


@pytest.mark.parametrize("before,after", [
    ({"id": "q7-en"}, {"id": "q7-ko"}), ({"id": "q7_EN"}, {"id": "q7_ko"}), ({"id": "q7"}, {"id": "q7"}),
    ({"id": "token"}, {"id": "token"}), ({"id": 5}, {"id": 5}), ({"id": "en"}, {"id": "en"}),
    ({"lang": "en"}, {"lang": "ko"}), ({"language": "English"}, {"language": "ko"}),
    ({"lang": "en-US"}, {"lang": "ko"}), ({"lang": "fr"}, {"lang": "fr"}), ({"lang": "eng"}, {"lang": "ko"})])
def test_ids_and_language_fields_follow_the_documented_rule(before, after):
    rec = {"caption": "A cat.", **before}
    out = set_slots(rec, "ko", {("caption",): "고양이"})
    assert out == {"caption": "고양이", **after}
