"""A local run in waves: the inputs, listed once in a fixed order into a file, go through the main job's graph
a bounded slice at a time, so memory follows the wave size, not the dataset; the waves share a persistent
dedup index and are committed as one shard set (sharding/wave_index.py, sharding/wave_commit.py)."""
# Used for DirectRunner/Prism runs whose sources are all local folders or local URL lists with more inputs
# than `run.wave_size` (pipelines/run.py decides; a remote runner always builds one graph from the same job
# file). State lives in `<out>/_waves/<split>/`: `inputs.jsonl` (one line per stem group, URL-list row or
# refused entry / row reject, in the walk's and the lists' order),
# `index.sqlite` (kept items of finished waves, which waves are finished, the run's fingerprint) and one
# folder per wave, `w<NNNNNN>/`, where the wave's own pipeline commits its shards, manifest, rejects and
# stats. A wave is finished once the launcher moved its kept members into the index, in the transaction
# that records it; a rerun with the same config skips finished waves, redoes the rest, and commits the
# same bytes as an uninterrupted run (tests/hostile/test_waves_recovery.py).
from __future__ import annotations

import gc
import hashlib
import json
import os
import pickle
import posixpath
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from polycap.pipelines.lean_beam import LOCAL_RUNNERS
from polycap.schemas import SCHEMA_VERSION
from polycap.schemas.config import Config, to_dict
from polycap.sharding import fs
from polycap.sharding import wave_index as wi
from polycap.sharding.run_stats import stats_path
from polycap.sharding.wave_commit import commit_waves, merge_stats
from polycap.transforms.download import UrlRow
from polycap.transforms.progress import flush_all

WAVES_DIR = "_waves"
LISTING = "inputs.jsonl"


@dataclass
class WaveSlice:
    """What build_pipeline needs to run one wave: its inputs per source, where its outputs and kept
    members go, the index of earlier waves and the run's fixed caption languages."""
    number: int
    waves_dir: str
    store: str
    langs: list[str]
    groups: dict[int, list[tuple[str, list[str]]]] = field(default_factory=dict)
    refused: dict[int, list[tuple[str, str, str]]] = field(default_factory=dict)
    rows: dict[int, list[UrlRow]] = field(default_factory=dict)

    @property
    def kept_dir(self) -> str:
        return fs.join(self.store, "kept")

    def read(self, i: int, src: Any, ingest: Any) -> beam.PTransform:
        from polycap.transforms.ingest import ReadListed

        return ReadListed(src, ingest, self.groups.get(i, []), self.refused.get(i, []), self.rows.get(i, []))


WAVE_KINDS = ("dir", "urls")


def applies(cfg: Config, runner: str, out: str) -> bool:
    """Waves are for local runs of local folder and URL-list sources into a local output, with
    `run.wave_size` > 0."""
    return (cfg.run.wave_size > 0 and runner in LOCAL_RUNNERS and fs.is_local(out)
            and all(s.kind in WAVE_KINDS and fs.is_local(s.path) for s in cfg.sources))


def waves_dir(out: str, split: str) -> str:
    return fs.join(out, WAVES_DIR, split)


def clear_leftover(out: str, split: str) -> bool:
    """Remove the state an unfinished run in waves left under OUT/_waves/<split>/ (a run in one graph
    writes the whole output itself and would otherwise leave it behind for good); True when there was some."""
    wdir = waves_dir(out, split)
    if not fs.exists(wdir):
        return False
    fs.delete_prefix(wdir)
    fs.remove_empty_dir(wdir)
    fs.remove_empty_dir(fs.parent(wdir))
    return True


def fingerprint(cfg: Config) -> str:
    """What must match for a rerun to resume the waves: the config (output aside) and the schema."""
    d = to_dict(cfg)
    d.pop("output", None)
    return hashlib.sha256(json.dumps([d, SCHEMA_VERSION], sort_keys=True, default=str).encode()).hexdigest()


def _folder_lines(i: int, entries: list[Any]) -> Iterator[dict[str, Any]]:
    """One folder's entries as listing lines: files grouped by stem (an image and its sidecars stay in one
    wave), in stem order, then refused entries."""
    from polycap.transforms.input_files import Refused

    stems: dict[str, list[str]] = {}
    for e in entries:
        if isinstance(e, Refused):
            yield {"s": i, "r": [e.path, str(e.reason), e.detail]}
        else:
            stems.setdefault(posixpath.splitext(e)[0], []).append(e)
    for stem in sorted(stems):
        yield {"s": i, "p": stems[stem]}


def row_line(i: int, row: UrlRow) -> dict[str, Any]:
    """A URL-list row as a listing line; a caption cell JSON cannot carry as it is (bytes, a date, a list...)
    is kept as what `clean_caption` says of it (download.ListedCell)."""
    cap = row.caption
    if not (cap is None or isinstance(cap, (str, bool, int, float))):
        cap = {"t": type(cap).__name__, "v": str(cap)[:40]}
    return {"s": i, "u": [row.url, cap, row.meta, row.row_uri]}


