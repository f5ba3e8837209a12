"""`polycap translate` knows the formats: tool turns, `tool_calls` and `tools` come out byte for byte, the top-level
`system` is translated, ids and language fields follow the rule of transforms/dataset_formats.py, LLaMA-Factory
dataset_info.json columns and tags are honoured, and every output still loads in the re-implemented upstream
loader of tests/sharding/test_export.py (LLaMA-Factory's parser.py + converter.py): with the dataset_info.json
translate writes into OUT/<lang>/ when the input came with one."""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from polycap.pipelines.translate import run
from polycap.schemas.config import TranslateConfig
from tests.fakes.fake_translator import FAKE  # deterministic TEST backend, not a model
from tests.sharding.test_export import llamafactory_load

CFG = TranslateConfig(backend=FAKE, model="fake")
CALL = '{"name": "get_weather", "arguments": {"city": "Seoul"}}'
OBS = '{"temperature": 21, "sky": "clear"}'
TOOLS = '[{"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object"}}]'

GLAIVE = [  # LLaMA-Factory glaive_toolcall_en_demo shape (data/dataset_info.json: messages + tools columns)
    {"id": "wx-0-en", "lang": "en", "system": "You are a helpful assistant with tools.", "tools": TOOLS,
     "conversations": [{"from": "human", "value": "What is the weather in Seoul today?"},
                       {"from": "function_call", "value": CALL},
                       {"from": "observation", "value": OBS},
                       {"from": "gpt", "value": "It is sunny and warm in Seoul."}]},
    {"id": "wx-1", "system": "Answer briefly.", "tools": TOOLS,
     "conversations": [{"from": "human", "value": "Hello there, my friend."},
                       {"from": "gpt", "value": "Hello! How can I help you?"}]}]
GLAIVE_INFO = {"toolcall": {"file_name": "toolcall.json", "formatting": "sharegpt",
                            "columns": {"messages": "conversations", "system": "system", "tools": "tools"}}}

OPENAI = [  # OpenAI chat with tool calls (LLaMA-Factory `formatting: openai`)
    {"id": "oa_7_en", "messages": [
        {"role": "system", "content": "You can call functions to answer."},
        {"role": "user", "content": "Please check the weather in Seoul."},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Seoul"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": OBS},
        {"role": "assistant", "content": "The sky is clear and it is warm."}], "tools": json.loads(TOOLS)}]
OPENAI_INFO = {"chat": {"file_name": "chat.jsonl", "formatting": "openai",
                        "columns": {"messages": "messages", "tools": "tools"},
                        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant", "observation_tag": "tool",
                                 "function_tag": "function", "system_tag": "system"}}}

