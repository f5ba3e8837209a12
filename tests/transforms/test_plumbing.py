"""The shared stage plumbing: a pooled stage keeps every sample (kept or rejected) and really runs in threads."""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.windowed_value import WindowedValue

from polycap.schemas import Reason, Reject
from polycap.transforms.plumbing import (
    PooledStageDoFn,
    RoutingDoFn,
    StageDoFn,
    auto_threads,
    dead_letter_rejects,
    make_reject,
    route_stage,
    stage_dofn,
)
from tests.conftest import make_sample


class _Probe:
    """A stage function that records which threads ran it and how many calls overlapped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: set[str] = set()
        self.now = self.peak = 0

    def __call__(self, sample):
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(0.01)  # long enough for calls to overlap when they can
            uri = sample.source.uri
            if uri.endswith("boom"):
                raise ValueError("stage bug on " + uri)
            if uri.endswith("bad"):
                return make_reject(sample, "probe", Reason.CORRUPT_IMAGE, "bad on purpose")
            return replace(sample, provenance={"probe": uri})
        finally:
            with self.lock:
                self.now -= 1


def _samples(n: int):
    uris = [f"mem://{i}" for i in range(n)] + ["mem://x-bad", "mem://y-boom"]
    return [make_sample(u.encode() * 3, uri=u) for u in uris]


def _unwrap(out):
    out = out.value if isinstance(out, beam.pvalue.TaggedOutput) else out
    return out.value if isinstance(out, WindowedValue) else out  # finish_bundle emits windowed values


def _run_direct(dofn, samples):
    """Drive a DoFn by hand, as one bundle (what a runner does), and return everything it emitted."""
    dofn.setup()
    dofn.start_bundle()
    out = [o for s in samples for o in dofn.process(s)] + list(dofn.finish_bundle() or [])
    dofn.teardown()
    return [_unwrap(o) for o in out]


def test_pooled_stage_uses_threads_bounds_them_and_loses_nothing():
    probe = _Probe()
    samples = _samples(40)
    outs = _run_direct(PooledStageDoFn(probe, "probe", threads=4), samples)
    assert sorted(o.key for o in outs) == sorted(s.key for s in samples)  # each sample exactly once
    assert len(probe.threads) > 1 and all(t.startswith("polycap-probe") for t in probe.threads)
    assert 1 < probe.peak <= 4
    rejects = {o.source_uri: o for o in outs if isinstance(o, Reject)}
    assert rejects["mem://x-bad"].reason == Reason.CORRUPT_IMAGE
    boom = rejects["mem://y-boom"]  # an exception in a pool thread is that sample's reject, not a crash
    assert boom.reason == Reason.INTERNAL_ERROR and boom.stage == "probe" and "ValueError: stage bug" in boom.detail
    assert len(rejects) == 2


def test_pooled_stage_in_a_pipeline_matches_the_plain_one():
    samples = _samples(12)

    def result(dofn):
        with TestPipeline() as p:
            kept, rejects = route_stage(p | beam.Create(samples), "Probe", dofn, "probe")
            assert_that(kept | beam.Map(lambda s: (s.key, s.provenance["probe"])),
                        equal_to([(s.key, s.source.uri) for s in samples[:12]]), label="kept")
            assert_that(rejects | beam.Map(lambda r: (r.source_uri, str(r.reason))),
                        equal_to([("mem://x-bad", "corrupt_image"), ("mem://y-boom", "internal_error")]),
                        label="rejects")

    result(stage_dofn(_Probe(), "probe", threads=3))
    result(stage_dofn(_Probe(), "probe", threads=1))  # the dead-letter output catches the exception here


def test_stage_dofn_choice_and_auto_threads():
    assert type(stage_dofn(_Probe(), "s", 1)) is StageDoFn
    assert type(stage_dofn(_Probe(), "s", 2)) is PooledStageDoFn
    assert auto_threads(3) == 3 and 1 <= auto_threads(0) <= 8


def test_one_dead_letter_parser_for_every_element_shape():
    from apache_beam.ml.inference.base import PredictionResult

    a, b = make_sample(b"a" * 3, uri="mem://a"), make_sample(b"b" * 3, uri="mem://b")
    err = (ValueError, "ValueError('bad')", ["Traceback ..."])

    class Job:                                   # a caption job: carries its sample as `.sample`
        def __init__(self, sample):
            self.sample = sample

    shapes = {
        "sample": (a, [a]),
        "prediction": (PredictionResult(example=a, inference=None), [a]),
        "batch of jobs": ([Job(a), Job(b)], [a, b]),
        "outcome tuple": ((Job(a), [], "smoke"), [a]),
        "cogroup": (("k", {"samples": [a, b], "drop": [("k2", "mem://k2", 3)]}), [a, b]),
    }
    for name, (element, want) in shapes.items():
        rejects = dead_letter_rejects((element, err), "probe")
        assert [(r.key, r.source_uri) for r in rejects] == [(s.key, s.source.uri) for s in want], name
        assert all(r.reason == Reason.INTERNAL_ERROR and r.stage == "probe" and r.detail.startswith("ValueError: ")
                   for r in rejects), name
    (path,) = dead_letter_rejects(("gs://bucket/list.parquet", "boom"), "ingest")   # no sample: named element
    assert path.source_uri == "gs://bucket/list.parquet" and path.key == "" and path.detail == "boom"


def test_routing_passes_intermediate_elements_uncounted():
    class Probe(RoutingDoFn):
        stage = "probe"

    dofn, s = Probe(), make_sample(b"x" * 3, uri="mem://x")
    assert dofn.route(s) is s and dofn.route("a/path") == "a/path"
    tagged = dofn.route(make_reject(s, "probe", Reason.CORRUPT_IMAGE))
    assert isinstance(tagged, beam.pvalue.TaggedOutput) and tagged.tag == "rejects"
    assert sorted(dofn._counters) == ["dropped_corrupt_image", "kept"]
