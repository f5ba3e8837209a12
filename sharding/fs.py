"""The one filesystem layer for run artifacts: local paths, s3://, gs://, ... through Beam `FileSystems`.

Every file a job or a `polycap shards` command reads or writes goes through here (STYLE.md rule 24), so one
set of options reaches every backend: workers get them from the runner, launcher-side commands call
`configure(pipeline_args)` with the same `-- --s3_endpoint_url=...` arguments. Parquet is read and written
through Beam's file handles, never through pyarrow's own S3/GCS clients (they would need a second set of
credentials and endpoints).

Object stores have no directories: a "folder" exists when some object's name starts with `folder/`,
`mkdirs` is a no-op there, a single PUT is already atomic (an upload becomes visible only when complete),
and deleting a folder deletes every object under its prefix.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import threading
import time
import types
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

RAW = CompressionTypes.UNCOMPRESSED   # never guess a codec from the name (`.gz`): run artifacts are raw bytes


def _share_s3_clients() -> None:
    """Beam's S3 filesystem builds a new boto3 Session and client for every call (exists, open, create,
    rename, ...); loading the service models costs 0.3-1.5 s of CPU each time (measured against moto here),
    i.e. seconds per staged image. boto3 clients are thread-safe, so one client per process and set of
    options is shared; Beam's own wrapper, which keeps per-download state, is still made per call, and the
    options are Beam's (nothing else reads credentials). A Beam without this layout is left as it is."""
    try:
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:
        return
    real: Any = getattr(boto3_client, "boto3", None)
    if real is None or getattr(real, "_polycap_shared", False):
        return
    lock, clients = threading.Lock(), {}

    class SharedSession:
        def client(self, **kw: Any) -> Any:
            key = tuple(sorted((k, repr(v)) for k, v in kw.items()))
            with lock:
                if key not in clients:
                    clients[key] = real.session.Session().client(**kw)
                return clients[key]

    boto3_client.boto3 = types.SimpleNamespace(session=types.SimpleNamespace(Session=SharedSession),
                                               _polycap_shared=True)


_share_s3_clients()


def configure(pipeline_args: list[str] | None) -> None:
    """Give the launcher's FileSystems the Beam options (`--s3_endpoint_url`, `--s3_access_key_id`, ...)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    FileSystems.set_options(PipelineOptions(list(pipeline_args or [])))


def has_dirs(path: str) -> bool:
    """True for filesystems with real directories (local disk); False for object stores."""
    return bool(FileSystems.get_filesystem(path).has_dirs())


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> str | None:
    """The plain path of a file on this machine's disk (`file://` dropped); None for any other filesystem."""
    return path.removeprefix("file://") if is_local(path) else None


def abs_path(path: str) -> str:
    """Absolute local paths (workers of a multi-process runner share them); URLs unchanged."""
    return path if "://" in path else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def parent(path: str) -> str:
    return FileSystems.split(path.rstrip("/"))[0]


def _prefix(folder: str) -> str:
    return folder.rstrip("/") + "/"


def is_file(path: str) -> bool:
    if has_dirs(path):
        return os.path.isfile(path) if is_local(path) else FileSystems.exists(path)
    return FileSystems.exists(path)


def is_dir(path: str) -> bool:
    """A local directory, or an object-store prefix with at least one object under it."""
    if has_dirs(path):
        return os.path.isdir(path) if is_local(path) else FileSystems.exists(path)
    return bool(FileSystems.match([_prefix(path) + "**"], limits=[1])[0].metadata_list)


def exists(path: str) -> bool:
    """A file, or a folder (object stores: any object under `path/`)."""
    return FileSystems.exists(path) or (not has_dirs(path) and is_dir(path))


def list_dir(folder: str, recursive: bool = False) -> dict[str, int]:
    """name relative to `folder` -> size, for files directly inside it (or, `recursive`, anywhere below).
    Hidden names are included; a missing folder lists as empty."""
    prefix = _prefix(folder)
    out: dict[str, int] = {}
    for m in FileSystems.match([prefix + "**"])[0].metadata_list:
        rel = m.path[len(prefix):] if m.path.startswith(prefix) else basename(m.path)
        if rel and (recursive or "/" not in rel):
            out[rel] = m.size_in_bytes
    return out


def glob(pattern: str) -> list[str]:
    """Paths matching a glob (`*` within a name, `**` across folders), sorted; [] when none."""
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def size(path: str) -> int:
    return int(FileSystems.match([path])[0].metadata_list[0].size_in_bytes)


