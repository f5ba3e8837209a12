import json

import pytest

from polycap.transforms.dataset_formats import FormatError, text_slots
from polycap.transforms.dataset_info import (
    INFO_FILE,
    InfoEntry,
    check_output_registry,
    find_entry,
    output_entry,
    register_output,
    resolve_layout,
    unregister_output,
)
from tests.transforms.test_dataset_formats import ALPACA, CALL, LLAVA

CUSTOM = {"dialog": [{"speaker": "customer", "text": "Hello there."},
                     {"speaker": "agent", "text": "Hi! How can I help?"},
                     {"speaker": "customer", "text": "Call the tool."},
                     {"speaker": "call", "text": CALL}, {"speaker": "result", "text": '{"ok": true}'},
                     {"speaker": "agent", "text": "Done."}],
          "sys": "You are an agent."}
CUSTOM_INFO = {"custom": {"file_name": "custom.json", "formatting": "sharegpt",
                          "columns": {"messages": "dialog", "system": "sys"},
                          "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "customer",
                                   "assistant_tag": "agent", "function_tag": "call", "observation_tag": "result"}}}


def _texts(rec, lay):
    return [t for _, t in text_slots(rec, lay)]


def _info_dir(tmp_path, info, records, name="custom.json"):
    (tmp_path / INFO_FILE).write_text(json.dumps(info))
    (tmp_path / name).write_text(json.dumps(records))
    return str(tmp_path / name)


def _layout(fmt, first, path, fields=("caption",), info_path=None, info_name=None):
    """What `polycap translate` does: find the input's entry, then the layout."""
    return resolve_layout(fmt, first, fields, path, find_entry(path, info_path, info_name))


def test_dataset_info_next_to_the_input_sets_columns_and_tags(tmp_path):
    path = _info_dir(tmp_path, CUSTOM_INFO, [CUSTOM])
    lay = _layout("auto", CUSTOM, path)
    assert (lay.name, lay.messages, lay.role_tag, lay.content_tag, lay.system) == \
        ("sharegpt", "dialog", "speaker", "text", "sys")
    assert lay.origin.endswith("dataset_info.json#custom")
    assert _texts(CUSTOM, lay) == ["You are an agent.", "Hello there.", "Hi! How can I help?", "Call the tool.",
                                   "Done."]
    bad = {**CUSTOM, "dialog": CUSTOM["dialog"] + [{"speaker": "bot", "text": "?"}]}
    with pytest.raises(FormatError, match="role 'bot'"):             # LLaMA-Factory would drop it as broken
        text_slots(bad, lay)
    with pytest.raises(FormatError, match="disagrees"):
        _layout("alpaca", CUSTOM, path)


def test_dataset_info_options_and_their_errors(tmp_path):
    path = _info_dir(tmp_path, {**CUSTOM_INFO, "copy": {**CUSTOM_INFO["custom"]}}, [CUSTOM])
    with pytest.raises(FormatError, match="--dataset-name"):         # two entries name the file
        find_entry(path)
    entry = find_entry(path, name="copy")
    assert entry is not None and (entry.name, entry.path) == ("copy", str(tmp_path / INFO_FILE))
    assert _layout("auto", CUSTOM, path, info_name="copy").messages == "dialog"
    with pytest.raises(FormatError, match="'nope'"):
        find_entry(path, name="nope")
    other = tmp_path / "sub"
    other.mkdir()
    (other / "a.json").write_text(json.dumps([ALPACA]))
    assert find_entry(str(other / "a.json")) is None                 # no dataset_info.json beside it
    assert _layout("auto", ALPACA, str(other / "a.json")).name == "alpaca"
    with pytest.raises(FormatError, match="--dataset-info"):
        find_entry(str(other / "a.json"), name="a")
    with pytest.raises(FormatError, match="no entry has file_name a.json"):
        find_entry(str(other / "a.json"), str(tmp_path / INFO_FILE))
    info = {"a": {"file_name": "a.json", "columns": {"prompt": "q", "response": "a", "system": "s"}}}
    (other / INFO_FILE).write_text(json.dumps(info))
    lay = _layout("auto", None, str(other / "a.json"))
    rec = {"q": "Name a fruit.", "a": "An apple.", "s": "Be brief.", "instruction": "not a column here"}
    assert (lay.name, _texts(rec, lay)) == ("alpaca", ["Be brief.", "Name a fruit.", "An apple."])
    (other / INFO_FILE).write_text("[1, 2]")
    with pytest.raises(FormatError, match="object of dataset entries"):
        find_entry(str(other / "a.json"))


