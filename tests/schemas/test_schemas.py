"""The dataclasses and the pyarrow schemas agree, and a reject row fits its schema."""
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
)

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


def _arrow_struct(cls) -> pa.DataType | pa.Schema:
    if cls is Sample:
        return SAMPLE_SCHEMA
    if cls is Caption:
        return SAMPLE_SCHEMA.field("captions").type.item_type
    return SAMPLE_SCHEMA.field({Source: "source", OcrResult: "ocr"}[cls]).type


def test_dict_typed_fields_are_json_columns():
    """Every free-form dict field of a dataclass is stored as a JSON string column."""
    for cls in (Source, OcrResult, Caption, Sample):
        arrow = _arrow_struct(cls)
        for name, tp in typing.get_type_hints(cls).items():
            if typing.get_origin(tp) is dict and name not in ("captions", "conversations"):
                assert arrow.field(name).type == pa.string(), f"{cls.__name__}.{name} is a dict but not a JSON column"


def test_reject_row_matches_schema():
    r = Reject(key="k", source_uri="u", stage="decode", reason=Reason.CORRUPT_IMAGE, detail="d")
    table = pa.Table.from_pylist([reject_to_row(r)], schema=REJECT_SCHEMA)
    assert table.column("reason").to_pylist() == ["corrupt_image"]


def test_schema_version_is_semver():
    import re

    assert re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", schemas.SCHEMA_VERSION), schemas.SCHEMA_VERSION