def line_row(u: list[Any]) -> UrlRow:
    from polycap.transforms.download import ListedCell

    url, cap, meta, row_uri = u
    return UrlRow(url=url, caption=ListedCell(cap["t"], cap["v"]) if isinstance(cap, dict) else cap, meta=meta,
                  row_uri=row_uri)


def _url_lines(i: int, src: Any, cfg: Config) -> Iterator[dict[str, Any]]:
    """A URL-list source's rows and row rejects, streamed one list file at a time, in the listing's order."""
    from polycap.schemas import Reject
    from polycap.transforms.download import list_rows
    from polycap.transforms.ingest import URL_LIST_EXTS, cannot_list_detail, no_inputs_detail
    from polycap.transforms.input_files import Refused, iter_inputs

    seen = False
    try:
        for e in iter_inputs(src.path, URL_LIST_EXTS, cfg.ingest):
            seen = True
            if isinstance(e, Refused):
                yield {"s": i, "r": [e.path, str(e.reason), e.detail]}
                continue
            for item in list_rows(e, src, cfg.ingest):
                yield ({"s": i, "r": [item.source_uri, str(item.reason), item.detail]} if isinstance(item, Reject)
                       else row_line(i, item))
    except OSError as e:
        yield {"s": i, "r": [src.path, "unreadable", cannot_list_detail(e)]}
    if not seen:
        yield {"s": i, "r": [src.path, "unreadable", no_inputs_detail(URL_LIST_EXTS)]}


def listing_lines(cfg: Config) -> Iterator[dict[str, Any]]:
    """Every input of every source, streamed: one folder's entries (as the walk holds them) or one list row
    held at a time."""
    from polycap.transforms.ingest import cannot_list_detail, no_inputs_detail
    from polycap.transforms.input_files import Refused, iter_inputs

    for i, src in enumerate(cfg.sources):
        if src.kind == "urls":
            yield from _url_lines(i, src, cfg)
            continue
        folder: str | None = None
        entries: list[Any] = []
        seen = False
        try:
            for e in iter_inputs(src.path, None, cfg.ingest):
                seen = True
                where = posixpath.dirname(e.path if isinstance(e, Refused) else e)
                if where != folder and entries:
                    yield from _folder_lines(i, entries)
                    entries = []
                folder = where
                entries.append(e)
        except OSError as e:
            yield {"s": i, "r": [src.path, "unreadable", cannot_list_detail(e)]}
        yield from _folder_lines(i, entries)
        if not seen:
            yield {"s": i, "r": [src.path, "unreadable", no_inputs_detail(None)]}


def write_listing(cfg: Config, path: str, wave_size: int) -> list[int]:
    """Write the listing; returns the byte offset where each wave's lines start, and the end offset."""
    offsets, n, pos = [], 0, 0
    with fs.create(path) as f:
        for line in listing_lines(cfg):
            if n % wave_size == 0:
                offsets.append(pos)
            data = (json.dumps(line) + "\n").encode()     # ASCII: a lone surrogate in a row travels as \udXXX
            f.write(data)
            pos, n = pos + len(data), n + 1
    return [*offsets, pos]


def read_slice(path: str, start: int, end: int) -> tuple[dict[int, list], dict[int, list], dict[int, list]]:
    """The stem groups, refused entries / row rejects and URL-list rows per source between two byte offsets
    of the listing."""
    groups: dict[int, list] = {}
    refused: dict[int, list] = {}
    rows: dict[int, list] = {}
    with fs.open_read(path) as f:
        f.seek(start)
        for raw in f.read(end - start).decode().splitlines():
            line = json.loads(raw)
            if "p" in line:
                groups.setdefault(line["s"], []).append((posixpath.splitext(line["p"][0])[0], line["p"]))
            elif "u" in line:
                rows.setdefault(line["s"], []).append(line_row(line["u"]))
            else:
                refused.setdefault(line["s"], []).append(tuple(line["r"]))
    return groups, refused, rows


def run_langs(cfg: Config, run_caption: bool, run_translate: bool) -> list[str]:
    """The caption languages every shard sample gets a member for, fixed for all waves (one graph takes the
    languages its samples have; waves cannot see later waves' samples)."""
    langs = {cfg.caption.lang} if run_caption else {"en"}
    return sorted(langs | (set(cfg.translate.to) if run_translate else set()))


