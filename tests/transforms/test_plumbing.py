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
from polycap.transforms.plumbing import PooledStageDoFn, StageDoFn, auto_threads, make_reject, route_stage, stage_dofn
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
