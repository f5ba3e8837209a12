"""JobOptions (pipelines/run.py): views parsed once, read and written exactly as Beam's own views."""
from __future__ import annotations

import copy
import pickle

from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    TypeOptions,
)

from polycap.pipelines.run import JobOptions

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
