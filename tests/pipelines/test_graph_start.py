"""What every graph's start costs less (pipelines/run.py, waves.py): JobOptions parses each options view once,
`keep_dofn_specs` answers Beam's state and timer spec question once per DoFn (both answer as Beam does), and
the launcher stays frozen from wave to wave."""
from __future__ import annotations

import copy
import pickle

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    TypeOptions,
)
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from polycap.pipelines.run import JobOptions, keep_dofn_specs

FLAGS = ["--runner=DirectRunner", "--direct_num_workers=2", "--type_check_strictness=ALL_REQUIRED",
         "--project=p1", "--unknown_flag=x"]
VIEWS = (StandardOptions, DirectOptions, TypeOptions, GoogleCloudOptions)


def _values(opts: PipelineOptions) -> dict:
    return {cls.__name__: {name: getattr(opts.view_as(cls), name) for name in opts.view_as(cls)._visible_option_list()}
            for cls in VIEWS}


def test_views_are_kept_and_show_what_beams_views_show():
    kept, beams = JobOptions(FLAGS), PipelineOptions(FLAGS)
    assert kept.view_as(TypeOptions) is kept.view_as(TypeOptions)
    assert beams.view_as(TypeOptions) is not beams.view_as(TypeOptions)   # what JobOptions saves
    assert _values(kept) == _values(beams)
    assert kept.get_all_options() == beams.get_all_options()
    assert kept.view_as(DirectOptions).direct_num_workers == 2


def test_a_value_set_through_one_view_is_seen_by_every_view():
    opts = JobOptions(FLAGS)
    opts.view_as(StandardOptions).runner = None
    assert opts.view_as(StandardOptions).runner is None
    assert PipelineOptions.view_as(opts, StandardOptions).runner is None    # a fresh, unkept view
    opts.view_as(StandardOptions).runner = "DirectRunner"
    assert opts.get_all_options()["runner"] == "DirectRunner"


def test_copies_and_pickles_keep_the_values_but_not_the_views():
    opts = JobOptions(FLAGS)
    view = opts.view_as(TypeOptions)
    for other in (copy.deepcopy(opts), pickle.loads(pickle.dumps(opts))):
        assert type(other) is JobOptions
        assert other.view_as(TypeOptions) is not view
        assert _values(other) == _values(opts)
        other.view_as(StandardOptions).runner = "Elsewhere"          # the copy's own values
        assert opts.view_as(StandardOptions).runner == "DirectRunner"


COUNT = userstate.ReadModifyWriteStateSpec("count", VarIntCoder())
ALARM = userstate.TimerSpec("alarm", TimeDomain.WATERMARK)


class _Stateful(beam.DoFn):
    def process(self, kv, count=beam.DoFn.StateParam(COUNT), alarm=beam.DoFn.TimerParam(ALARM)):
        yield kv

    @userstate.on_timer(ALARM)
    def ring(self):
        pass


class _Plain(beam.DoFn):
    def process(self, x):
        yield x


class _Unhashable(_Plain):
    __hash__ = None  # type: ignore[assignment]


class _Twice(beam.DoFn):
    def process(self, x, a=beam.DoFn.StateParam(COUNT), b=beam.DoFn.StateParam(COUNT)):
        yield x


@pytest.fixture
def kept_specs(monkeypatch):
    """keep_dofn_specs installed for one test, Beam's own function counted underneath."""
    calls: list[object] = []
    beams = userstate.get_dofn_specs

    def counted(dofn):
        calls.append(dofn)
        return beams(dofn)

    monkeypatch.setattr(userstate, "get_dofn_specs", counted)
    keep_dofn_specs()
    keep_dofn_specs()                      # twice: installed once
    return beams, calls


def test_dofn_specs_are_beams_answer_asked_once_per_dofn(kept_specs):
    beams, calls = kept_specs
    stateful, plain = _Stateful(), _Plain()
    for dofn in (stateful, plain, stateful, plain, stateful):
        assert userstate.get_dofn_specs(dofn) == beams(dofn)
    assert userstate.get_dofn_specs(stateful) == ({COUNT}, {ALARM})
    assert userstate.is_stateful_dofn(stateful) and not userstate.is_stateful_dofn(plain)
    assert calls == [stateful, plain]
    specs = userstate.get_dofn_specs(stateful)
    specs[0].clear()                       # a caller's copy: the kept answer is unchanged
    assert userstate.get_dofn_specs(stateful) == ({COUNT}, {ALARM})


def test_unhashable_dofns_are_asked_every_time_and_errors_still_raise(kept_specs):
    _, calls = kept_specs
    odd = _Unhashable()
    assert userstate.get_dofn_specs(odd) == userstate.get_dofn_specs(odd) == (set(), set())
    assert calls == [odd, odd]
    with pytest.raises(ValueError, match="duplicate"):
        userstate.get_dofn_specs(_Twice())
    with pytest.raises(ValueError, match="duplicate"):
        userstate.get_dofn_specs(_Twice())


def test_a_stateful_pipeline_runs_with_kept_specs(kept_specs):
    class Sum(beam.DoFn):
        def process(self, kv, count=beam.DoFn.StateParam(COUNT)):
            count.write((count.read() or 0) + kv[1])
            yield kv[0], count.read()

    with beam.Pipeline(options=JobOptions([])) as p:
        out = p | beam.Create([("a", 1), ("a", 2), ("b", 5)]) | beam.ParDo(Sum()) | beam.CombinePerKey(max)
        assert_that(out, equal_to([("a", 3), ("b", 5)]))


def test_in_child_leaves_the_launcher_frozen_only_when_asked(tmp_path):
    import gc

    from polycap.pipelines.waves import in_child

    marker = tmp_path / "ran"
    try:
        in_child(lambda: marker.write_text("1"), "wave 0", thaw=False)
        assert marker.read_text() == "1"
        assert gc.get_freeze_count() > 0          # the next wave's collection skips the launcher's objects
        in_child(lambda: marker.write_text("2"), "wave 1", thaw=False)
        assert marker.read_text() == "2"
    finally:
        gc.unfreeze()
    in_child(lambda: marker.write_text("3"), "the run")
    assert marker.read_text() == "3" and gc.get_freeze_count() == 0


def test_bundle_state_samplers_wake_within_the_short_period(monkeypatch):
    """quick_sampler_stop: a sampler made as Beam's bundle processor makes it (no period given) wakes every
    SAMPLER_PERIOD_MS at most, a shorter period asked for is kept, and it still samples and stops."""
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    from polycap.pipelines.run import SAMPLER_PERIOD_MS, quick_sampler_stop

    monkeypatch.setattr(statesampler.StateSampler, "__init__", statesampler.StateSampler.__init__)
    quick_sampler_stop()
    quick_sampler_stop()                   # twice: wrapped once
    made = statesampler.StateSampler("step", CounterFactory())
    assert made.sampling_period_ms == SAMPLER_PERIOD_MS < statesampler.DEFAULT_SAMPLING_PERIOD_MS
    assert statesampler.StateSampler("step", CounterFactory(), sampling_period_ms=3).sampling_period_ms == 3
    made.start()
    with made.scoped_state("step", "process"):
        pass
    made.stop()
    assert made.finished
