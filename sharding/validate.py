"""Check a shard directory end to end: every tar complete and well-formed, and in agreement with the manifest."""
from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import asdict, dataclass, field
from typing import Any

from polycap.sharding import fs, record_json
from polycap.sharding import manifest as mf
from polycap.sharding.image_format import sniff_format
from polycap.sharding.lock import LOCK_NAME, describe, read_lock
from polycap.sharding.members import SHARD_RE, split_member, text_lang
from polycap.sharding.reader import end_blocks_ok, member_end
from polycap.sharding.writer import SAFE_KEY_RE, TMP_RE


@dataclass
class ValidationReport:
    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)   # one per tar: name, samples, bytes, sha256, ok
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def file_sha256(path: str) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with fs.open_read(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _check_sample(name: str, key: str, parts: dict[str, bytes], errors: list[str],
                  warnings: list[str]) -> None:
    if not SAFE_KEY_RE.match(key):
        errors.append(f"{name}: key {key!r} is not a dot-free name")
    if not parts.get("jpg"):
        errors.append(f"{name}: sample {key} has no jpg")
    elif sniff_format(parts["jpg"]) != "JPEG":
        warnings.append(f"{name}: sample {key} jpg member is not JPEG data")
    if "json" not in parts:
        errors.append(f"{name}: sample {key} has no json")
        return
    try:
        rec = json.loads(parts["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        errors.append(f"{name}: sample {key} json does not parse ({e})")
        return
    if not isinstance(rec, dict) or rec.get("key") != key:
        errors.append(f"{name}: sample {key} json key is {rec.get('key') if isinstance(rec, dict) else rec!r}")
        return
    for ext in parts:
        if ext.endswith("txt"):
            try:
                parts[ext].decode("utf-8")
            except UnicodeDecodeError:
                errors.append(f"{name}: sample {key} {ext} is not UTF-8")
    if record_json.is_v2(rec):
        declared = {m for _, m in record_json.langs_of(rec)}
        expected = {"jpg", "json", "txt"} | declared
        if set(parts) != expected:
            errors.append(f"{name}: sample {key} members {sorted(parts)} != {sorted(expected)} (the json's "
                          f"captions list names one text member per language of the run)")
        for c in rec["captions"]:
            has_text = bool(parts.get(c["member"], b"").strip())
            if bool(c.get("present")) != has_text:
                errors.append(f"{name}: sample {key} {c['member']} is {'set' if has_text else 'empty'} but "
                              f"the json says present={c.get('present')} (why={c.get('why')!r})")
        return
    langs = {lang for ext in parts if (lang := text_lang(ext))}
    if isinstance(rec.get("captions"), dict) and set(rec["captions"]) != langs:
        errors.append(f"{name}: sample {key} txt languages {sorted(langs)} != json captions "
                      f"{sorted(rec['captions'])}")


def check_tar(path: str) -> tuple[list[str], list[str], list[str]]:
    """(keys in order, errors, warnings) for one tar; a truncated or unreadable tar is an error."""
    name = mf.basename(path)
    keys: list[str] = []
    errors: list[str] = []
    warnings: list[str] = []
    seen: set[str] = set()
    cur: dict[str, bytes] = {}
    end = 0
    try:
        with fs.open_read(path) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    errors.append(f"{name}: member {m.name!r} is not a regular file")
                    continue
                end = member_end(m)
                try:
                    key, ext = split_member(m.name)
                except ValueError as e:
                    errors.append(f"{name}: {e}")
                    continue
                if not keys or key != keys[-1]:
                    if keys:
                        _check_sample(name, keys[-1], cur, errors, warnings)
                    if key in seen:
                        errors.append(f"{name}: members of {key} are not adjacent")
                    seen.add(key)
                    keys.append(key)
                    cur = {}
                if ext in cur:
                    errors.append(f"{name}: sample {key} has two {ext} members")
                data = tf.extractfile(m)
                cur[ext] = data.read() if data is not None else b""
            if keys:
                _check_sample(name, keys[-1], cur, errors, warnings)
            if not end_blocks_ok(f, end):
                errors.append(f"{name}: truncated (no end-of-archive blocks after the last member)")
    except (tarfile.TarError, EOFError, OSError) as e:
        errors.append(f"{name}: unreadable or truncated ({type(e).__name__}: {e})")
    return keys, errors, warnings


def _check_against_manifest(rep: ValidationReport, found: dict[str, dict[str, Any]],
                            recorded: dict[str, dict[str, Any]]) -> None:
    for shard, info in recorded.items():
        if info["conflicts"]:
            rep.errors.append(f"manifest: rows of {shard} disagree on {sorted(info['conflicts'])}")
        if shard not in found:
            rep.errors.append(f"manifest names {shard}, which is missing")
    for shard, got in found.items():
        if shard not in recorded:
            rep.errors.append(f"{shard}: not in the manifest")
            continue
        rec = recorded[shard]
        if got["sha256"] != rec["sha256"]:
            rep.errors.append(f"{shard}: sha256 {got['sha256'][:12]}… != recorded {rec['sha256'][:12]}…")
        if got["bytes"] != rec["bytes"]:
            rep.errors.append(f"{shard}: {got['bytes']} bytes != recorded {rec['bytes']}")
        if got["samples"] != rec["samples"] or len(rec["keys"]) != rec["samples"]:
            rep.errors.append(f"{shard}: {got['samples']} samples, manifest records {rec['samples']} "
                              f"with {len(rec['keys'])} rows")
        if got["keys"] != rec["keys"]:
            diff = sorted(set(got["keys"]) ^ set(rec["keys"]))[:3]
            rep.errors.append(f"{shard}: keys differ from the manifest (e.g. {diff or 'order'})")


def validate_dir(run_or_shard_dir: str) -> ValidationReport:
    """Validate all `{split}-NNNNNN.tar` under a run dir (or shard dir) against `manifest.parquet`."""
    run_dir, shards_dir = mf.resolve_dirs(mf.abs_path(run_or_shard_dir))
    rep = ValidationReport(path=run_dir)
    files = mf.list_files(shards_dir)
    found: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    for name in sorted(files):
        if TMP_RE.match(name):
            rep.warnings.append(f"leftover temp file {name} (from an interrupted run; ignored by readers)")
            continue
        if not SHARD_RE.match(name):
            if name.endswith(".tar"):
                rep.warnings.append(f"{name}: not a shard name ({{split}}-NNNNNN.tar); ignored")
            continue
        path = mf.join(shards_dir, name)
        sha, size = file_sha256(path)
        keys, errors, warnings = check_tar(path)
        rep.errors += errors
        rep.warnings += warnings
        for k in keys:
            if k in owner and owner[k] != name:
                rep.errors.append(f"key {k} is in both {owner[k]} and {name}")
            owner.setdefault(k, name)
        found[name] = {"sha256": sha, "bytes": size, "samples": len(keys), "keys": keys}
        rep.shards.append({"shard": name, "samples": len(keys), "bytes": size, "sha256": sha,
                           "ok": not errors})
        rep.samples += len(keys)
    holder = read_lock(run_dir)
    if holder is not None:
        rep.warnings.append(f"{LOCK_NAME}: locked by {describe(holder)}; a run is writing here (or died: see "
                            f"README, 'Security and limits'), so shards and manifest may still change")
    manifest = mf.read_manifest(run_dir)
    if manifest is None:
        rep.errors.append(f"no {mf.MANIFEST_NAME} in {run_dir}")
    else:
        _check_against_manifest(rep, found, mf.shards_of(manifest))
    return rep
