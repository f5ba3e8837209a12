"""The one stage plumbing: run a per-sample function, count outcomes, route rejects and dead letters.

Every stage DoFn derives from `RoutingDoFn` (a Sample is counted `<stage>/kept`, a Reject
`<stage>/dropped_<reason>` and tagged REJECTS) and is applied with `apply_stage` / `route_stage`, whose
dead-letter output turns an exception into an INTERNAL_ERROR Reject per sample: never a failed job."""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from polycap.schemas import Reason, Reject, Sample

REJECTS = "rejects"
SAMPLES = "samples"
DEAD = "dead"

StageFn = Callable[[Sample], "Sample | Reject"]


def make_reject(sample: Sample, stage: str, reason: Reason, detail: str = "") -> Reject:
    return Reject(key=sample.key, source_uri=sample.source.uri, stage=stage, reason=reason,
                  detail=detail, source_name=sample.source.name)


def error_detail(err: Any) -> str:
    """`Type: message` from a dead letter's error `(type, message, traceback)` (Beam), or its text."""
    if isinstance(err, tuple) and len(err) >= 2:
        return f"{getattr(err[0], '__name__', err[0])}: {err[1]}"[:2000]
    return str(err)[:2000]


def samples_in(element: Any, depth: int = 0) -> list[Sample]:
    """The Samples a failed element carries: itself, a job's `.sample`, a PredictionResult's `.example`,
    or those inside a batch, an outcome tuple or a CoGroupByKey group."""
    if isinstance(element, Sample):
        return [element]
    if depth > 4 or element is None or isinstance(element, (str, bytes, bytearray, memoryview)):
        return []
    for attr in ("sample", "example"):
        inner = getattr(element, attr, None)
        if inner is not None:
            return samples_in(inner, depth + 1)
    if isinstance(element, dict):
        element = list(element.values())
    if isinstance(element, Iterable):
        return [s for x in element for s in samples_in(x, depth + 1)]
    return []


def dead_letter_rejects(bad: tuple[Any, Any], stage: str) -> list[Reject]:
    """The one dead-letter parser: `(element, error)` from `.with_exception_handling()` (or a RunInference
    failed batch) -> an INTERNAL_ERROR Reject per Sample the element carries, with its key and source uri;
    one Reject naming the element when it carries none (a list file, a group of paths)."""
    element, err = bad
    detail = error_detail(err)
    samples = samples_in(element)
    if samples:
        return [make_reject(s, stage, Reason.INTERNAL_ERROR, detail) for s in samples]
    return [Reject(key=str(getattr(element, "key", "") or ""), source_uri=str(element)[:500], stage=stage,
                   reason=Reason.INTERNAL_ERROR, detail=detail)]


def _counted_dead_letters(bad: tuple[Any, Any], stage: str) -> list[Reject]:
    rejects = dead_letter_rejects(bad, stage)
    Metrics.counter(stage, f"dropped_{Reason.INTERNAL_ERROR}").inc(len(rejects))
    return rejects


def dead_letters(stage: str) -> beam.PTransform:
    """Dead letters -> counted INTERNAL_ERROR Rejects."""
    return beam.FlatMap(_counted_dead_letters, stage)


class RoutingDoFn(beam.DoFn):
    """Base of every stage DoFn. `route(item)` counts and tags an outcome: a Sample is `<stage>/kept`
    (main output), a Reject `<stage>/dropped_<reason>` (REJECTS output); anything else (a path, a parsed
    record, a job) passes through uncounted. `count(name)` counts any other event under the stage."""

    stage = ""

    def count(self, name: str, n: int = 1) -> None:
        counters = self.__dict__.setdefault("_counters", {})
        if name not in counters:
            counters[name] = Metrics.counter(self.stage, name)
        counters[name].inc(n)

    def route(self, item: Any) -> Any:
        if isinstance(item, Reject):
            self.count(f"dropped_{item.reason}")
            return beam.pvalue.TaggedOutput(REJECTS, item)
        if isinstance(item, Sample):
            self.count("kept")
        return item


class StageDoFn(RoutingDoFn):
    """Applies `fn(sample) -> Sample | Reject`; rejects go to the REJECTS output, all counted."""

    def __init__(self, fn: StageFn, stage: str):
        self.fn = fn
        self.stage = stage

    def process(self, sample: Sample):
        yield self.route(self.fn(sample))


