"""`polycap translate` on polycap shards: one output shard set holding each sample once, with new languages.

The input (a run dir, a shard dir, one `.tar` or a glob of tars, all of one split) is read on the workers, one
reader per tar. Each sample comes back as a `Sample` (`record_json.sample_from_record`), a key seen twice keeps
the first copy in shard-name order, its image is staged under `OUT/_staging/<run id>` (as `polycap run` does),
and its English caption and conversation go through the same `TranslateTexts` and `merge_sample` as the main
job, then `BuildRecords`. `WriteShards` writes `OUT/shards/<split>-NNNNNN.tar` and `OUT/manifest.parquet` the
way `polycap run` does (atomic commit, the same layout and validator): every sample keeps its image (stored
once, not once per language), its captions, and gains `KEY.<lang>.txt` for every target language.

A sample whose translation failed in a language is still written (it keeps its other captions; `run` would drop
it only when every language failed): its `KEY.<lang>.txt` is empty, its json says `why: translate_failed`
(`provenance.translate.failed[lang]` says why), and it gets one reject row for that language. A caption the
input already had in that language is kept. Counts per language: `kept` (translated, or nothing English to
translate) + `rejected` (failed, or unreadable input) == inputs; `samples_written` + `bad_records` == inputs.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from polycap.pipelines import translate as tr  # the file-format command (it imports this module lazily)
from polycap.schemas import Reason, Reject
from polycap.schemas.config import ConfigError, ShardsConfig, TranslateConfig
from polycap.sharding import fs, record_json
from polycap.sharding.manifest import MANIFEST_NAME, SHARDS_DIR, resolve_dirs
from polycap.sharding.members import LANG_RE, SHARD_RE
from polycap.sharding.reader import ShardError, iter_shard, list_shards
from polycap.sharding.rejects import WriteRejects
from polycap.sharding.run_stats import STATS_NAME, CountAll, MergeCounts, WriteJson
from polycap.sharding.staging import STAGING_DIR, clear_staging, stage_bytes, staging_root
from polycap.sharding.writer import SAFE_KEY_RE, WriteShards
from polycap.transforms.build_records import build_records
from polycap.transforms.progress import PROGRESS_DIR
from polycap.transforms.translate import STAGE, TranslateTexts, merge_sample, sample_units


def input_shards(in_path: str) -> list[str]:
    """The tars a shard input names (run dir, shard dir, one tar, or a glob); FileNotFoundError when none."""
    shards = list_shards(in_path)
    if not shards:
        raise FileNotFoundError(f"no shards ({{split}}-NNNNNN.tar) in {in_path}")
    return shards


def split_of(shards: list[str], default: str) -> str:
    """The one split the input's shard names share (`default` for a tar not named like a shard)."""
    splits = sorted({m["split"] if (m := SHARD_RE.match(fs.basename(s))) else default for s in shards})
    if len(splits) > 1:
        raise tr.UsageError(f"translate: the input holds shards of splits {', '.join(splits)}; translate one split "
                            f"at a time (e.g. IN/shards/{splits[0]}-*.tar) into the same --out")
    return splits[0]


def count_samples(shards: list[str], max_bytes: int = 64 << 20) -> int | None:
    """How many samples the input's shards hold by their manifest (the progress ETA); None when there is no
    manifest beside them (of at most `max_bytes`) or it does not list every one of them."""
    try:
        mpath = fs.join(resolve_dirs(fs.parent(shards[0]))[0], MANIFEST_NAME)
        if not fs.is_file(mpath) or fs.size(mpath) > max_bytes:
            return None
        rows = fs.read_parquet(mpath, columns=["shard", "shard_samples"]).to_pylist()
    except (OSError, ValueError, KeyError):
        return None
    per_shard = {r["shard"]: r["shard_samples"] for r in rows}
    names = [fs.basename(s) for s in shards]
    return sum(per_shard[n] for n in names) if all(n in per_shard for n in names) else None


def _kept_langs(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.startswith("kept:"))


