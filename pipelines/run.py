"""The main job (`polycap run`): ingest -> decode -> filter -> dedup -> OCR -> caption -> translate -> shards."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
import weakref
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from polycap.pipelines.lean_beam import LOCAL_RUNNERS, runner_name
from polycap.schemas import SCHEMA_VERSION
from polycap.schemas.config import Config, ConfigError, to_dict
from polycap.sharding import fs
from polycap.sharding.run_stats import CountAll, MergeCounts, WriteJson, count_key, stats_path
from polycap.sharding.staging import clear_staging

if TYPE_CHECKING:
    from polycap.pipelines.waves import WaveSlice

REPO = Path(__file__).resolve().parents[1]


class _DropTagNoise(logging.Filter):
    """Beam warns on every ParDo with both tagged outputs and `.with_exception_handling()`; it is harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requested in with_outputs() but not declared" not in record.getMessage()


logging.getLogger().addFilter(_DropTagNoise())


def code_version() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"polycap {version('polycap')}"
    except PackageNotFoundError:
        return "unknown"


def _input_count(_: Any) -> dict[str, int]:
    return {"inputs": 1}


class WriteCount(beam.DoFn):
    """Writes a global count to `{"inputs": n}` at `path` (the count is taken in the pipeline, not the launcher)."""

    def __init__(self, path: str):
        self.path = path

    def process(self, n: int):
        fs.write_json(self.path, {"inputs": int(n)})


# Partial counts per element; the combiner sums them (sharding/run_stats.py).
def _reject_count(r: Any) -> dict[str, int]:
    return {"rejected": 1, f"stage:{r.stage}": 1, f"reason:{r.reason}": 1}


def _language_count(s: Any) -> dict[str, int]:
    return {f"lang:{lang}": 1 for lang in s.captions}


def _shard_count(info: dict[str, Any]) -> dict[str, int]:
    return {"kept": int(info["samples"]), "shards": 1}


def _file_count(_: Any) -> dict[str, int]:
    return {"reject_files": 1}


def _clear_staging_after(counts: dict[str, int], out: str) -> dict[str, int]:
    """Runs once, after every shard is committed (its input is the commit's single count)."""
    return {**counts, "staged_removed": clear_staging(out)}


def caption_plan(cfg: Config) -> tuple[bool, str]:
    """Whether the caption stage runs, and the line the run summary prints about it: decided from the config
    alone. Whether vLLM, the checkpoint or the endpoint is there is checked by each worker in `load_model`
    (the launcher may have no GPU, no vLLM and no route to the model), and a worker without it fails the job
    naming the fix. Only an openai backend with no endpoint at all (nor $POLYCAP_CAPTION_ENDPOINT) is
    decided here: captioning is not configured, and the source alt-text is carried forward."""
    c = cfg.caption
    if not c.enabled or c.backend == "none":
        return False, "caption: disabled; source captions (alt-text) carried forward as English text"
    from polycap.transforms.caption import ENDPOINT_ENV, resolve_endpoint

    if c.backend == "openai" and not resolve_endpoint(c):
        return False, (f"caption: NOT RUN — captioning is not configured (no caption.endpoint nor ${ENDPOINT_ENV}); "
                       "source captions (alt-text) carried forward, none invented")
    where = f" at {resolve_endpoint(c)}" if c.backend == "openai" else ""
    return True, f"caption: {c.backend} {c.model or '(served model)'}{where} (model checked on each worker)"


def translate_plan(cfg: Config) -> tuple[bool, str]:
    """Whether the translate stage runs, from the config alone (as `caption_plan`): an openai backend needs
    an endpoint; the workers check that it answers."""
    t = cfg.translate
    if not t.enabled or t.backend == "none":
        return False, "translate: disabled"
    if t.backend == "openai" and not t.endpoint:
        return False, "translate: NOT RUN — no translate.endpoint configured; no translation invented"
    return True, f"translate: {t.backend} {t.model} -> {', '.join(t.to)} (model checked on each worker)"