def auto_threads(threads: int) -> int:
    """`threads` if > 0, else one per CPU core (at most 8)."""
    return threads if threads > 0 else min(os.cpu_count() or 1, 8)


class PooledDoFn(beam.DoFn):
    """Runs `work(element)` on a pool of `threads` threads across a bundle and emits results as they finish.

    For work that waits (HTTP) or releases the GIL (Pillow decode / resize / encode), so one Python worker
    uses more than one core. At most 2 x threads elements are in flight (bounded memory); the rest of the
    bundle waits in `process`. Subclasses define `work` (runs in a pool thread; must not raise: an
    exception there would surface in finish_bundle, where no element can take the blame) and `emit`
    (runs in the bundle thread: counts and tags a result)."""

    threads: int = 1
    thread_name = "polycap-pool"

    def work(self, element: Any) -> Any:
        raise NotImplementedError

    def emit(self, result: Any) -> Any:
        return result

    def setup(self):
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self.thread_name)

    def start_bundle(self):
        self._pending: set[Future] = set()

    def process(self, element: Any) -> Iterator[Any]:
        self._pending.add(self._pool.submit(self.work, element))
        if len(self._pending) >= 2 * self.threads:  # backpressure
            done, self._pending = wait(self._pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield self.emit(fut.result())

    def finish_bundle(self) -> Iterator[Any]:
        for fut in as_completed(self._pending):
            out = self.emit(fut.result())
            tagged = isinstance(out, beam.pvalue.TaggedOutput)
            value = WindowedValue(out.value if tagged else out, MIN_TIMESTAMP, (GlobalWindow(),))
            yield beam.pvalue.TaggedOutput(out.tag, value) if tagged else value
        self._pending = set()

    def teardown(self):
        if hasattr(self, "_pool"):
            self._pool.shutdown(wait=False, cancel_futures=True)


class PooledStageDoFn(PooledDoFn, StageDoFn):
    """StageDoFn whose `fn` runs on `threads` pool threads; an exception in `fn` becomes an INTERNAL_ERROR
    reject of that sample here (the dead-letter output only sees exceptions raised in `process`)."""

    def __init__(self, fn: StageFn, stage: str, threads: int):
        StageDoFn.__init__(self, fn, stage)
        self.threads = threads
        self.thread_name = f"polycap-{stage}"

    def work(self, sample: Sample) -> Sample | Reject:
        try:
            return self.fn(sample)
        except Exception as e:
            return make_reject(sample, self.stage, Reason.INTERNAL_ERROR, format_exc(e)[:2000])

    def emit(self, result: Sample | Reject) -> Any:
        return self.route(result)

    process = PooledDoFn.process  # type: ignore[assignment]  # the pool's, not StageDoFn's


def stage_dofn(fn: StageFn, stage: str, threads: int = 1) -> beam.DoFn:
    """A StageDoFn, pooled over `threads` threads when threads > 1."""
    return PooledStageDoFn(fn, stage, threads) if threads > 1 else StageDoFn(fn, stage)


def apply_stage(pcoll: beam.PCollection, label: str, dofn: beam.DoFn, stage: str, *tags: str,
                partial: bool = False) -> tuple[Any, beam.PCollection]:
    """ParDo with outputs SAMPLES (main), REJECTS and `tags`, and a dead-letter output whose exceptions
    become INTERNAL_ERROR rejects; returns (the outputs, rejects = REJECTS + dead letters). `partial`:
    keep what an element emitted before it raised (a list file read up to a corrupt row)."""
    res = pcoll | label >> beam.ParDo(dofn).with_outputs(REJECTS, *tags, main=SAMPLES).with_exception_handling(
        main_tag=SAMPLES, dead_letter_tag=DEAD, partial=partial)
    dead = res[DEAD] | f"{label}DeadLetters" >> dead_letters(stage)
    return res, (res[REJECTS], dead) | f"{label}Rejects" >> beam.Flatten()


def route_stage(pcoll: beam.PCollection, label: str, dofn: beam.DoFn, stage: str,
                partial: bool = False) -> tuple[beam.PCollection, beam.PCollection]:
    """`apply_stage` for a DoFn with no other outputs; returns (samples, rejects)."""
    res, rejects = apply_stage(pcoll, label, dofn, stage, partial=partial)
    return res[SAMPLES], rejects


def format_exc(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()
