"""Shared stage plumbing: run a per-sample function, count outcomes, route rejects and dead letters."""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
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


def dead_letter_to_reject(bad: tuple[Any, Any], stage: str) -> Reject:
    """Turn a `.with_exception_handling()` dead letter `(element, (type, msg, tb))` into a Reject."""
    element, err = bad
    if isinstance(err, tuple) and len(err) >= 2:
        detail = f"{err[0].__name__ if isinstance(err[0], type) else err[0]}: {err[1]}"
    else:
        detail = str(err)
    key = getattr(element, "key", "") or ""
    uri = element.source.uri if isinstance(element, Sample) else str(element)[:500]
    name = element.source.name if isinstance(element, Sample) else ""
    return Reject(key=key, source_uri=uri, stage=stage, reason=Reason.INTERNAL_ERROR,
                  detail=detail[:2000], source_name=name)


class StageDoFn(beam.DoFn):
    """Applies `fn(sample) -> Sample | Reject`; rejects go to the REJECTS output, all counted."""

    def __init__(self, fn: StageFn, stage: str):
        self.fn = fn
        self.stage = stage
        self._counters: dict[str, Any] = {}

    def _count(self, name: str) -> None:
        if name not in self._counters:
            self._counters[name] = Metrics.counter(self.stage, name)
        self._counters[name].inc()

    def _emit(self, out: Sample | Reject) -> Any:
        if isinstance(out, Reject):
            self._count(f"dropped_{out.reason}")
            return beam.pvalue.TaggedOutput(REJECTS, out)
        self._count("kept")
        return out

    def process(self, sample: Sample):
        yield self._emit(self.fn(sample))


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
        return self._emit(result)

    process = PooledDoFn.process  # type: ignore[assignment]  # the pool's, not StageDoFn's


def stage_dofn(fn: StageFn, stage: str, threads: int = 1) -> beam.DoFn:
    """A StageDoFn, pooled over `threads` threads when threads > 1."""
    return PooledStageDoFn(fn, stage, threads) if threads > 1 else StageDoFn(fn, stage)


def route_stage(pcoll: beam.PCollection, label: str, dofn: beam.DoFn,
                stage: str) -> tuple[beam.PCollection, beam.PCollection]:
    """ParDo with a REJECTS output and a dead-letter output; returns (samples, rejects)."""
    res = pcoll | label >> beam.ParDo(dofn).with_outputs(REJECTS, main=SAMPLES).with_exception_handling(
        main_tag=SAMPLES, dead_letter_tag=DEAD)
    dead = res[DEAD] | f"{label}DeadLetters" >> beam.Map(dead_letter_to_reject, stage)
    rejects = (res[REJECTS], dead) | f"{label}Rejects" >> beam.Flatten()
    return res[SAMPLES], rejects


def format_exc(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()