class JobOptions(PipelineOptions):
    """PipelineOptions whose views are parsed once. Beam asks for a view (`view_as`) ~900 times while it builds
    and starts one graph of this job (each applied transform, each type-hint check), and every view runs
    argparse over the job's flags again (~0.35 ms each: ~0.3 s per graph, paid by every wave). The views of
    one options object differ only in which names they show; their values live in the one `_all_options`
    dict they share, so a view kept and handed out again reads and writes exactly what a new one would.
    Deep copies (Beam copies the options into each Pipeline) and pickles start with no kept views."""

    def view_as(self, cls: type[Any]) -> Any:
        views = self.__dict__.setdefault("_views", {})
        view = views.get(cls)
        if view is None:
            view = views[cls] = super().view_as(cls)
        return view

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_views", None)
        return state


def keep_dofn_specs() -> None:
    """Make Beam's `userstate.get_dofn_specs(dofn)` answer once per DoFn object (a Beam-side change, for this
    process only; installed by `run` before any graph is built). Beam asks it ~10 times per ParDo while it
    builds, translates and starts one graph (ParDo and DoFnSignature construction, the DirectRunner's visits,
    to_runner_api), and every answer walks `dir(dofn)` taking `inspect.signature` of ~30 methods (~0.75 ms):
    ~0.6 s of every wave's start in Beam 2.77. The answer (the state and timer specs declared as defaults of
    the DoFn's methods) depends only on the object's methods, which a DoFn does not change once made; each
    caller gets its own copies of the two sets. A DoFn that is not weakly hashable is asked every time."""
    from apache_beam.transforms import userstate

    if getattr(userstate.get_dofn_specs, "_polycap_kept", False):
        return
    ask = userstate.get_dofn_specs
    kept: weakref.WeakKeyDictionary[Any, tuple[frozenset, frozenset]] = weakref.WeakKeyDictionary()

    def get_dofn_specs(dofn: Any) -> tuple[set, set]:
        try:
            specs = kept.get(dofn)
        except TypeError:                     # unhashable or no weak reference: not kept
            return ask(dofn)
        if specs is None:
            state, timers = ask(dofn)         # raises as Beam does for a bad DoFn, and keeps nothing
            specs = kept[dofn] = (frozenset(state), frozenset(timers))
        return set(specs[0]), set(specs[1])

    get_dofn_specs._polycap_kept = True       # type: ignore[attr-defined]
    get_dofn_specs.__doc__ = ask.__doc__
    userstate.get_dofn_specs = get_dofn_specs


SAMPLER_PERIOD_MS = 10


def quick_sampler_stop(period_ms: int = SAMPLER_PERIOD_MS) -> None:
    """Make the state sampler of each bundle Beam runs in this process wake every `period_ms` at most
    (Beam's default: 200 ms; a Beam-side change for this process only, installed by `run`). The sampler
    thread sleeps in steps growing from 2 ms to the period, and every bundle's end waits for it to wake
    (`StateSampler.stop` joins it): ~1/6 of a bundle's time up to the period, 0.44-0.57 s of the one
    graph's 36 bundles on bench/pipeline.py's 1000 photos, all on the runner's one bundle thread. The thread
    sleeps and samples without the GIL (statesampler_fast.pyx), so waking more often costs nothing
    measurable; its per-step times only get finer."""
    from apache_beam.runners.worker import statesampler

    cls = statesampler.StateSampler
    if getattr(cls.__init__, "_polycap_period_ms", None) is not None:
        return
    init = cls.__init__

    def __init__(self: Any, prefix: str, counter_factory: Any, sampling_period_ms: int = period_ms) -> None:
        init(self, prefix, counter_factory, min(sampling_period_ms, period_ms))

    __init__._polycap_period_ms = period_ms     # type: ignore[attr-defined]
    cls.__init__ = __init__                     # type: ignore[method-assign]


def check_sources(cfg: Config) -> None:
    """A local source path that does not exist (or a glob that matches nothing) is a config error, not a run
    whose one input is a reject. Object-store paths are listed by the job itself (it has their options)."""
    import glob

    for i, src in enumerate(cfg.sources):
        path = src.path
        if "://" in path or os.path.lexists(path):    # a folder named `photos[2024]` is read literally
            continue
        if any(c in path for c in "*?["):
            if next(glob.iglob(path, recursive=True), None) is None:
                raise ConfigError(f"sources[{i}].path: {path} matches no file")
        else:
            raise ConfigError(f"sources[{i}].path: {path} does not exist")