def mkdirs(path: str) -> None:
    """Create a local directory (and parents); nothing to do on object stores. Safe under races."""
    if not has_dirs(path):
        return
    if is_local(path):
        os.makedirs(path, exist_ok=True)
        return
    if not FileSystems.exists(path):
        try:
            FileSystems.mkdirs(path)
        except OSError:
            if not FileSystems.exists(path):
                raise


def remove_empty_dir(path: str) -> None:
    """Remove a local directory if it is empty (object stores have no empty folders to remove)."""
    if has_dirs(path) and is_local(path):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def open_read(path: str) -> IO[bytes]:
    """A seekable binary reader (Beam's handle: local file, S3/GCS ranged reads). A missing or unreadable
    file raises OSError on every filesystem (Beam's S3 client raises its own error type)."""
    try:
        return FileSystems.open(path, compression_type=RAW)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - S3ClientError and friends are not OSErrors
        raise OSError(f"{path}: {e}") from e


def create(path: str) -> IO[bytes]:
    """A binary writer at `path` (local parents created). Not atomic locally: see `atomic_create`."""
    if has_dirs(path):
        mkdirs(parent(path))
    return FileSystems.create(path, compression_type=RAW)


def temp_name(path: str) -> str:
    """A hidden temp name beside `path` (`.<name>.tmp-<32 hex>`): no reader lists it, validate warns on it."""
    return join(parent(path), f".{basename(path)}.tmp-{uuid.uuid4().hex}")


@contextlib.contextmanager
def atomic_create(path: str, durable: bool = True) -> Iterator[IO[bytes]]:
    """Write `path` so readers see the old file or the whole new one, never a part.

    Local: a temp file beside it, fsync (unless `durable=False`: scratch files a crash makes worthless
    anyway), rename over. Object stores: one upload, which only becomes visible when it completes (a killed
    process leaves nothing); on an exception the completed object is removed."""
    if not has_dirs(path):
        f: IO[bytes] = FileSystems.create(path, compression_type=RAW)
        try:
            yield f
        except BaseException:
            f.close()
            delete([path])
            raise
        f.close()
        return
    tmp = temp_name(path)
    f = create(tmp)
    try:
        yield f
        if durable:
            with contextlib.suppress(AttributeError, OSError, ValueError):   # durable before it is renamed
                f.flush()
                os.fsync(f.fileno())
        f.close()
        FileSystems.rename([tmp], [path])
    except BaseException:
        f.close()
        delete([tmp])
        raise


def create_new(path: str, data: bytes) -> bool:
    """Create `path` holding `data` only if nothing is there yet; True when this call created it.

    Local disk: O_CREAT|O_EXCL (atomic on POSIX and on NFSv3+), written and fsynced before it returns.
    s3://: a conditional PUT (`If-None-Match: *`, supported by S3 since 2024, MinIO and moto); a server
    that refuses the header falls back as below. Other object stores (gs://, ...): check, PUT, wait a moment
    and read it back; of two creators racing inside that window both may win, so this is a best effort
    there (documented in README, "Security and limits")."""
    local = local_path(path)
    if has_dirs(path) and local is not None:
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        try:
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True
    if path.startswith("s3://"):
        won = _s3_put_if_absent(path, data)
        if won is not None:
            return won
    if FileSystems.exists(path):
        return False
    write_bytes(path, data)
    time.sleep(CREATE_SETTLE_S)
    try:
        return read_bytes(path) == data
    except OSError:
        return False


CREATE_SETTLE_S = 1.0   # the fallback's wait before reading back what it wrote


def _s3_put_if_absent(path: str, data: bytes) -> bool | None:
    """A conditional PUT with Beam's S3 options: True created, False already there, None unsupported."""
    try:
        from apache_beam.io.aws.clients.s3 import boto3_client
        from apache_beam.options.pipeline_options import PipelineOptions
        from botocore.exceptions import ClientError
    except ImportError:
        return None
    bucket, _, key = path[len("s3://"):].partition("/")
    client = boto3_client.Client(FileSystems._pipeline_options or PipelineOptions([])).client
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as e:
        err = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (409, 412) or err.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        if status in (400, 501) or err.get("Code") == "NotImplemented":
            return None
        raise OSError(f"{path}: {e}") from e
    return True


def read_bytes(path: str) -> bytes:
    local = local_path(path)
    if local is not None:                   # one open and read, no Beam filesystem lookup per file
        with open(local, "rb") as f:
            return f.read()
    with open_read(path) as f:
        return f.read()


def write_bytes(path: str, data: bytes, durable: bool = True) -> None:
    """Atomic small-file write (temp + rename locally; a single PUT on object stores)."""
    with atomic_create(path, durable) as f:
        f.write(data)


_scratch_dirs: set[str] = set()    # local folders write_scratch made (or found) in this process