def declared_langs(shard: str) -> list[str]:
    """The languages the first sample of `shard` has a text member for (every sample of a shard set has the
    same ones): the output keeps them. [] when it cannot be read (the job then reports the shard)."""
    try:
        with contextlib.closing(iter_shard(shard)) as samples:
            first = next(samples, None)
    except ShardError:
        return []
    if first is None:
        return []
    return [lang for lang, _ in record_json.langs_of(first.raw)] or sorted(first.json.get("captions") or {})


def check_langs(langs: list[str], existing: list[str]) -> None:
    """Target languages must also be shard member names (one subtag at most) and not collide in case with the
    input's languages (`pt-br` beside `pt-BR` would make two members of one name)."""
    for i, tag in enumerate(langs):
        if not LANG_RE.match(tag):
            raise ConfigError(f"to[{i}]: {tag!r} cannot name a shard text member (a language and at most one "
                              "subtag, like pt-BR)")
        clash = [e for e in existing if e != tag and record_json.member_lang(e) == record_json.member_lang(tag)]
        if clash:
            raise ConfigError(f"to[{i}]: {tag!r} differs only in case from the input's language {clash[0]!r}; "
                              f"use --to {clash[0]}")


def owned_paths(out_dir: str, in_path: str) -> tuple[list[str], list[str]]:
    """(files, folders) that translating `in_path` into `out_dir` as shards writes or deletes."""
    files = [fs.join(out_dir, MANIFEST_NAME), fs.join(out_dir, STATS_NAME), fs.join(out_dir, tr.INPUTS_FILE)]
    dirs = [fs.join(out_dir, d) for d in (SHARDS_DIR, STAGING_DIR, "_cache", PROGRESS_DIR)]
    dirs.append(fs.join(out_dir, "rejects", tr.rejects_subdir(in_path)))
    return files, dirs


class _ReadShardFn(beam.DoFn):
    """A tar -> (key, (shard, position, Sample)) per sample; an unreadable tar or sample -> a Reject."""

    def process(self, shard: str) -> Iterator[Any]:
        name, pos = fs.basename(shard), 0
        try:
            for s in iter_shard(shard):
                try:
                    if not SAFE_KEY_RE.match(s.key):
                        raise ValueError(f"key {s.key!r} is not a dot-free name of [A-Za-z0-9_-]")
                    sample = record_json.sample_from_record(s.json, s.jpg)
                    if sample.key != s.key:
                        raise ValueError(f"json key {sample.key!r} != member key {s.key!r}")
                except (TypeError, KeyError, ValueError) as e:
                    yield beam.pvalue.TaggedOutput("bad", Reject(
                        key=s.key, source_uri=f"{shard}#{s.key}", stage=tr.READ_STAGE, reason=Reason.BAD_RECORD,
                        detail=f"{name}: sample {s.key} is not a polycap shard sample ({type(e).__name__}: {e})"[:2000],
                        source_name=name))
                else:
                    yield sample.key, (name, pos, sample)
                pos += 1
        except ShardError as e:
            yield beam.pvalue.TaggedOutput("bad", Reject(
                key=name, source_uri=shard, stage=tr.READ_STAGE, reason=Reason.UNREADABLE,
                detail=f"{e} ({pos} samples read before it; the rest of the tar is not translated)"[:2000],
                source_name=name))


class _OnePerKeyFn(beam.DoFn):
    """(key, copies) -> the first copy in shard-name order, its image staged; the other copies -> Rejects."""

    def __init__(self, staging: str):
        self.staging = staging

    def process(self, element) -> Iterator[Any]:
        key, copies = element
        copies = sorted(copies, key=lambda c: (c[0], c[1]))
        (shard, pos, sample), rest = copies[0], copies[1:]
        for other, other_pos, _ in rest:
            yield beam.pvalue.TaggedOutput("dups", Reject(
                key=key, source_uri=f"{other}#{key}", stage=tr.READ_STAGE, reason=Reason.DUPLICATE,
                detail=f"key {key} is also sample {pos} of {shard}, which is kept (this copy: sample {other_pos} "
                       f"of {other})", source_name=other))
        yield stage_bytes(sample, self.staging)


