"""Shared stage plumbing: run a per-sample function, count outcomes, route rejects and dead letters."""
from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import Reason, Reject, Sample

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

    def process(self, sample: Sample):
        out = self.fn(sample)
        if isinstance(out, Reject):
            self._count(f"dropped_{out.reason}")
            yield beam.pvalue.TaggedOutput(REJECTS, out)
        else:
            self._count("kept")
            yield out


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