def _norm(path: str) -> str:
    """A path to compare: local ones resolved (links, `..`, relative to the cwd), URLs without a trailing /."""
    return path.rstrip("/") if "://" in path else os.path.realpath(path)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _glob_reaches(pattern: str, folder: str) -> bool:
    """Whether glob `pattern` can match a file at or below `folder` (which lies inside its fixed base)."""
    import fnmatch

    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    base = "/".join(parts[:fixed]) or "/"
    base = _norm(base)
    if not _within(folder, base):
        return False
    rest, below = parts[fixed:], [p for p in folder[len(base):].split("/") if p]
    if any("**" in part for part in rest):
        return True
    # a file under `folder` sits deeper than `folder`; the pattern matches only at its own depth
    return len(rest) > len(below) and all(fnmatch.fnmatchcase(d, r) for d, r in zip(below, rest))


def check_output_apart(cfg: Config, out: str) -> None:
    """The output must not lie inside an input (the next run would read its own shards, manifest and staged
    files as inputs) and no input may lie inside the output (the run rewrites what it reads)."""
    out_n = _norm(out)
    for i, src in enumerate(cfg.sources):
        for name, path in (("path", src.path), ("image_root", src.image_root)):
            if not path:
                continue
            globbed = any(c in path for c in "*?[") and not ("://" not in path and os.path.lexists(path))
            if "://" in path and "://" in out_n and path.split("://")[0] != out_n.split("://")[0]:
                continue
            where = f"sources[{i}].{name}"
            if name == "path" and (_glob_reaches(path if "://" in path else os.path.abspath(path), out_n)
                                   if globbed else _within(out_n, _norm(path))):
                raise ConfigError(f"output: {out} lies inside the input {where} ({path}); a later run would "
                                  f"read this run's shards, manifest and staged images as new inputs. Choose an "
                                  f"output outside every input")
            fixed = path.split("*")[0].split("?")[0].split("[")[0] if globbed else path
            if fixed and _within(_norm(fixed), out_n):
                raise ConfigError(f"{where}: {path} lies inside the output {out}; the run replaces shards, "
                                  f"rejects and stats there while reading them. Copy the input elsewhere or "
                                  f"choose another output")


def preflight(cfg: Config, remote: bool = False) -> list[str]:
    """Checks that must fail once, before any work (local inputs exist; OCR models present when the launcher
    is also the worker). With a `remote` runner the workers hold the models: OCR models missing here are a
    note, and each worker checks its own in `load_model` (failing the job with the fix if they are missing)."""
    check_sources(cfg)
    check_output_apart(cfg, fs.abs_path(cfg.output))
    notes = []
    if cfg.ocr.enabled:
        from polycap.transforms.backends.ocr_models import OcrModelError, script_notes
        from polycap.transforms.ocr import check_ocr_models

        try:
            models = check_ocr_models(cfg.ocr)  # raises with a message naming the missing files
        except OcrModelError as e:
            if not remote:
                raise
            notes.append(f"ocr: {cfg.ocr.backend} on {cfg.ocr.device}; models not on this launcher "
                         f"({str(e).splitlines()[0][:160]}): each worker checks its own")
            return notes
        notes.append(f"ocr: {cfg.ocr.backend} on {cfg.ocr.device}")
        notes.extend(script_notes(models, list(cfg.ocr.langs)))  # a script read as unsupported_script: the fix
    return notes