class _MergeShardSampleFn(beam.DoFn):
    """(key, {sample, results}) -> the sample with its translations (always written), a count dict per sample
    on "counts", and one Reject per failed language on "rejects"."""

    def __init__(self, langs: list[str]):
        self.langs = langs

    def process(self, element) -> Iterator[Any]:
        _, grouped = element
        samples, results = list(grouped["sample"]), list(grouped["results"])
        if not samples:
            return
        sample = samples[0]
        counts: dict[str, int] = {} if results else {"no_english_text": 1}
        for lang in self.langs:
            mine = [r for r in results if r.lang == lang]
            failed = sorted((r for r in mine if r.text is None), key=lambda r: r.key)
            if not failed:
                counts[f"kept:{lang}"] = 1
                continue
            f = failed[0]
            yield beam.pvalue.TaggedOutput("rejects", Reject(
                key=sample.key, source_uri=sample.source.uri, stage=STAGE,
                reason=Reason(f.reason or Reason.INTERNAL_ERROR),
                detail=(f"lang={lang} text={f.key.split('/', 1)[1]} ({len(failed)} of {len(mine)} texts failed; "
                        f"the sample is written with an empty {lang} member): {f.detail}")[:2000],
                source_name=sample.source.name))
        yield beam.pvalue.TaggedOutput("counts", counts)
        yield build_records(merge_sample(sample, results, self.langs, reject_when_all_failed=False))


def _written(info: dict[str, Any]) -> dict[str, int]:
    return {"written": int(info["samples"]), "shards": 1}


def _clear_staging_after(counts: dict[str, int], out: str) -> dict[str, int]:
    """Runs once, after every shard is committed (its input is the commit's single count)."""
    return {**counts, "staged_removed": clear_staging(out)}


def stats_from_counts(counts: dict[str, int], langs: list[str], split: str, started: float) -> dict[str, Any]:
    """The file-format command's stats plus what a shard set adds: samples written, shards, and samples with
    no English text (written, nothing to translate). Balanced when every language balances and every input
    sample is either written or a read reject."""
    stats = tr.stats_from_counts(counts, langs, "shards", started)
    written = counts.get("written", 0)
    stats.update(samples_written=written, shards=counts.get("shards", 0), split=split,
                 no_english_text=counts.get("no_english_text", 0),
                 balanced=stats["balanced"] and written + stats["bad_records"] == stats["inputs"])
    return stats


