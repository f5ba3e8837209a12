"""`polycap translate`: an English dataset file -> the same format per target language, plus rejects and stats."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from polycap.pipelines.run import WriteCount
from polycap.schemas import Reason, Reject
from polycap.schemas.config import TranslateConfig
from polycap.sharding.rejects import WriteRejects
from polycap.transforms.dataset_formats import (
    FormatError,
    RawRecord,
    RecordWriter,
    container_of,
    detect_format,
    read_records,
    set_slots,
    text_slots,
    write_records,
)
from polycap.transforms.translate import TextUnit, Translated, TranslateTexts

READ_STAGE = "translate_read"
STAGE = "translate"
INPUTS_FILE = "_inputs.json"
PARTS_DIR = "_parts"           # per-language temp parts of an output file, removed once it is written
PART_RECORDS = 5000            # records per part: what one worker holds while writing
SEP = "\t"


def _unit_key(index: int, path: tuple) -> str:
    return f"{index}{SEP}{json.dumps(list(path))}"


def _parse_unit_key(key: str) -> tuple[int, tuple]:
    idx, path = key.split(SEP, 1)
    return int(idx), tuple(json.loads(path))


class _ExplodeFn(beam.DoFn):
    """RawRecord -> TextUnits (one per text slot); unparsable or malformed records -> Reject."""

    def __init__(self, fmt: str, fields: list[str], uri: str):
        self.fmt, self.fields, self.uri = fmt, fields, uri

    def process(self, raw: RawRecord) -> Iterator[Any]:
        err = raw.error
        if not err:
            try:
                slots = text_slots(raw.record, self.fmt, self.fields)
            except FormatError as e:
                err = str(e)
        if err:
            yield beam.pvalue.TaggedOutput("bad", Reject(
                key=raw.rid, source_uri=f"{self.uri}#{raw.index}", stage=READ_STAGE, reason=Reason.BAD_RECORD,
                detail=err[:2000], source_name=os.path.basename(self.uri)))
            return
        yield beam.pvalue.TaggedOutput("ok", (raw.index, raw))
        for path, text in slots:
            yield TextUnit(_unit_key(raw.index, path), text)


class _MergeFn(beam.DoFn):
    """(index, {raw, results}) -> per language: (lang, (index, container, record)) or a Reject."""

    def __init__(self, fmt: str, langs: list[str], uri: str):
        self.fmt, self.langs, self.uri = fmt, langs, uri

    def process(self, element) -> Iterator[Any]:
        index, grouped = element
        raws, results = list(grouped["raw"]), list(grouped["results"])
        if not raws:
            return
        raw: RawRecord = raws[0]
        for lang in self.langs:
            mine: list[Translated] = [r for r in results if r.lang == lang]
            failed = sorted((r for r in mine if r.text is None), key=lambda r: r.key)
            if failed:
                f = failed[0]
                slot = json.dumps(_parse_unit_key(f.key)[1])
                yield beam.pvalue.TaggedOutput("rejects", Reject(
                    key=raw.rid, source_uri=f"{self.uri}#{index}", stage=STAGE,
                    reason=Reason(f.reason or Reason.INTERNAL_ERROR),
                    detail=f"lang={lang} slot={slot} ({len(failed)} of {len(mine)} texts failed): {f.detail}"[:2000],
                    source_name=os.path.basename(self.uri)))
                continue
            texts = {_parse_unit_key(r.key)[1]: r.text for r in mine if r.text is not None}  # all, here
            part = 0 if raw.container else index // PART_RECORDS  # a shard's records stay in one group
            yield (lang, raw.container, part), (index, set_slots(raw.record, self.fmt, lang, texts))


class _WritePartFn(beam.DoFn):
    """One group of at most PART_RECORDS records of one (language, output file), sorted by input position.

    A shard's group is its whole tar (shards are small), written in place. A dataset file's groups are written
    as pickled parts under `<lang>/_parts/<name>/` and yield ((lang, name), part path) for _CommitFileFn, so no
    worker ever holds a whole file of a million conversations."""

    def __init__(self, out_dir: str, in_path: str, container: str):
        self.out_dir, self.in_path, self.container = out_dir, in_path, container

    def process(self, element) -> Iterator[tuple[tuple[str, str], str]]:
        (lang, shard, part), items = element
        records = [rec for _, rec in sorted(items, key=lambda x: x[0])]
        if self.container == "shards":
            write_records(os.path.join(self.out_dir, lang, shard), self.container, records)
            return
        name = os.path.basename(self.in_path)
        path = os.path.join(self.out_dir, lang, PARTS_DIR, name, f"{part:08d}.pkl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(f"{path}.tmp", "wb") as f:
            pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(f"{path}.tmp", path)
        yield (lang, name), path


class _CommitFileFn(beam.DoFn):
    """((lang, name), part paths) -> the output file, streamed part by part in input order; parts removed."""

    def __init__(self, out_dir: str, in_path: str, container: str):
        self.out_dir, self.in_path, self.container = out_dir, in_path, container

    def process(self, element) -> Iterator[str]:
        (lang, name), parts = element
        schema = None
        if self.container == "parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(self.in_path)  # the output keeps the input's column types
        out = os.path.join(self.out_dir, lang, name)
        writer = RecordWriter(out, self.container, schema)
        for part in sorted(parts):  # zero-padded part numbers: name order is input order
            with open(part, "rb") as f:
                for rec in pickle.load(f):
                    writer.write(rec)
        writer.close()
        shutil.rmtree(os.path.join(self.out_dir, lang, PARTS_DIR, name), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(self.out_dir, lang, PARTS_DIR))  # only when no other file's parts remain
        yield out


def rejects_subdir(in_path: str) -> str:
    """This input's folder under `OUT/rejects/`: translating another file into OUT keeps this one's rejects."""
    return os.path.basename(os.path.normpath(in_path))


class _ReadFn(beam.DoFn):
    """Input path -> its RawRecords, read on a worker (not in the launcher) and streamed where the format allows."""

    def process(self, path: str) -> Iterator[RawRecord]:
        yield from read_records(path)


def _first_record(in_path: str) -> Any:
    """The first parsable record (for format detection); reads no further than it."""
    with contextlib.closing(read_records(in_path)) as records:
        return next((r.record for r in records if r.record is not None), None)


def _counter(result: Any, name: str) -> int:
    try:
        from apache_beam.metrics.metric import MetricsFilter

        res = result.metrics().query(MetricsFilter().with_namespace("translate").with_name(name))
        return int(sum(c.committed or 0 for c in res["counters"]))
    except Exception:  # noqa: BLE001 - a runner without metrics support still gets its output
        return -1


def _stats(out_dir: str, langs: list[str], fmt: str, result: Any, started: float, in_path: str) -> dict:
    """Counts for THIS input only: output files written for other inputs into the same OUT are not counted."""
    from polycap.sharding.rejects import read_rejects

    mine = None if os.path.isdir(in_path) else {os.path.basename(in_path)}
    with open(os.path.join(out_dir, INPUTS_FILE), encoding="utf-8") as fh:
        inputs = json.load(fh)["inputs"]   # counted in the pipeline, as the records were read
    rej = read_rejects(out_dir, rejects_subdir(in_path)).to_pylist()
    bad = sum(1 for r in rej if r["stage"] == READ_STAGE)
    by_lang = {}
    for lang in langs:
        kept_path = os.path.join(out_dir, lang)
        kept = 0
        for f in os.listdir(kept_path) if os.path.isdir(kept_path) else []:
            if (mine is not None and f not in mine) or f.startswith("_") or f.endswith(".tmp"):
                continue  # another input's output, or temp parts
            kept += sum(1 for _ in read_records(os.path.join(kept_path, f)))
        rejected = bad + sum(1 for r in rej if r["stage"] == STAGE and f"lang={lang} " in r["detail"])
        by_lang[lang] = {"kept": kept, "rejected": rejected, "balanced": kept + rejected == inputs}
    return {"inputs": inputs, "format": fmt, "langs": by_lang, "bad_records": bad,
            "rejects_by_reason": dict(Counter(r["reason"] for r in rej)),
            "requests": _counter(result, "requests"), "cache_hits": _counter(result, "cache_hits"),
            "retries": _counter(result, "retries"), "seconds": round(time.time() - started, 2),
            "balanced": all(v["balanced"] for v in by_lang.values())}


def run(in_path: str, to: list[str], out_dir: str, cfg: TranslateConfig, fmt: str = "auto",
        field: str = "caption", pipeline_args: list[str] | None = None) -> dict:
    """Translate `in_path` into each language of `to`; returns (and writes) `_stats.json`.

    Every input record ends as one output record or one reject row per language; a record that cannot be
    parsed is one BAD_RECORD row (stage translate_read) and counts as rejected in every language.
    """
    started = time.time()
    if not os.path.exists(in_path):
        raise FileNotFoundError(f"input not found: {in_path}")
    container = container_of(in_path)
    first = _first_record(in_path)  # also: a broken JSON array fails here, before any work starts
    if fmt == "auto":
        fmt = detect_format(first, container)
    fields = [f.strip() for f in field.split(",") if f.strip()]
    langs = list(to)
    os.makedirs(out_dir, exist_ok=True)
    uri = os.path.abspath(in_path)
    opts = PipelineOptions(pipeline_args or [])
    p = beam.Pipeline(options=opts)
    raws = (p | "Input" >> beam.Create([in_path]) | "Read" >> beam.ParDo(_ReadFn())
            | "Spread" >> beam.Reshuffle())  # one reader per file; the records then fan out to all workers
    _ = (raws | "One" >> beam.Map(lambda _: 1) | "CountInputs" >> beam.CombineGlobally(sum)
         | "WriteInputCount" >> beam.ParDo(WriteCount(os.path.join(out_dir, INPUTS_FILE))))
    parts = (raws
             | "Explode" >> beam.ParDo(_ExplodeFn(fmt, fields, uri)).with_outputs("ok", "bad", main="units"))
    translated = parts["units"] | "Translate" >> TranslateTexts(cfg, os.path.join(out_dir, "_cache", "translate"),
                                                              langs)
    by_index = translated | "ByRecord" >> beam.Map(lambda r: (_parse_unit_key(r.key)[0], r))
    merged = ({"raw": parts["ok"], "results": by_index} | "Join" >> beam.CoGroupByKey()
              | "Merge" >> beam.ParDo(_MergeFn(fmt, langs, uri)).with_outputs("rejects", main="records"))
    _ = (merged["records"] | "ByPart" >> beam.GroupByKey()
         | "WriteParts" >> beam.ParDo(_WritePartFn(out_dir, in_path, container))
         | "ByFile" >> beam.GroupByKey()
         | "CommitFiles" >> beam.ParDo(_CommitFileFn(out_dir, in_path, container)))
    _ = ((parts["bad"], merged["rejects"]) | "AllRejects" >> beam.Flatten()
         | "WriteRejects" >> WriteRejects(out_dir, rejects_subdir(in_path)))
    result = p.run()
    result.wait_until_finish()
    stats = _stats(out_dir, langs, fmt, result, started, in_path)
    with open(os.path.join(out_dir, "_stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2, ensure_ascii=False)
    return stats