def build_pipeline(p: beam.Pipeline, cfg: Config, out: str, run_caption: bool, run_translate: bool,
                   run_id: str | None = None, started: float | None = None, notes: list[str] | None = None,
                   progress_s: float = 0.0, wave: WaveSlice | None = None) -> None:
    """The whole job, ending in one worker writing `<out>/_stats/<split>.json` after shards and rejects are
    committed and staging is removed (so a job submitted without waiting still leaves complete stats). With
    `progress_s` > 0 the inputs, rejects and samples reaching the shard writer are also counted into the
    progress side channel (transforms/progress.py) under `<out>/_progress/<run id>/`. With a `wave`
    (pipelines/waves.py) the graph reads only that wave's inputs, drops what earlier waves kept before its
    dedup, records what its dedup keeps, and commits shards, rejects and stats into the wave's folder."""
    from polycap.sharding.rejects import WriteRejects
    from polycap.sharding.staging import staging_root
    from polycap.sharding.writer import WriteShards
    from polycap.transforms.build_records import BuildRecords
    from polycap.transforms.decode import DecodeImages
    from polycap.transforms.dedup import DedupImages
    from polycap.transforms.filters import FilterSamples
    from polycap.transforms.ingest import ReadSource
    from polycap.transforms.progress import CountProgress, progress_dir

    run_id = run_id or uuid.uuid4().hex[:12]
    split = cfg.shards.split
    prog = progress_dir(out, run_id)
    store = wave.store if wave else out      # where shards, manifest, rejects and stats are committed

    def watch(pc: beam.PCollection, label: str, name: str) -> None:
        if progress_s > 0:
            _ = pc | label >> CountProgress(prog, name, progress_s)

    read = [p | f"Read{i}_{s.kind}" >> (wave.read(i, s, cfg.ingest) if wave else ReadSource(s, cfg.ingest))
            for i, s in enumerate(cfg.sources)]
    for i, (s_pc, r_pc) in enumerate(read):
        watch(s_pc, f"ProgressIn{i}", "inputs")
        watch(r_pc, f"ProgressInRejected{i}", "inputs")
    samples = [s for s, _ in read] | "FlattenSources" >> beam.Flatten()
    rejects = [r for _, r in read]
    # Count a partial count per input rather than flattening the inputs themselves: the DirectRunner
    # materializes every multi-input Flatten, so a Flatten of the raw samples copied every input image into a
    # buffer just to count it (bench/pipeline.py input, 1000 photos: ~3% of the run's CPU, ~15% of its sys time).
    inputs = [pc | f"One{i}" >> beam.Map(_input_count) for i, pc in enumerate((samples, *rejects))]

    stages: list[tuple[str, beam.PTransform]] = [
        ("Decode", DecodeImages(cfg.decode, staging_root(out, run_id))),  # + stages
        ("Filter", FilterSamples(cfg.filter)),
        ("Dedup", DedupImages(cfg.dedup)),
    ]
    if wave:
        from polycap.transforms.cross_wave import DropKnown
        stages.insert(2, ("EarlierWaves", DropKnown(wave.waves_dir, cfg.dedup)))
    if cfg.ocr.enabled:
        from polycap.transforms.ocr import RunOcr
        stages.append(("Ocr", RunOcr(cfg.ocr)))
    if run_caption:
        from polycap.transforms.caption import CaptionImages
        stages.append(("Caption", CaptionImages(cfg.caption, out)))
    for label, stage in stages:
        samples, r = samples | label >> stage
        rejects.append(r)
        if wave and label == "Dedup":
            from polycap.transforms.cross_wave import RecordKept
            _ = samples | "RecordKept" >> RecordKept(wave.kept_dir)
    samples = samples | "BuildRecords" >> BuildRecords(carry_source=not run_caption)
    if run_translate:
        from polycap.transforms.translate import TranslateSamples
        samples, r = samples | "Translate" >> TranslateSamples(cfg.translate, out)
        rejects.append(r)
        samples = samples | "BuildTranslatedRecords" >> BuildRecords(carry_source=False)
    watch(samples, "ProgressKept", "kept")
    for i, r in enumerate(rejects):
        watch(r, f"ProgressRejected{i}", "rejected")
    committed = samples | "WriteShards" >> WriteShards(cfg.shards, store, langs=wave.langs if wave else ())
    all_rejects = rejects | "FlattenRejects" >> beam.Flatten()
    reject_files = all_rejects | "WriteRejects" >> WriteRejects(store, subdir=split)   # rejects/<split>/
    # Counted where each stream flows, as one partial-count dict per element, all summed by one combine
    # (MergeCounts): one CombineGlobally per stream cost ~9 graph steps each, ~1/4 of a wave's graph, paid
    # again by every wave's construction and start-up (bench/results/wave_cost.json). The kept count comes
    # from what the commit step reports, so `balanced` compares independent counts; the shard count alone
    # is combined first, since staging is cleared once, after every shard is committed.
    counts = (
        *inputs,
        all_rejects | "CountRejects" >> beam.Map(_reject_count),
        samples | "CountLanguages" >> beam.Map(_language_count),
        committed | "CountShards" >> CountAll(_shard_count)
        | "ClearStaging" >> beam.Map(_clear_staging_after, out),
        reject_files | "CountRejectFiles" >> beam.Map(_file_count),
    )
    _ = (counts | "AllCounts" >> beam.Flatten() | "MergeCounts" >> beam.CombineGlobally(MergeCounts())
         | "WriteStats" >> beam.ParDo(WriteJson(stats_path(store, split),
                                                partial(stats_from_counts, started=started, notes=notes,
                                                        split=split))))