def test_auto_detection_refuses_a_record_it_cannot_place():
    with pytest.raises(FormatError, match="--format") as e:
        resolve_layout("auto", {"question": "x", "answer": "y"}, ["caption"], "/nowhere/x.jsonl")
    assert "answer, question" in str(e.value)
    assert resolve_layout("auto", {"question": "x"}, ["question"], "/nowhere/x.jsonl").name == "captions"
    with pytest.raises(FormatError, match="--format: 'coco'"):
        resolve_layout("coco", {}, ["caption"], "/nowhere/x.jsonl")


def test_a_later_record_that_fits_two_formats_is_malformed_when_detected():
    lay = resolve_layout("auto", LLAVA, ["caption"], "/nowhere/x.json")
    both = {**LLAVA, "messages": [{"role": "user", "content": "Hidden."}]}
    with pytest.raises(FormatError, match="ambiguous"):
        text_slots(both, lay)
    assert len(text_slots(both, "llava")) == 2     # an explicit --format reads its own column only


# -- the output folder's dataset_info.json -------------------------------------------------------------------
HUB = {"hf_hub_url": "org/data", "file_name": "data/custom.json", "file_sha1": "ab12", "formatting": "sharegpt",
       "columns": {"messages": "dialog"}, "split": "train"}


def test_output_entry_keeps_the_layout_and_names_the_translated_file_only():
    out = output_entry(InfoEntry("/in/dataset_info.json", "custom", HUB), "custom.json")
    assert out == {"file_name": "custom.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
                   "split": "train"}
    assert list(out) == ["file_name", "formatting", "columns", "split"]     # the input's key order
    assert HUB["hf_hub_url"] == "org/data"                                  # the input entry is not changed


def test_register_merges_without_clobbering_and_unregister_removes_only_its_entry(tmp_path):
    mine = InfoEntry("/in/dataset_info.json", "custom", CUSTOM_INFO["custom"])
    register_output(str(tmp_path), mine, "custom.json")                     # created when missing
    assert json.loads((tmp_path / INFO_FILE).read_text()) == {"custom": CUSTOM_INFO["custom"]}
    others = {"zeta": {"file_name": "z.json"}, "alpha": {"hf_hub_url": "o/custom.json", "file_name": "custom.json"}}
    (tmp_path / INFO_FILE).write_text(json.dumps({**others, "custom": {"file_name": "custom.json"}}))
    register_output(str(tmp_path), mine, "custom.json")
    got = json.loads((tmp_path / INFO_FILE).read_text())
    assert got == {**others, "custom": CUSTOM_INFO["custom"]} and list(got) == ["zeta", "alpha", "custom"]
    assert [p.name for p in tmp_path.iterdir()] == [INFO_FILE]              # no temp file left
    check_output_registry(str(tmp_path), mine, "custom.json")               # its own entry: fine
    with pytest.raises(FormatError, match="'custom' loads another file"):
        check_output_registry(str(tmp_path), mine, "other.json")
    unregister_output(str(tmp_path), "custom.json")      # "alpha" loads from the hub: it is not this file's
    assert json.loads((tmp_path / INFO_FILE).read_text()) == others
    unregister_output(str(tmp_path), "z.json")
    unregister_output(str(tmp_path), "nothing.json")
    assert json.loads((tmp_path / INFO_FILE).read_text()) == {"alpha": others["alpha"]}
    (tmp_path / INFO_FILE).write_text(json.dumps({"custom": {"file_name": "custom.json"}}))
    unregister_output(str(tmp_path), "custom.json")
    assert not (tmp_path / INFO_FILE).exists()                              # nothing left: the file goes
    (tmp_path / INFO_FILE).write_text("{broken")
    with pytest.raises(FormatError, match="cannot read it as JSON"):
        check_output_registry(str(tmp_path), mine, "custom.json")