def prepare(cfg: Config, wdir: str) -> list[int] | None:
    """The wave offsets of this run: resumed from `wdir` when its fingerprint matches, else listed afresh.
    None when the inputs fit in one wave (the run is then one graph)."""
    conn = wi.connect(wdir) if fs.is_file(fs.join(wdir, wi.INDEX_NAME)) else None
    fp = fingerprint(cfg)
    if conn is not None and wi.get_meta(conn, "fingerprint") == fp and wi.get_meta(conn, "offsets"):
        offsets = json.loads(wi.get_meta(conn, "offsets") or "[]")
        conn.close()
        return offsets
    if conn is not None:
        conn.close()
    fs.delete_prefix(wdir)
    fs.mkdirs(wdir)
    offsets = write_listing(cfg, fs.join(wdir, LISTING), cfg.run.wave_size)
    if len(offsets) <= 2:
        fs.delete_prefix(wdir)
        fs.remove_empty_dir(wdir)             # no empty `_waves/` left in the output of a run in one graph
        fs.remove_empty_dir(fs.parent(wdir))
        return None
    conn = wi.connect(wdir)
    wi.set_meta(conn, "offsets", json.dumps(offsets))
    wi.set_meta(conn, "fingerprint", fp)    # last: an index without it is listed again
    conn.close()
    return offsets


