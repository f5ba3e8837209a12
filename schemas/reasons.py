"""The single enum of reasons a record can be rejected for, grouped by the stage that emits them."""
from enum import StrEnum


class Reason(StrEnum):
    # ingest
    DOWNLOAD_FAILED = "download_failed"        # HTTP status or network error in detail
    INVALID_URL = "invalid_url"                # empty, malformed or non-http(s) scheme
    TOO_LARGE_DOWNLOAD = "too_large_download"  # body exceeded ingest max_bytes
    UNSAFE_PATH = "unsafe_path"                # tar member with `..`/absolute path; a path or link leaving its root
    UNREADABLE = "unreadable"                  # file/tar member could not be read
    MISSING_IMAGE = "missing_image"            # a record (e.g. LLaVA row) names an image that is not there
    BAD_RECORD = "bad_record"                  # a JSON/CSV/parquet row that cannot be parsed
    TOO_LARGE_INPUT = "too_large_input"        # a file, tar member, tar stream or list over its ingest byte budget
    READ_TIMEOUT = "read_timeout"              # a file or tar shard not read within ingest.read_timeout_s
    DOWNLOAD_TIMEOUT = "download_timeout"      # connect, headers or body past ingest.connect_timeout_s/timeout_s
    NOT_A_FILE = "not_a_file"                  # FIFO, device, socket or dangling link: never opened
    HIDDEN_FILE = "hidden_file"                # a dot-file or dot-folder inside an input folder: not read
    DUPLICATE_MEMBER = "duplicate_member"      # a tar member name repeated within one sample: the first is kept
    BLOCKED_ADDRESS = "blocked_address"        # a URL (or redirect hop) resolving to a non-public address
    # not a reject: source.meta["caption_dropped"] names it when a source caption was not usable text
    # (NaN/None-like, not a string, NUL, invalid UTF-8, lone surrogates, mojibake); the image is kept
    BAD_CAPTION = "bad_caption"
    # decode
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_IMAGE = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    UNSUPPORTED_FORMAT = "unsupported_format"
    # filter
    TOO_SMALL = "too_small"                    # min side below filter.min_side
    EXTREME_ASPECT = "extreme_aspect"          # aspect ratio above filter.max_aspect
    FILE_TOO_SMALL = "file_too_small"
    FILE_TOO_LARGE = "file_too_large"
    CAPTION_LANGUAGE = "caption_language"      # source caption not in filter.caption_langs
    CAPTION_TOO_SHORT = "caption_too_short"
    CAPTION_TOO_LONG = "caption_too_long"
    # dedup
    DUPLICATE = "duplicate"                    # detail names the kept key (exact or near)
    # ocr
    OCR_FAILED = "ocr_failed"
    # ocr.status (not a reject: the sample is kept) when lines in a script no installed recognizer reads were
    # left out rather than stored with letters missing; OcrResult.error says how many and what to install
    OCR_UNSUPPORTED_SCRIPT = "unsupported_script"
    # caption (model output gates)
    CAPTION_FAILED = "caption_failed"          # backend error after retries
    GATE_TOO_SHORT = "gate_too_short"
    GATE_TOO_LONG = "gate_too_long"
    GATE_REFUSAL = "gate_refusal"
    GATE_REPETITION = "gate_repetition"
    GATE_WRONG_LANGUAGE = "gate_wrong_language"
    GATE_UNGROUNDED_TEXT = "gate_ungrounded_text"  # quoted text the OCR did not see
    # translate (model output gates)
    TRANSLATE_FAILED = "translate_failed"
    GATE_ENGLISH_LEFT = "gate_english_left"
    GATE_LENGTH_RATIO = "gate_length_ratio"
    GATE_SPANS_CHANGED = "gate_spans_changed"
    GATE_PREAMBLE = "gate_preamble"
    GATE_TRUNCATED = "gate_truncated"
    GATE_EMPTY = "gate_empty"
    # anything unexpected, routed by .with_exception_handling()
    INTERNAL_ERROR = "internal_error"