def build_pipeline(p: beam.Pipeline, shards: list[str], in_path: str, langs: list[str], out_dir: str,
                   cfg: TranslateConfig, shards_cfg: ShardsConfig, member_langs: list[str], run_id: str,
                   started: float, progress: str = "", progress_s: float = 0.0) -> None:
    read = (p | "Shards" >> beam.Create(shards) | "SpreadShards" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadShardFn()).with_outputs("bad", main="samples"))
    ones = [pc | f"One{i}" >> beam.Map(lambda _: 1) for i, pc in enumerate((read["samples"], read["bad"]))]
    n_inputs = ones | "AllInputs" >> beam.Flatten() | "CountInputs" >> beam.CombineGlobally(sum)
    _ = n_inputs | "WriteInputCount" >> beam.ParDo(tr.WriteCount(fs.join(out_dir, tr.INPUTS_FILE)))
    unique = (read["samples"] | "ByKey" >> beam.GroupByKey()
              | "OnePerKey" >> beam.ParDo(_OnePerKeyFn(staging_root(out_dir, run_id))).with_outputs(
                  "dups", main="samples"))
    results = (unique["samples"] | "Units" >> beam.FlatMap(sample_units)
               | "Translate" >> TranslateTexts(cfg, fs.join(out_dir, "_cache", "translate"), langs)
               | "BySample" >> beam.Map(lambda r: (r.key.split("/", 1)[0], r)))
    keyed = unique["samples"] | "KeySamples" >> beam.Map(lambda s: (s.key, s))
    merged = ({"sample": keyed, "results": results} | "Join" >> beam.CoGroupByKey()
              | "Merge" >> beam.ParDo(_MergeShardSampleFn(langs)).with_outputs("rejects", "counts", main="samples"))
    committed = merged["samples"] | "WriteShards" >> WriteShards(shards_cfg, out_dir, member_langs)
    rejects = (read["bad"], unique["dups"], merged["rejects"]) | "AllRejects" >> beam.Flatten()
    every_lang = len(langs)                              # a sample not read is rejected in every language
    for i, pc in enumerate((read["samples"], read["bad"])):
        tr.watch(pc, f"ProgressIn{i}", progress, "inputs", progress_s)
    tr.watch(merged["counts"], "ProgressKept", progress, "kept", progress_s, _kept_langs)
    tr.watch(merged["rejects"], "ProgressRejected", progress, "rejected", progress_s)
    for i, pc in enumerate((read["bad"], unique["dups"])):
        tr.watch(pc, f"ProgressNotRead{i}", progress, "rejected", progress_s, lambda _, n=every_lang: n)
    reject_files = rejects | "WriteRejects" >> WriteRejects(out_dir, tr.rejects_subdir(in_path))
    counts = (n_inputs | "InputCount" >> beam.Map(lambda n: {"inputs": int(n)}),
              rejects | "CountRejects" >> CountAll(tr._reject_count),
              merged["counts"] | "CountSamples" >> CountAll(lambda c: c),
              committed | "CountWritten" >> CountAll(_written) | "ClearStaging" >> beam.Map(_clear_staging_after,
                                                                                               out_dir),
              reject_files | "CountRejectFiles" >> CountAll(tr._file_count))
    _ = (counts | "AllCounts" >> beam.Flatten() | "MergeCounts" >> beam.CombineGlobally(MergeCounts())
         | "WriteStats" >> beam.ParDo(WriteJson(fs.join(out_dir, STATS_NAME), partial(
             stats_from_counts, langs=langs, split=shards_cfg.split, started=started))))


def run_shards(in_path: str, langs: list[str], out_dir: str, cfg: TranslateConfig,
               pipeline_args: list[str] | None = None, shards_cfg: ShardsConfig | None = None,
               started: float | None = None, progress_s: float = 5.0) -> dict[str, Any]:
    """Translate a shard input into one shard set in `out_dir` (see the module doc); returns `_stats.json`.
    Prints a progress line every `progress_s` seconds (0: none), kept and rejected summed over the languages."""
    started = started or time.time()
    shards = input_shards(in_path)
    files, dirs = owned_paths(out_dir, in_path)
    tr.refuse_outputs_over_inputs(shards, files, dirs)
    shards_cfg = shards_cfg or ShardsConfig()
    split = split_of(shards, shards_cfg.split)
    shards_cfg = ShardsConfig(split=split, max_samples=shards_cfg.max_samples)
    existing = declared_langs(shards[0])
    check_langs(langs, existing)
    fs.mkdirs(out_dir)
    stats_path = fs.join(out_dir, STATS_NAME)
    fs.delete([stats_path])   # a failed run must not leave the previous run's stats looking current
    run_id = uuid.uuid4().hex[:12]
    total = count_samples(shards) if progress_s > 0 else None
    with tr.live_progress(out_dir, progress_s, total, len(langs)) as progress:
        p = beam.Pipeline(options=PipelineOptions(pipeline_args or []))
        build_pipeline(p, shards, in_path, langs, out_dir, cfg, shards_cfg, sorted(set(existing) | set(langs)),
                       run_id, started, progress, progress_s)
        result = p.run()
        result.wait_until_finish()
    stats = fs.read_json(stats_path)
    stats.update({name: tr._counter(result, name) for name in ("requests", "cache_hits", "retries")})
    return stats