def stats_from_counts(counts: dict[str, int], started: float | None = None,
                      notes: list[str] | None = None, split: str = "") -> dict[str, Any]:
    """`_stats/<split>.json` from the pipeline's merged counts: inputs (counted at ingest), kept (samples the
    shard commit reports for this run's split; other splits in the same output dir are not this run's),
    rejected (reject rows), by stage, reason and language."""
    inputs, kept, rejected = counts.get("inputs", 0), counts.get("kept", 0), counts.get("rejected", 0)
    return {
        "split": split,
        "inputs": inputs, "kept": kept, "rejected": rejected,
        "balanced": inputs == kept + rejected,
        "rejected_by_stage": count_key("stage", counts),
        "rejected_by_reason": count_key("reason", counts),
        "kept_by_language": count_key("lang", counts),
        "shards": counts.get("shards", 0),
        "seconds": round(time.time() - started, 2) if started else None,
        "schema_version": SCHEMA_VERSION,
        "notes": list(notes or []),
    }


def count_inputs(cfg: Config) -> int | None:
    """The number of inputs when every source is a local folder that can be counted in a moment (for the
    progress ETA); None otherwise (URL lists, tars and JSON records are only counted as they are read)."""
    from polycap.transforms.progress import count_dir_inputs

    total = 0
    for src in cfg.sources:
        n = count_dir_inputs(src.path) if src.kind == "dir" else None
        if n is None:
            return None
        total += n
    return total