PARTS = [  # OpenAI content parts, no dataset_info.json: detected as `messages`
    {"id": "p-en", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img/1.jpg"}},
                                     {"type": "text", "text": "What is in this picture?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c9", "type": "function", "function": {"name": "zoom", "arguments": '{"x": 3}'}}]},
        {"role": "tool", "tool_call_id": "c9", "content": [{"type": "text", "text": "zoomed: a red bus"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red bus on a street."}]}]}]

ALPACA = [
    {"id": "a-0-en", "instruction": "Name a fruit that is red.", "input": "", "output": "An apple is red.",
     "system": "You answer in one sentence.", "history": [["Hello there.", "Hi! Ask me anything."]]},
    {"id": "a-1", "language": "English", "instruction": "Add the numbers.", "input": "Two and three.",
     "output": "The sum is five.", "system": "You are a calculator."}]
ALPACA_INFO = {"alp": {"file_name": "alp.json", "columns": {"prompt": "instruction", "query": "input",
                                                            "response": "output", "system": "system",
                                                            "history": "history"}}}

ROLE_TAGS = [  # LLaMA-Factory sharegpt with role/content tags under `conversations`, no dataset_info.json
    {"conversations": [{"role": "system", "content": "You describe scenes."},
                       {"role": "user", "content": "Describe the room."},
                       {"role": "assistant", "content": "A quiet room with a wooden desk."}]}]


def _write(path, records) -> None:
    if str(path).endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=2))


def _read(path) -> list:
    text = path.read_text(encoding="utf-8")
    return [json.loads(x) for x in text.splitlines()] if str(path).endswith(".jsonl") else json.loads(text)


def _translate(tmp_path, name, records, info=None, **kw):
    src_dir = tmp_path / "in"
    src_dir.mkdir(exist_ok=True)
    _write(src_dir / name, records)
    if info:
        (src_dir / "dataset_info.json").write_text(json.dumps(info))
    stats = run(str(src_dir / name), ["ko"], str(tmp_path / "out"), CFG, **kw)
    assert stats["balanced"] and stats["langs"]["ko"] == {"kept": len(records), "rejected": 0, "balanced": True}
    return stats, _read(tmp_path / "out" / "ko" / name)


def _same(a, b) -> bool:
    """Byte for byte: the same JSON text (key order included)."""
    return json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


def _loads_upstream(tmp_path, entry) -> int:
    """OUT/ko as translate left it (its own dataset_info.json), read by LLaMA-Factory's loader logic."""
    return llamafactory_load(str(tmp_path / "out" / "ko"), entry)


def _registry(tmp_path, lang="ko") -> dict:
    return json.loads((tmp_path / "out" / lang / "dataset_info.json").read_text())


def test_sharegpt_tool_turns_pass_through_and_system_is_translated(tmp_path):
    llamafactory_load_input = _translate(tmp_path, "toolcall.json", GLAIVE, GLAIVE_INFO)
    stats, out = llamafactory_load_input
    assert stats["format"] == "sharegpt"
    for src, new in zip(GLAIVE, out):
        assert _same(src["tools"], new["tools"])
        assert new["system"] != src["system"] and not any(c.isascii() and c.isalpha() for c in new["system"])
        for a, b in zip(src["conversations"], new["conversations"]):
            if a["from"] in ("function_call", "observation"):
                assert _same(a, b)                       # untranslated, byte for byte
            else:
                assert a["from"] == b["from"] and a["value"] != b["value"]
    assert (out[0]["id"], out[0]["lang"], out[1]["id"]) == ("wx-0-ko", "ko", "wx-1")   # the id / lang rule
    assert llamafactory_load(str(tmp_path / "in"), "toolcall") == 2                  # the input loads...
    assert _loads_upstream(tmp_path, "toolcall") == 2                                # ...and so does ours
    assert _registry(tmp_path) == GLAIVE_INFO                                         # the same entry


def test_openai_tool_calls_and_tool_messages_pass_through(tmp_path):
    stats, out = _translate(tmp_path, "chat.jsonl", OPENAI, OPENAI_INFO)
    assert stats["format"] == "messages"
    src, new = OPENAI[0]["messages"], out[0]["messages"]
    assert _same(src[2], new[2]) and _same(src[3], new[3])        # tool_calls (content null), role tool
    assert all(a["content"] != b["content"] for a, b in zip(src, new) if a["role"] != "tool" and a["content"])
    assert _same(OPENAI[0]["tools"], out[0]["tools"]) and out[0]["id"] == "oa_7_ko"
    assert llamafactory_load(str(tmp_path / "in"), "chat") == 1
    assert _loads_upstream(tmp_path, "chat") == 1


def test_openai_content_parts_translate_text_parts_only(tmp_path):
    stats, out = _translate(tmp_path, "parts.jsonl", PARTS)
    assert stats["format"] == "messages"
    src, new = PARTS[0]["messages"], out[0]["messages"]
    assert _same(src[0]["content"][0], new[0]["content"][0])      # the image part
    assert new[0]["content"][1]["text"] != src[0]["content"][1]["text"]
    assert _same(src[1], new[1]) and _same(src[2], new[2])        # tool call and tool answer, even as parts
    assert new[3]["content"][0]["text"] != src[3]["content"][0]["text"] and out[0]["id"] == "p-ko"


@pytest.mark.parametrize("with_info", [True, False])
def test_alpaca_with_system_and_history(tmp_path, with_info):
    stats, out = _translate(tmp_path, "alp.json", ALPACA, ALPACA_INFO if with_info else None)
    assert stats["format"] == "alpaca"
    for src, new in zip(ALPACA, out):
        assert set(src) == set(new)
        for col in ("instruction", "output", "system"):
            assert new[col] != src[col]
        assert new["input"] == src["input"] == "" or new["input"] != src["input"]
        assert len(new.get("history", [])) == len(src.get("history", []))
    assert out[0]["history"][0][0] != ALPACA[0]["history"][0][0]
    assert (out[0]["id"], out[1]["id"], out[1]["language"]) == ("a-0-ko", "a-1", "ko")
    if with_info:
        assert _loads_upstream(tmp_path, "alp") == 2
    else:      # nothing says how LLaMA-Factory should read it: no dataset_info.json is made up
        assert not (tmp_path / "out" / "ko" / "dataset_info.json").exists()


def test_role_content_tags_under_conversations_are_translated(tmp_path):
    stats, out = _translate(tmp_path, "roles.json", ROLE_TAGS)
    assert stats["format"] == "sharegpt" and stats["bad_records"] == 0
    for a, b in zip(ROLE_TAGS[0]["conversations"], out[0]["conversations"]):
        assert a["role"] == b["role"] and a["content"] != b["content"]
    info = {"roles": {"file_name": "roles.json", "formatting": "sharegpt",
                      "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                               "assistant_tag": "assistant"}}}
    (tmp_path / "out" / "ko" / "dataset_info.json").write_text(json.dumps(info))   # the input had none
    assert _loads_upstream(tmp_path, "roles") == 1


def test_llamafactory_demo_with_its_dataset_info_still_loads(eval_dir, tmp_path):
    """The real mllm_demo.json, its dataset_info.json found beside it; output + images load upstream with the
    dataset_info.json translate wrote (only the images are the user's to bring along)."""
    src = eval_dir / "text" / "llamafactory"
    stats = run(str(src / "mllm_demo.json"), ["ko", "vi"], str(tmp_path / "out"), CFG)
    assert stats["format"] == "sharegpt" and stats["langs"]["ko"]["kept"] == 6
    upstream = json.loads((src / "dataset_info.json").read_text())
    for lang in ("ko", "vi"):
        out = tmp_path / "out" / lang
        assert _registry(tmp_path, lang) == {"mllm_demo": upstream["mllm_demo"]}   # this input's entry only
        shutil.copytree(src / "mllm_demo_data", out / "mllm_demo_data")
        assert llamafactory_load(str(out), "mllm_demo") == 6


def test_a_second_input_merges_into_the_output_registry_and_a_failed_rerun_leaves_no_entry(tmp_path):
    """Two inputs translated into one OUT share OUT/ko/dataset_info.json (each entry kept, both load); an
    entry the user added there stays; a rerun whose every record fails removes its file and its entry."""
    _translate(tmp_path, "toolcall.json", GLAIVE, {**GLAIVE_INFO, **ALPACA_INFO})
    (tmp_path / "out" / "ko" / "dataset_info.json").write_text(json.dumps(
        {"mine": {"file_name": "mine.json"}, **_registry(tmp_path)}))
    _translate(tmp_path, "alp.json", ALPACA)              # the dataset_info.json beside it names it too
    assert list(_registry(tmp_path)) == ["mine", "toolcall", "alp"]
    assert _loads_upstream(tmp_path, "toolcall") == 2 and _loads_upstream(tmp_path, "alp") == 2
    _write(tmp_path / "in" / "alp.json", [{"instruction": 3}])      # now every record is a bad_record
    stats = run(str(tmp_path / "in" / "alp.json"), ["ko"], str(tmp_path / "out"), CFG)
    assert stats["langs"]["ko"]["kept"] == 0 and not (tmp_path / "out" / "ko" / "alp.json").exists()
    assert list(_registry(tmp_path)) == ["mine", "toolcall"]


def test_an_output_registry_entry_of_the_same_name_for_another_file_is_refused_before_any_work(tmp_path):
    from polycap.pipelines.cli import EXIT_USAGE, app

    ko = tmp_path / "out" / "ko"
    ko.mkdir(parents=True)
    theirs = {"toolcall": {"file_name": "their_file.json"}}
    (ko / "dataset_info.json").write_text(json.dumps(theirs))
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "toolcall.json", GLAIVE)
    (tmp_path / "in" / "dataset_info.json").write_text(json.dumps(GLAIVE_INFO))
    r = CliRunner().invoke(app, ["translate", str(tmp_path / "in" / "toolcall.json"), "--to", "ko", "--out",
                                 str(tmp_path / "out"), "--set", f"backend={FAKE}", "--set", "model=fake"])
    assert r.exit_code == EXIT_USAGE and "'toolcall' loads another file" in r.output
    assert json.loads((ko / "dataset_info.json").read_text()) == theirs and sorted(ko.iterdir()) == [
        ko / "dataset_info.json"]


def test_the_upstream_loader_check_can_fail(tmp_path):
    """The loader logic is a real check: a role outside the dataset_info tags fails it (and our translate
    makes that record a bad_record reject rather than translating it)."""
    bad = [dict(GLAIVE[1], conversations=GLAIVE[1]["conversations"] + [{"from": "bot", "value": "Hi."},
                                                                      {"from": "gpt", "value": "Bye."}])]
    (tmp_path / "dataset_info.json").write_text(json.dumps(GLAIVE_INFO))
    _write(tmp_path / "toolcall.json", bad)
    with pytest.raises(AssertionError):
        llamafactory_load(str(tmp_path), "toolcall")
    stats = run(str(tmp_path / "toolcall.json"), ["ko"], str(tmp_path / "out"), CFG)
    assert stats["bad_records"] == 1 and stats["balanced"]


def test_cli_dataset_info_options_and_ambiguous_input(tmp_path):
    from polycap.pipelines.cli import EXIT_USAGE, app

    _write(tmp_path / "custom.json", GLAIVE)
    (tmp_path / "info.json").write_text(json.dumps({"x": GLAIVE_INFO["toolcall"]}))
    runner = CliRunner()
    base = ["translate", str(tmp_path / "custom.json"), "--to", "ko", "--out", str(tmp_path / "o"),
            "--set", f"backend={FAKE}", "--set", "model=fake"]
    r = runner.invoke(app, [*base, "--dataset-info", str(tmp_path / "info.json")])
    assert r.exit_code == EXIT_USAGE and "--dataset-name" in r.output          # the entry names another file
    r = runner.invoke(app, [*base, "--dataset-info", str(tmp_path / "info.json"), "--dataset-name", "x"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["format"] == "sharegpt"
    _write(tmp_path / "both.jsonl", [{"instruction": "a", "output": "b", "messages": []}])
    r = runner.invoke(app, ["translate", str(tmp_path / "both.jsonl"), "--to", "ko", "--out", str(tmp_path / "p")])
    assert r.exit_code == EXIT_USAGE and "--format" in r.output