def forks(options: Any) -> bool:
    """Whether in_child may fork for graphs run with these options: only for the DirectRunner in memory. The
    multi_processing mode and Prism talk to their workers over gRPC, and gRPC's core is not fork-safe: a child
    forked from a process that used gRPC before (a second run in one Python process, e.g. a test session or a
    notebook) hung waiting on its workers. Those modes run each wave in the launcher's process instead; their
    per-image work is in worker processes that exit with each graph."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    mode = options.view_as(DirectOptions).direct_running_mode or "in_memory"
    return hasattr(os, "fork") and runner in ("DirectRunner", "direct") and mode == "in_memory"


def in_child(work: Callable[[], None], what: str, resume_hint: bool = True, thaw: bool = True,
             fork: bool = True) -> None:
    """Run `work` (one wave's pipeline, or the one graph of a run that fits in one wave) in a forked child
    and wait for it, so it starts from the launcher's memory and gives all of its own back to the OS when it
    exits. In one process the heap kept what each pipeline left (10k inputs, waves of 1000: peak PSS
    ~445-460 MB in process against ~360-390 MB forked, measured with bench/pipeline_memory.py). The child
    shares the launcher's pages (imports, config) until it writes them. An exception in the child is raised
    again here (pickled through a pipe, the child's traceback as its cause, as concurrent.futures does), so a
    caller sees the error one graph in process would have raised; one that cannot be pickled is printed and
    raised as a RuntimeError.
    With `thaw=False` the launcher's objects stay frozen when the child is done, so the next call's collection
    walks only what the launcher made since (a full one walks ~200k objects, ~0.1 s a wave); the caller then
    calls gc.unfreeze() once it forks no more.
    Without fork (not POSIX, or `fork=False`: see `forks`) it runs in process."""
    if not fork or not hasattr(os, "fork"):
        work()
        gc.collect()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    gc.collect()
    gc.freeze()     # the child's collector never walks (and so never copies) the launcher's objects' pages
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                       # the child: never return into the launcher's stack (lock, monitor)
        os.close(rfd)
        code = 1
        try:
            work()
            code = 0
        except BaseException as e:     # noqa: BLE001 - sent to the launcher, which raises it
            _send_error(wfd, e)
        finally:
            try:
                flush_all()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        sent = r.read()                # EOF when the child exits (or is killed)
    _, status = os.waitpid(pid, 0)
    if thaw:
        gc.unfreeze()
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return
    if sent:
        err, tb = pickle.loads(sent)
        raise err from ChildTraceback(tb)
    why = f"killed by signal {-code}" if code < 0 else f"exit status {code}; its error is printed above"
    hint = "; rerun the job to resume from this wave" if resume_hint else ""
    raise RuntimeError(f"{what} failed ({why}){hint}")


def preload() -> None:
    """Import in the launcher, once, what every local graph's decode and dedup stages import lazily on their
    first image (Pillow, libjpeg-turbo, imagehash and the scipy it loads: 242 modules, ~0.4 s and ~8 MB):
    each forked child then shares them instead of importing them again."""
    import imagehash  # noqa: F401
    import simplejpeg  # noqa: F401
    from PIL import Image  # noqa: F401


class ChildTraceback(Exception):
    """The traceback of an exception raised in in_child's forked child (shown as the re-raised one's cause)."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}" if self.args else ""


def _send_error(fd: int, e: BaseException) -> None:
    """The child's half of in_child's error channel: (exception, formatted traceback), pickled."""
    tb = "".join(traceback.format_exception(e))
    try:
        data = pickle.dumps((e, tb))
        pickle.loads(data)             # an exception whose class does not unpickle: printed instead
    except Exception:                  # noqa: BLE001 - not picklable: printed here, a RuntimeError there
        print(tb, file=sys.stderr, end="")
        return
    with os.fdopen(fd, "wb") as w:
        w.write(data)


def _finish_wave(wave: WaveSlice, split: str) -> None:
    """In the wave's child, once its pipeline committed: move its kept members into the index and mark it
    finished, in one transaction (a wave killed before this commit is redone by a rerun). The launcher never
    reads the parts itself, so it allocates nothing per wave (pyarrow tables and row tuples left ~40 MB in
    its heap by 20 waves, which every later forked wave then carried)."""
    gc.collect()              # the wave's read-only index connection (cross_wave._DropKnownFn) is closed
    parts = sorted(fs.join(wave.kept_dir, n) for n in fs.list_dir(wave.kept_dir))
    conn = wi.connect(wave.waves_dir)
    try:
        wi.finish_wave(conn, wave.number, parts, fs.read_json(stats_path(wave.store, split)))
    finally:
        conn.close()
    fs.delete_prefix(wave.kept_dir)


def run_waves(cfg: Config, out: str, args: list[str], run_caption: bool, run_translate: bool, run_id: str,
              started: float, notes: list[str], progress_s: float) -> dict[str, Any]:
    """Run the job in waves and commit it; returns this split's stats. Inputs that fit in one wave run as
    one graph, also in a forked child, so a run of any size has the same two processes (the launcher,
    which holds no per-input or per-wave state, and one graph of at most `run.wave_size` inputs): the
    peak does not depend on how many waves there are."""
    from polycap.pipelines.run import JobOptions, build_pipeline

    options = JobOptions(args)               # parsed once (each graph copies it, without its views)
    fork = forks(options)
    split = cfg.shards.split
    wdir = waves_dir(out, split)
    offsets = prepare(cfg, wdir)
    preload()
    if offsets is None:
        def one_graph() -> None:
            with beam.Pipeline(options=options) as p:
                build_pipeline(p, cfg, out, run_caption, run_translate, run_id, started, notes, progress_s)

        in_child(one_graph, "the run", resume_hint=False, fork=fork)
        return fs.read_json(stats_path(out, split))
    n_waves = len(offsets) - 1
    notes = [*notes, f"run in {n_waves} waves of up to {cfg.run.wave_size} inputs (run.wave_size); an image "
                     f"already kept by an earlier wave is never replaced by a later copy"]
    conn = wi.connect(wdir)
    done = set(wi.finished_waves(conn))
    wi.forget_from(conn, len(done))          # what an attempt killed mid-wave left
    conn.close()
    if done:
        print(f"[polycap] waves: resuming; {len(done)} of {n_waves} waves were finished by an earlier attempt",
              file=sys.stderr, flush=True)
    langs = run_langs(cfg, run_caption, run_translate)
    listing = fs.join(wdir, LISTING)
    try:
        for w in range(n_waves):
            if w in done:
                continue

            def one_wave(w: int = w) -> None:     # the wave's listing lines are read in the child, never here
                wave = WaveSlice(w, wdir, fs.join(wdir, f"w{w:06d}"), langs)
                fs.delete_prefix(wave.kept_dir)            # a crashed attempt's parts
                wave.groups, wave.refused, wave.rows = read_slice(listing, offsets[w], offsets[w + 1])
                with beam.Pipeline(options=options) as p:
                    build_pipeline(p, cfg, out, run_caption, run_translate, run_id, time.time(), notes, progress_s,
                                   wave=wave)
                _finish_wave(wave, split)

            in_child(one_wave, f"wave {w}", thaw=False, fork=fork)   # frozen from wave to wave
    finally:
        gc.unfreeze()

    def commit() -> None:
        wave_dirs = [fs.join(wdir, f"w{w:06d}") for w in range(n_waves)]
        commit_waves(out, split, wdir, wave_dirs)
        conn = wi.connect(wdir)
        per_wave = wi.finished_waves(conn)
        conn.close()
        stats = merge_stats([per_wave[w] for w in range(n_waves)])
        stats.update(notes=notes, waves=n_waves, seconds=round(time.time() - started, 2))
        fs.write_json(stats_path(out, split), stats)
        fs.delete([fs.join(wdir, wi.INDEX_NAME)])     # first: a rerun that finds the rest starts afresh
        fs.delete_prefix(wdir)
        fs.remove_empty_dir(fs.parent(wdir))

    # In a child as well: merging the waves' manifests (pyarrow) and stats in the launcher left its peak PSS
    # at 162 MB for 10k inputs, against 145 MB with the commit in a child (bench.pipeline_memory 10000).
    # A commit killed midway is finished by a rerun (sharding/wave_commit.py keeps its plan).
    in_child(commit, "committing the waves (rerun the job to finish it)", resume_hint=False, fork=fork)
    return fs.read_json(stats_path(out, split))
