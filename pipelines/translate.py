"""`polycap translate`: an English dataset file -> the same format per target language, plus rejects and stats."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from polycap.pipelines.run import WriteCount
from polycap.schemas import Reason, Reject
from polycap.schemas.config import ShardsConfig, TranslateConfig
from polycap.sharding import fs
from polycap.sharding.rejects import WriteRejects
from polycap.sharding.run_stats import STATS_NAME, CountAll, MergeCounts, WriteJson, count_key
from polycap.transforms.dataset_formats import (
    FormatError,
    Layout,
    RawRecord,
    RecordWriter,
    container_of,
    count_records,
    read_records,
    set_slots,
    text_slots,
)
from polycap.transforms.dataset_info import (
    INFO_FILE,
    InfoEntry,
    check_output_registry,
    find_entry,
    register_output,
    resolve_layout,
    unregister_output,
)
from polycap.transforms.progress import PROGRESS_DIR, CountProgress, ProgressMonitor, progress_dir
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

    def __init__(self, fmt: str | Layout, fields: list[str], uri: str):
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
                detail=err[:2000], source_name=fs.basename(self.uri)))
            return
        yield beam.pvalue.TaggedOutput("ok", (raw.index, raw))
        for path, text in slots:
            yield TextUnit(_unit_key(raw.index, path), text)


class _MergeFn(beam.DoFn):
    """(index, {raw, results}) -> per language: ((lang, part), (index, record)) or a Reject."""

    def __init__(self, langs: list[str], uri: str):
        self.langs, self.uri = langs, uri

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
                    source_name=fs.basename(self.uri)))
                continue
            texts = {_parse_unit_key(r.key)[1]: r.text for r in mine if r.text is not None}  # all, here
            yield (lang, index // PART_RECORDS), (index, set_slots(raw.record, lang, texts))


class _WritePartFn(beam.DoFn):
    """One group of at most PART_RECORDS records of one (language, output file), sorted by input position.

    Groups are written as pickled parts under `<lang>/_parts/<name>/` (through the filesystem layer, so workers
    on other machines read them) and yield ((lang, name), part path) for _CommitFileFn, so no worker ever holds
    a whole file of a million conversations. (Shards are translated by pipelines/translate_shards.py.)"""

    def __init__(self, out_dir: str, in_path: str):
        self.out_dir, self.in_path = out_dir, in_path

    def process(self, element) -> Iterator[Any]:
        (lang, part), items = element
        records = [rec for _, rec in sorted(items, key=lambda x: x[0])]
        name = fs.basename(self.in_path)
        path = fs.join(self.out_dir, lang, PARTS_DIR, name, f"{part:08d}.pkl")
        fs.write_bytes(path, pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))
        yield (lang, name), path


class _CommitFileFn(beam.DoFn):
    """((lang, name), part paths) -> the output file, streamed part by part in input order; parts removed;
    with the input's dataset_info.json entry `info`, the file's entry merged into `<lang>/dataset_info.json`.
    Yields {"kept:<lang>": records written}. A retry after the parts were removed finds the file in place and
    only counts it (and registers it)."""

    def __init__(self, out_dir: str, in_path: str, container: str, info: InfoEntry | None = None):
        self.out_dir, self.in_path, self.container, self.info = out_dir, in_path, container, info

    def process(self, element) -> Iterator[dict[str, int]]:
        (lang, name), parts = element
        out = fs.join(self.out_dir, lang, name)
        parts_dir = fs.join(self.out_dir, lang, PARTS_DIR, name)
        if not fs.list_dir(parts_dir) and fs.is_file(out):
            self._register(lang, name)
            yield {f"kept:{lang}": sum(1 for _ in read_records(out))}
            return
        schema = fs.parquet_schema(self.in_path) if self.container == "parquet" else None  # keep column types
        writer = RecordWriter(out, self.container, schema)
        for part in sorted(parts):  # zero-padded part numbers: name order is input order
            for rec in pickle.loads(fs.read_bytes(part)):
                writer.write(rec)
        writer.close()
        fs.delete_prefix(parts_dir)
        fs.remove_empty_dir(fs.join(self.out_dir, lang, PARTS_DIR))  # only when no other file's parts remain
        self._register(lang, name)
        yield {f"kept:{lang}": writer.count}

    def _register(self, lang: str, name: str) -> None:
        if self.info is not None:   # after the file is in place: an entry never names a missing file
            register_output(fs.join(self.out_dir, lang), self.info, name)


class UsageError(ValueError):
    """A command that cannot run as given (e.g. an output that would overwrite its input): exit code 2, nothing
    was started or deleted."""


def _real(path: str) -> str:
    """A local path with links resolved (so `OUT/ko/x.json` and a link to it are the same); URLs as they are."""
    return path.rstrip("/") if "://" in path else os.path.realpath(path)


def refuse_outputs_over_inputs(inputs: list[str], files: list[str], dirs: list[str]) -> None:
    """UsageError when an input is one of the files this command writes or deletes, or lies in one of its
    folders: translating `OUT/ko/x.json` into `OUT` would overwrite its own input while reading it."""
    for inp in inputs:
        real = _real(inp)
        for f in files:
            if real == _real(f):
                raise UsageError(f"translate: the input {inp} is also an output of this command ({f}); "
                                 "choose another --out")
        for d in dirs:
            if real == _real(d) or real.startswith(_real(d) + "/"):
                raise UsageError(f"translate: the input {inp} lies in {d}, which this command writes and "
                                 "cleans up; choose another --out")


def owned_paths(out_dir: str, in_path: str, langs: list[str]) -> tuple[list[str], list[str]]:
    """(files, folders) that translating the dataset file `in_path` into `out_dir` writes or deletes."""
    name = fs.basename(in_path)
    files = [fs.join(out_dir, lang, f) for lang in langs for f in (name, INFO_FILE)]
    files += [fs.join(out_dir, STATS_NAME), fs.join(out_dir, INPUTS_FILE)]
    dirs = [fs.join(out_dir, lang, PARTS_DIR, name) for lang in langs]
    dirs += [fs.join(out_dir, d) for d in ("_cache", PROGRESS_DIR)]
    dirs += [fs.join(out_dir, "rejects", rejects_subdir(in_path))]
    return files, dirs


def remove_previous_outputs(out_dir: str, in_path: str, langs: list[str]) -> None:
    """Delete what an earlier run of this input left for these languages (output files, their dataset_info.json
    entries, leftover parts), so a run whose records all fail in a language leaves no stale translation behind
    looking current."""
    name = fs.basename(in_path)
    fs.delete([fs.join(out_dir, lang, name) for lang in langs])
    for lang in langs:
        unregister_output(fs.join(out_dir, lang), name)
        fs.delete_prefix(fs.join(out_dir, lang, PARTS_DIR, name))


@contextlib.contextmanager
def live_progress(out_dir: str, every_s: float, total: int | None, langs: int) -> Iterator[str]:
    """A progress folder for one run (`transforms/progress.py`) and the launcher thread that prints its counts
    every `every_s` seconds (0: none): inputs read, and kept / rejected summed over the `langs` languages. The
    last line (final totals) is printed when the body ends without error; the folder is removed either way."""
    folder = progress_dir(out_dir, uuid.uuid4().hex[:12])
    monitor = ProgressMonitor(folder, every_s, total, per_input=langs).start()
    ok = False
    try:
        yield folder
        ok = True
    finally:
        monitor.stop(final_line=ok)
        fs.delete_prefix(folder)
        fs.remove_empty_dir(fs.join(out_dir, PROGRESS_DIR))   # another run's progress may still be there


def watch(pc: beam.PCollection, label: str, folder: str, name: str, every_s: float, weight: Any = None) -> None:
    """Count `pc` into the progress count `name` (nothing when progress is off)."""
    if every_s > 0:
        _ = pc | label >> CountProgress(folder, name, every_s, weight)


def rejects_subdir(in_path: str) -> str:
    """This input's folder under `OUT/rejects/`: translating another file into OUT keeps this one's rejects."""
    return fs.basename(in_path)


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


def _reject_count(r: Reject) -> dict[str, int]:
    """A read failure counts against every language; a translate reject names its language in the detail."""
    if r.stage == READ_STAGE:
        return {"bad": 1, f"reason:{r.reason}": 1}
    lang = r.detail.split(" ", 1)[0].removeprefix("lang=")
    return {f"rejected:{lang}": 1, f"reason:{r.reason}": 1}


def _file_count(_: Any) -> dict[str, int]:
    return {"reject_files": 1}


def stats_from_counts(counts: dict[str, int], langs: list[str], fmt: str, started: float) -> dict[str, Any]:
    """`_stats.json` for THIS input, from the counts merged in the pipeline (output files written for other
    inputs into the same OUT are not counted: only what this run wrote is)."""
    inputs, bad = counts.get("inputs", 0), counts.get("bad", 0)
    by_lang = {}
    for lang in langs:
        kept = counts.get(f"kept:{lang}", 0)
        rejected = bad + counts.get(f"rejected:{lang}", 0)
        by_lang[lang] = {"kept": kept, "rejected": rejected, "balanced": kept + rejected == inputs}
    return {"inputs": inputs, "format": fmt, "langs": by_lang, "bad_records": bad,
            "rejects_by_reason": count_key("reason", counts), "seconds": round(time.time() - started, 2),
            "balanced": all(v["balanced"] for v in by_lang.values())}


def nothing_translated(stats: dict[str, Any]) -> bool:
    """True when the input had records but no language kept any: the command then exits non-zero."""
    langs = stats.get("langs") or {}
    return bool(stats.get("inputs")) and bool(langs) and all(not v.get("kept") for v in langs.values())


def build_pipeline(p: beam.Pipeline, in_path: str, out_dir: str, cfg: TranslateConfig, langs: list[str],
                   layout: Layout, info: InfoEntry | None, progress: str, progress_s: float, started: float) -> None:
    """The translate job, ending in one worker writing `OUT/_stats.json` after files and rejects are committed.
    With `progress_s` > 0, records read, kept and rejected (per language) are counted into `progress` too."""
    uri, container, fields = in_path, container_of(in_path), list(layout.fields)
    raws = (p | "Input" >> beam.Create([in_path]) | "Read" >> beam.ParDo(_ReadFn())
            | "Spread" >> beam.Reshuffle())  # one reader per file; the records then fan out to all workers
    n_inputs = raws | "One" >> beam.Map(lambda _: 1) | "CountInputs" >> beam.CombineGlobally(sum)
    _ = n_inputs | "WriteInputCount" >> beam.ParDo(WriteCount(fs.join(out_dir, INPUTS_FILE)))
    parts = (raws
             | "Explode" >> beam.ParDo(_ExplodeFn(layout, fields, uri)).with_outputs("ok", "bad", main="units"))
    translated = parts["units"] | "Translate" >> TranslateTexts(cfg, fs.join(out_dir, "_cache", "translate"), langs)
    by_index = translated | "ByRecord" >> beam.Map(lambda r: (_parse_unit_key(r.key)[0], r))
    merged = ({"raw": parts["ok"], "results": by_index} | "Join" >> beam.CoGroupByKey()
              | "Merge" >> beam.ParDo(_MergeFn(langs, uri)).with_outputs("rejects", main="records"))
    written = (merged["records"] | "ByPart" >> beam.GroupByKey()
               | "WriteParts" >> beam.ParDo(_WritePartFn(out_dir, in_path)))
    kept_files = (written | "ByFile" >> beam.GroupByKey()
                  | "CommitFiles" >> beam.ParDo(_CommitFileFn(out_dir, in_path, container, info)))
    rejects = (parts["bad"], merged["rejects"]) | "AllRejects" >> beam.Flatten()
    reject_files = rejects | "WriteRejects" >> WriteRejects(out_dir, rejects_subdir(in_path))
    watch(raws, "ProgressIn", progress, "inputs", progress_s)
    watch(merged["records"], "ProgressKept", progress, "kept", progress_s)
    watch(merged["rejects"], "ProgressRejected", progress, "rejected", progress_s)
    watch(parts["bad"], "ProgressBad", progress, "rejected", progress_s, lambda _, n=len(langs): n)  # every lang
    # Counted in the pipeline and written once by a worker after every file is committed (sharding/run_stats.py)
    counts = (n_inputs | "InputCount" >> beam.Map(lambda n: {"inputs": int(n)}),
              rejects | "CountRejects" >> CountAll(_reject_count),
              kept_files | "CountKept" >> CountAll(lambda c: c),
              reject_files | "CountRejectFiles" >> CountAll(_file_count))
    _ = (counts | "AllCounts" >> beam.Flatten() | "MergeCounts" >> beam.CombineGlobally(MergeCounts())
         | "WriteStats" >> beam.ParDo(WriteJson(fs.join(out_dir, STATS_NAME), partial(
             stats_from_counts, langs=langs, fmt=layout.name, started=started))))


def run(in_path: str, to: list[str], out_dir: str, cfg: TranslateConfig, fmt: str = "auto",
        field: str = "caption", pipeline_args: list[str] | None = None, dataset_info: str | None = None,
        dataset_name: str | None = None, shards: ShardsConfig | None = None, progress_s: float = 5.0) -> dict:
    """Translate `in_path` into each language of `to`; returns (and writes) `_stats.json`.

    `dataset_info` / `dataset_name`: a LLaMA-Factory dataset_info.json and entry whose formatting, columns and
    tags say where the texts are (by default the dataset_info.json next to the input, when it names the file);
    each translated file then gets that entry in its folder's dataset_info.json (`transforms/dataset_info.py`).

    Every input record ends as one output record or one reject row per language; a record that cannot be
    parsed is one BAD_RECORD row (stage translate_read) and counts as rejected in every language. A progress
    line goes to stderr every `progress_s` seconds (0: none).

    Shards (a run dir, shard dir, `.tar` or glob of tars) become one shard set in `out_dir`
    (`pipelines/translate_shards.py`; `shards` sets its max_samples). Refused before any work: a language
    that is not a tag (ConfigError: the rule of `TranslateConfig.validate`) and an output that would
    overwrite the input (UsageError). This input's earlier outputs for these languages are removed first.
    """
    started = time.time()
    fs.configure(pipeline_args)   # the launcher's peek and the final read use the job's filesystem options
    in_path, out_dir = fs.abs_path(in_path), fs.abs_path(out_dir)
    langs = list(to)
    cfg = dataclasses.replace(cfg, to=langs, enabled=True)   # checks every tag (ConfigError), as the CLI's config
    if in_path.endswith(".tar") or fs.is_dir(in_path):
        if fmt not in ("auto", "shards") or dataset_info or dataset_name:
            raise UsageError(f"translate: {in_path} is a shard input: --format {fmt} and --dataset-info / "
                             "--dataset-name apply to dataset files")
        from polycap.pipelines.translate_shards import run_shards

        return run_shards(in_path, langs, out_dir, cfg, pipeline_args, shards, started, progress_s)
    if not fs.exists(in_path):
        raise FileNotFoundError(f"input not found: {in_path}")
    container_of(in_path)   # FormatError for a file type no reader knows
    if fmt == "shards":
        raise UsageError(f"translate: --format shards needs a shard dir or .tar, not {in_path}")
    refuse_outputs_over_inputs([in_path], *owned_paths(out_dir, in_path, langs))
    first = _first_record(in_path)  # also: a broken JSON array fails here, before any work starts
    fields = [f.strip() for f in field.split(",") if f.strip()]
    info = find_entry(in_path, dataset_info, dataset_name)
    layout = resolve_layout(fmt, first, fields, in_path, info)
    if info is not None:   # its entry will be merged into each OUT/<lang>/dataset_info.json: check they take it
        for lang in langs:
            check_output_registry(fs.join(out_dir, lang), info, fs.basename(in_path))
    fs.mkdirs(out_dir)
    stats_path = fs.join(out_dir, STATS_NAME)
    fs.delete([stats_path])   # a failed run must not leave the previous run's stats looking current
    remove_previous_outputs(out_dir, in_path, langs)
    with live_progress(out_dir, progress_s, count_records(in_path) if progress_s > 0 else None, len(langs)) as prog:
        p = beam.Pipeline(options=PipelineOptions(pipeline_args or []))
        build_pipeline(p, in_path, out_dir, cfg, langs, layout, info, prog, progress_s, started)
        result = p.run()
        result.wait_until_finish()
    stats = fs.read_json(stats_path)   # written by the pipeline; the launcher reads only this small file
    # Backend request counters are Beam metrics: known to a launcher that waited, not part of _stats.json.
    stats.update({name: _counter(result, name) for name in ("requests", "cache_hits", "retries")})
    return stats