def write_scratch(path: str, data: bytes) -> None:
    """Write a run's scratch file (staged image bytes), read only later in the same run: on a local disk in
    place (open, write, close; its folder made once per process), with no temp name, rename, fsync or check
    that it exists. Each of those system calls let go of the GIL, and decode's pool threads, which stage from
    inside the decode, waited for it back (~9 calls a file before). Not atomic: a crash can leave a partial
    file, which no later run reads (staging is per run id); a second write of the same path in the run writes
    the same bytes. Other filesystems: one PUT, as write_bytes."""
    local = local_path(path)
    if local is None:
        write_bytes(path, data, durable=False)
        return
    folder = os.path.dirname(local)
    if folder not in _scratch_dirs:
        os.makedirs(folder, exist_ok=True)
        _scratch_dirs.add(folder)
    try:
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:               # the folder was removed since (an earlier run's staging cleared)
        os.makedirs(folder, exist_ok=True)
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def write_json(path: str, data: Any, indent: int | None = 2) -> None:
    text = json.dumps(data, indent=indent, ensure_ascii=False, sort_keys=True, default=str)
    write_bytes(path, (text + "\n").encode("utf-8"))


def rename(src: list[str], dst: list[str]) -> None:
    if src:
        FileSystems.rename(src, dst)


def rename_converging(src: list[str], dst: list[str]) -> int:
    """Rename each `src[i]` to `dst[i]` so that a retry after a partial attempt converges: a pair whose
    source is gone and whose target exists was done before. Decided from one listing per folder, not a
    request per file. Returns how many renames were left to do; FileNotFoundError when both are missing."""
    present: set[str] = set()
    for folder in {parent(p) for p in (*src, *dst)}:
        present |= {join(folder, n) for n in list_dir(folder)}
    todo = [(s, d) for s, d in zip(src, dst) if s in present]
    lost = [s for s, d in zip(src, dst) if s not in present and d not in present]
    if lost:
        raise FileNotFoundError(f"rename: {len(lost)} source(s) and their targets are both missing, e.g. {lost[0]}")
    if todo:
        FileSystems.rename([s for s, _ in todo], [d for _, d in todo])
    return len(todo)


def delete(paths: Iterable[str]) -> None:
    """Delete files; a path that is already gone is not an error (retries and races converge)."""
    paths = list(paths)
    if not paths:
        return
    try:
        FileSystems.delete(paths)
    except BeamIOError as e:
        still = [p for p in (e.exception_details or {}) if FileSystems.exists(p)]
        if still:
            raise


def delete_prefix(folder: str) -> int:
    """Remove a folder and everything under it (every object under `folder/` on object stores);
    returns how many files went. A missing folder is not an error."""
    if has_dirs(folder):
        if not exists(folder):
            return 0
        n = len(list_dir(folder, recursive=True))
        delete([folder])
        return n
    names = list_dir(folder, recursive=True)
    delete([join(folder, n) for n in names])
    return len(names)


# ---------------------------------------------------------------- parquet through Beam handles
# Arrow reads a Python file object synchronously here (pre_buffer=False, use_threads=False): with its
# defaults a read-ahead task on Arrow's IO pool can outlive the read, still holding the Python file, and
# release it on an Arrow thread during interpreter shutdown -> std::terminate, exit 134 after a good run
# (core dump: PyReadableFile destructor in ThreadPool worker; apache/arrow#34314). Always open parquet
# through these functions, never pq.read_table / pq.ParquetFile on a file object elsewhere.

def read_parquet(path: str, columns: list[str] | None = None, filters: Any = None) -> Any:
    import pyarrow.parquet as pq

    with open_read(path) as f:
        return pq.read_table(f, columns=columns, filters=filters, pre_buffer=False, use_threads=False)


def iter_parquet(path: str, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[Any]:
    """Record batches of one parquet file, streamed (one batch in memory)."""
    import pyarrow.parquet as pq

    with open_read(path) as f:
        pf = pq.ParquetFile(f, pre_buffer=False)
        yield from pf.iter_batches(batch_size=batch_size, columns=columns, use_threads=False)


def parquet_schema(path: str) -> Any:
    import pyarrow.parquet as pq

    with open_read(path) as f:
        return pq.ParquetFile(f, pre_buffer=False).schema_arrow


def parquet_rows(path: str) -> int:
    """The row count in a parquet file's footer (no data is read)."""
    import pyarrow.parquet as pq

    with open_read(path) as f:
        return int(pq.ParquetFile(f, pre_buffer=False).metadata.num_rows)


def write_parquet(path: str, table: Any) -> None:
    """One parquet file, atomically (see `atomic_create`)."""
    import pyarrow.parquet as pq

    with atomic_create(path) as f:
        pq.write_table(table, f)
