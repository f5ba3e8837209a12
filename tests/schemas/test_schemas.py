"""The dataclasses and the pyarrow schemas agree, and records round-trip through arrow losslessly."""
import dataclasses
import typing

import pyarrow as pa
import pytest

from polycap import schemas
from polycap.schemas import (
    REJECT_SCHEMA,
    SAMPLE_SCHEMA,
    Caption,
    Hashes,
    ImageInfo,
    OcrLine,
    OcrResult,
    Reason,
    Reject,
    Sample,
    Source,
    reject_to_row,
    sample_from_row,
    sample_to_row,
)
from polycap.schemas.arrow import JSON_FIELDS

STRUCTS = {"source": Source, "image": ImageInfo, "hashes": Hashes, "ocr": OcrResult}


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_sample_fields_match_arrow_columns():
    assert _names(Sample) == SAMPLE_SCHEMA.names


@pytest.mark.parametrize("field,cls", STRUCTS.items())
def test_nested_struct_fields_match(field, cls):
    arrow_type = SAMPLE_SCHEMA.field(field).type
    assert [arrow_type.field(i).name for i in range(arrow_type.num_fields)] == _names(cls)


def test_caption_and_ocr_line_structs_match():
    cap = SAMPLE_SCHEMA.field("captions").type.item_type
    assert [cap.field(i).name for i in range(cap.num_fields)] == _names(Caption)
    line = SAMPLE_SCHEMA.field("ocr").type.field("lines").type.value_type
    assert [line.field(i).name for i in range(line.num_fields)] == _names(OcrLine)


def test_reject_fields_match():
    assert _names(Reject) == REJECT_SCHEMA.names


def test_dict_typed_fields_are_json_columns():
    """Every free-form dict field of a dataclass is stored as a JSON string column."""
    for cls in (Source, OcrResult, Caption, Sample):
        hints = typing.get_type_hints(cls)
        for name, tp in hints.items():
            if typing.get_origin(tp) is dict and name not in ("captions", "conversations"):
                assert name in JSON_FIELDS, f"{cls.__name__}.{name} is a dict but not stored as JSON"


def _full_sample() -> Sample:
    return Sample(
        key="0" * 32,
        source=Source(name="s", uri="/x.jpg", kind="dir", license="cc-by", orig_caption="a cat",
                      meta={"a": [1, 2], "b": "한국어"}),
        image=ImageInfo(bytes=b"\xff\xd8data", format="jpeg", width=10, height=20, orig_format="PNG",
                        orig_width=10, orig_height=20),
        hashes=Hashes(sha256="f" * 64, phash="0123456789abcdef"),
        ocr=OcrResult(engine="paddleocr", models={"det": "v6"}, lines=[
            OcrLine(text="STOP", box=[1, 2, 3, 4], quad=[1, 2, 3, 2, 3, 4, 1, 4], score=0.5)],
            lang="en", text_area_ratio=0.25),
        captions={"en": Caption(text="A cat.", kind="dense", backend="openai", model="m", prompt_id="p",
                                prompt_sha256="e" * 64, params={"temperature": 0.2}, created="t"),
                  "ko": Caption(text="고양이.", kind="translation", translated_from="en")},
        conversations={"en": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Cat."}]},
        provenance={"decode": {"resized": False}},
    )


def test_sample_round_trips_through_arrow_table():
    s = _full_sample()
    table = pa.Table.from_pylist([sample_to_row(s)], schema=SAMPLE_SCHEMA)
    back = sample_from_row(table.to_pylist()[0])
    assert back == s


def test_minimal_sample_round_trips():
    s = Sample(key="1" * 32, source=Source(name="n", uri="u", kind="dir"), image=ImageInfo(bytes=b"x"),
               hashes=Hashes(sha256="a" * 64))
    table = pa.Table.from_pylist([sample_to_row(s)], schema=SAMPLE_SCHEMA)
    assert sample_from_row(table.to_pylist()[0]) == s


def test_reject_row_matches_schema():
    r = Reject(key="k", source_uri="u", stage="decode", reason=Reason.CORRUPT_IMAGE, detail="d")
    table = pa.Table.from_pylist([reject_to_row(r)], schema=REJECT_SCHEMA)
    assert table.column("reason").to_pylist() == ["corrupt_image"]


def test_schema_version_is_semver():
    import re

    assert re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", schemas.SCHEMA_VERSION), schemas.SCHEMA_VERSION