def run(cfg: Config, pipeline_args: list[str] | None = None, config_path: str | None = None,
        progress_s: float = 5.0, break_lock: bool = False) -> dict[str, Any]:
    """Run the job into `cfg.output` and return this split's stats. Holds the output's lock
    (sharding/lock.py) from before the first write to the end, failed or not; prints a progress line every
    `progress_s` seconds (0: none)."""
    from polycap.sharding.lock import acquire
    from polycap.transforms.progress import PROGRESS_DIR, ProgressMonitor, progress_dir

    started = time.time()
    keep_dofn_specs()
    quick_sampler_stop()
    args = list(pipeline_args or [])
    fs.configure(args)            # the launcher's own reads and writes use the job's filesystem options
    out = fs.abs_path(cfg.output)
    runner = runner_name(args)
    notes = preflight(cfg, remote=runner not in LOCAL_RUNNERS)
    run_caption, caption_note = caption_plan(cfg)
    run_translate, translate_note = translate_plan(cfg)
    notes.extend([caption_note, translate_note])
    run_id = uuid.uuid4().hex[:12]
    split = cfg.shards.split
    fs.mkdirs(out)
    with acquire(out, run_id, split=split, break_stale=break_lock):   # LockHeld: another run writes here
        path = stats_path(out, split)
        fs.delete([path])         # a failed run must not leave the previous run's stats looking current
        fs.write_json(fs.join(out, "_run.json"), {
            "run_id": run_id, "config": to_dict(cfg), "config_path": config_path, "code_version": code_version(),
            "schema_version": SCHEMA_VERSION, "pipeline_args": args, "python": sys.version.split()[0],
            "runner": runner, "split": split,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "notes": notes,
        })
        for n in notes:
            print(f"[polycap] {n}", file=sys.stderr, flush=True)
        monitor = ProgressMonitor(progress_dir(out, run_id), progress_s,
                                  count_inputs(cfg) if progress_s > 0 else None).start()
        ok = False
        try:
            from polycap.pipelines.waves import applies, clear_leftover, run_waves

            waved = applies(cfg, runner, out) and run_waves(cfg, out, args, run_caption, run_translate, run_id,
                                                            started, notes, progress_s)
            if not waved:
                if clear_leftover(out, cfg.shards.split):
                    print(f"[polycap] removed {fs.join(out, '_waves', cfg.shards.split)}/, left by an unfinished "
                          "run in waves: this run writes the whole output in one graph", file=sys.stderr, flush=True)
                with beam.Pipeline(options=JobOptions(args)) as p:
                    build_pipeline(p, cfg, out, run_caption, run_translate, run_id, started, notes, progress_s)
            ok = True
        finally:
            monitor.stop(final_line=ok)
            fs.delete_prefix(fs.join(out, PROGRESS_DIR))
        return fs.read_json(path)   # written by the pipeline; the launcher reads only this small file


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _tree_size(folder: str, budget_s: float = 2.0) -> tuple[int, int, bool]:
    """(files, bytes, complete) under a local `folder`; the walk stops after `budget_s` s (complete=False)."""
    deadline, files, total, stack = time.monotonic() + budget_s, 0, 0, [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if time.monotonic() > deadline:
                        return files, total, False
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        files, total = files + 1, total + e.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return files, total, True


def written_outputs(out: str, split: str) -> list[str]:
    """One line per file or folder the run leaves in `out`: this split's shards, rejects and stats, the
    manifest, `_run.json`, and every other top-level entry (`_cache/`, `_inputs.json`, a report) with its
    size. Other splits' shards are named as kept, not as written."""
    from polycap.sharding.members import SHARD_RE
    from polycap.sharding.rejects import reject_files
    from polycap.sharding.run_stats import STATS_DIR

    lines: list[str] = []
    shards = {n: b for n, b in fs.list_dir(fs.join(out, "shards")).items() if SHARD_RE.match(n)}
    mine = {n: b for n, b in shards.items() if n.startswith(f"{split}-")}
    lines.append(f"  shards/{split}-*.tar: {len(mine)} shards, {_size(sum(mine.values()))}"
                 + (f" (other splits' {len(shards) - len(mine)} shards kept)" if len(shards) > len(mine) else ""))
    top = fs.list_dir(out)
    if "manifest.parquet" in top:
        lines.append(f"  manifest.parquet: {_size(top['manifest.parquet'])} (every split)")
    rejects = reject_files(out, split)
    lines.append(f"  rejects/{split}/: {len(rejects)} parquet files")
    lines.append(f"  {STATS_DIR}/{split}.json")
    for name in sorted(top):
        if name != "manifest.parquet" and not name.startswith("."):
            lines.append(f"  {name}: {_size(top[name])}")
    if fs.is_local(out):
        folders = sorted(e.name for e in os.scandir(out) if e.is_dir(follow_symlinks=False))
    else:                     # an object store has no folders to list cheaply: ask for the ones a run makes
        folders = [n for n in ("_cache", "_staging") if fs.is_dir(fs.join(out, n))]
    for name in folders:
        if name in ("shards", "rejects", STATS_DIR) or name.startswith("."):
            continue
        if not fs.is_local(out):
            lines.append(f"  {name}/ (size not counted on an object store)")
            continue
        files, total, complete = _tree_size(fs.join(out, name))
        more = "" if complete else "+"
        lines.append(f"  {name}/: {files}{more} files, {_size(total)}{more}")
    return lines


def summary_lines(stats: dict[str, Any], out: str) -> list[str]:
    lines = [f"inputs {stats['inputs']} = kept {stats['kept']} + rejected {stats['rejected']}"
             + ("" if stats["balanced"] else "   <-- MISMATCH: records were lost, this is a bug")]
    for reason, n in stats["rejected_by_reason"].items():
        lines.append(f"  rejected {reason}: {n}")
    if stats["kept_by_language"]:
        lines.append("  captions by language: " + ", ".join(f"{k}={v}" for k, v in stats["kept_by_language"].items()))
    lines.extend(stats.get("notes", []))
    out = fs.abs_path(out)
    lines.append(f"output: {out} (split {stats.get('split') or '?'}) in {stats['seconds']} s:")
    try:
        lines.extend(written_outputs(out, stats.get("split") or ""))
    except Exception as e:  # noqa: BLE001 - the listing is a summary; the run itself is done
        lines.append(f"  (could not list the output: {type(e).__name__}: {e})")
    return lines
