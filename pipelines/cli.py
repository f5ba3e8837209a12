"""The `polycap` command line: parses arguments, loads config, calls a `run()`; no logic lives here."""
from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

HELP = {"help_option_names": ["-h", "--help"]}
# Exit codes, the same for every command (tests/pipelines/test_cli_exit_codes.py).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_MISMATCH = 0, 1, 2, 3
EPILOG = ("Exit codes: 0 ok; 1 failure (a stage, shard, backend or missing optional dependency: the message "
          "names the extra to install); 2 usage or config error (bad option, missing or invalid config file, "
          "an input path that does not exist, an output inside an input or an input inside the output, an "
          "output locked by another run), nothing was started; 3 conservation mismatch (inputs != kept + "
          "rejected: records were lost). Start from a bundled config: polycap init.")


class _Group(TyperGroup):
    """Maps errors that reach the top to the exit codes above: a missing optional dependency names its extra."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ImportError as e:
            from polycap.pipelines.doctor import missing_dependency_message

            msg = missing_dependency_message(e)
            if msg is None:
                raise
            _fail(msg, EXIT_FAILURE)


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, context_settings=HELP, epilog=EPILOG,
                  help="Multilingual caption and instruction corpora for VLM training, on Apache Beam.")
shards_app = typer.Typer(no_args_is_help=True, context_settings=HELP,
                         help="Inspect, validate and export webdataset shards.")
train_app = typer.Typer(no_args_is_help=True, context_settings=HELP, help="Train on shards: pretrain and SFT.")
app.add_typer(shards_app, name="shards")
app.add_typer(train_app, name="train")

PASSTHROUGH = {**HELP, "allow_extra_args": True, "ignore_unknown_options": True}


def version_line() -> str:
    """polycap's version, the record schema version and the Beam version the launcher would submit with."""
    from polycap import __version__
    from polycap.schemas import SCHEMA_VERSION

    try:
        from importlib.metadata import version

        beam = version("apache-beam")
    except Exception:  # noqa: BLE001 - a broken install still gets a version line
        beam = "not installed"
    return f"polycap {__version__} (schema {SCHEMA_VERSION}, apache-beam {beam})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                       help="print polycap, schema and Beam versions and exit")) -> None:
    """Multilingual caption and instruction corpora for VLM training, on Apache Beam."""


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _os_error(e: OSError) -> str:
    """One line for a filesystem error the job cannot work around (read-only output, permission, disk full)."""
    where = f": {e.filename}" if e.filename else ""
    hint = {errno.EROFS: " (the output is on a read-only filesystem)",
            errno.EACCES: " (no permission to write there)", errno.EPERM: " (not permitted)",
            errno.ENOSPC: " (the disk is full: free space and rerun; committed shards are kept)"}.get(e.errno or 0, "")
    return f"{e.strerror or e}{where}{hint}"


def _existing(path: str | None) -> str | None:
    """Option callback: a local input path that does not exist is a usage error (exit 2), not an empty result.
    URLs and globs are left to the command (checking them needs the filesystem options)."""
    if path and "://" not in path and not any(c in path for c in "*?[{") and not os.path.exists(path):
        _fail(f"{path} does not exist")
    return path


def _load(config: str | None, overrides: list[str], **extra):
    from polycap.schemas.config import ConfigError, load_config

    try:
        sets = list(overrides) + [f"{k}={v}" for k, v in extra.items() if v is not None]
        return load_config(config, sets)
    except ConfigError as e:
        _fail(f"config: {e}")


@app.command(context_settings=PASSTHROUGH)
def run(ctx: typer.Context,
        config: str = typer.Argument(..., help="job config YAML (write a starter one with `polycap init`)"),
        output: str | None = typer.Option(None, "--output", "-o", help="output dir (overrides `output`)"),
        set_: list[str] = typer.Option([], "--set", help="override a config value: a.b=c (repeatable)"),
        wave_size: int | None = typer.Option(None, "--wave-size", min=0,
                                             help="local runs: inputs per wave (overrides `run.wave_size`; "
                                                  "0: one graph)"),
        progress: float = typer.Option(5.0, "--progress", min=0.0,
                                       help="seconds between progress lines on stderr (0: none)"),
        break_lock: bool = typer.Option(False, "--break-lock",
                                        help="remove a STALE lock left in the output by a dead run (a live "
                                             "run's lock is never broken)")):
    """Run the main job. Extra arguments after `--` go to Beam (e.g. --runner, --direct_num_workers)."""
    from polycap.pipelines.lean_beam import system_arrow_pool

    system_arrow_pool()           # before the config's schemas import pyarrow
    cfg = _load(config, [*set_, *([f"run.wave_size={wave_size}"] if wave_size is not None else [])],
                output=output)   # before importing Beam: a bad config fails at once
    from polycap.pipelines.lean_beam import skip_gcp_clients
    from polycap.schemas.config import to_dict

    skip_gcp_clients(to_dict(cfg), list(ctx.args))   # a local job naming no gs:// loads Beam without GCP clients
    from polycap.pipelines.run import run as run_job
    from polycap.pipelines.run import summary_lines
    from polycap.schemas.config import ConfigError
    from polycap.sharding.lock import LockHeld

    try:
        stats = run_job(cfg, ctx.args, config_path=config, progress_s=progress, break_lock=break_lock)
    except ConfigError as e:
        _fail(f"config: {e}")
    except LockHeld as e:
        _fail(str(e), EXIT_USAGE)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        _fail(str(e), 1)
    except OSError as e:
        _fail(_os_error(e), 1)
    for line in summary_lines(stats, cfg.output):
        typer.echo(line)
    if not stats["balanced"]:
        raise typer.Exit(3)


@app.command(context_settings=PASSTHROUGH)
def translate(ctx: typer.Context,
              inp: str = typer.Argument(..., metavar="IN", help="dataset file (JSON/JSONL/parquet) or shard dir"),
              to: str = typer.Option("ko,vi", "--to", help="target languages, comma-separated"),
              out: str = typer.Option(..., "--out", help="output dir"),
              config: str | None = typer.Option(None, "--config", help="YAML with a `translate:` section"),
              fmt: str = typer.Option("auto", "--format",
                                      help="auto|llava|sharegpt|messages|alpaca|captions|shards"),
              field: str = typer.Option("caption", "--field", help="text field for caption files"),
              dataset_info: str | None = typer.Option(
                  None, "--dataset-info", help="LLaMA-Factory dataset_info.json (default: the one next to IN, "
                  "when an entry names IN's file)"),
              dataset_name: str | None = typer.Option(None, "--dataset-name", help="its entry for IN"),
              set_: list[str] = typer.Option([], "--set", help="override translate.* values: a.b=c"),
              progress: float = typer.Option(5.0, "--progress", min=0.0,
                                             help="seconds between progress lines on stderr (0: none)")):
    """Translate an English dataset into other languages, keeping its format and structure."""
    from polycap.pipelines.translate import UsageError
    from polycap.pipelines.translate import run as run_translate
    from polycap.schemas.config import ConfigError, TranslateConfig, load_section
    from polycap.transforms.dataset_formats import FormatError

    langs = [t.strip() for t in to.split(",") if t.strip()]
    try:
        tcfg = load_section(TranslateConfig, "translate", config, [*set_, f"to={json.dumps(langs)}"],
                            defaults={"enabled": True})
        _existing(inp)     # after the config, so a bad config is reported first
        stats = run_translate(inp, langs, out, tcfg, fmt=fmt, field=field, pipeline_args=ctx.args,
                              dataset_info=dataset_info, dataset_name=dataset_name, progress_s=progress)
    except ConfigError as e:
        _fail(f"config: {e}")
    except FormatError as e:     # the input's format or a dataset_info.json, found before any work starts
        _fail(str(e), EXIT_USAGE)
    except UsageError as e:       # e.g. an output that would overwrite the input: nothing was started
        _fail(str(e), EXIT_USAGE)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 1)
    except OSError as e:
        _fail(_os_error(e), 1)
    typer.echo(json.dumps(stats, indent=2, ensure_ascii=False))
    from polycap.pipelines.translate import nothing_translated

    if nothing_translated(stats):
        _fail(f"translate: nothing could be translated ({stats['inputs']} records, every one rejected in "
              f"every language; see {out}/rejects)", 1)
    if not stats.get("balanced", True):
        raise typer.Exit(EXIT_MISMATCH)


@app.command("ocr-eval")
def ocr_eval(path: str = typer.Argument(..., help="labelled JSONL (path, lang, text) or a dir of images"),
             config: str | None = typer.Option(None, "--config", help="YAML with an `ocr:` section"),
             out_json: str | None = typer.Option(None, "--out", help="write the report as JSON"),
             set_: list[str] = typer.Option([], "--set", help="override ocr.* values")):
    """Run the OCR stage over a labelled set: CER per language and images per second."""
    from polycap.pipelines.ocr_eval import run as run_eval
    from polycap.schemas.config import ConfigError, OcrConfig, load_section

    try:
        report = run_eval(path, load_section(OcrConfig, "ocr", config, set_, defaults={"enabled": True}),
                          out_json)
    except ConfigError as e:
        _fail(f"config: {e}")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        _fail(str(e), 1)
    typer.echo(json.dumps(report, indent=2, ensure_ascii=False))


def _filesystems(ctx: typer.Context) -> None:
    """Beam filesystem options given after `--` (e.g. --s3_endpoint_url=..., --s3_access_key_id=...), for the
    commands that read or write run artifacts in the launcher (sharding/fs.py)."""
    from polycap.sharding import fs

    fs.configure(ctx.args)


@shards_app.command("validate", context_settings=PASSTHROUGH)
def shards_validate(ctx: typer.Context,
                    path: str = typer.Argument(..., callback=_existing, help="run dir or shard dir")):
    """Check every tar end to end against the manifest; exit 1 on any problem. Beam options after `--`."""
    from polycap.sharding.validate import validate_dir

    _filesystems(ctx)
    report = validate_dir(path)
    typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    if not report.ok:
        raise typer.Exit(1)


@shards_app.command("stats", context_settings=PASSTHROUGH)
def shards_stats(ctx: typer.Context,
                 path: str = typer.Argument(..., callback=_existing, help="run dir or shard dir")):
    """Counts, languages and image sizes of a shard set. Beam filesystem options after `--`."""
    from polycap.sharding.stats import shard_stats

    _filesystems(ctx)
    typer.echo(json.dumps(shard_stats(path), indent=2, ensure_ascii=False))


@shards_app.command("preview", context_settings=PASSTHROUGH)
def shards_preview(ctx: typer.Context,
                   path: str = typer.Argument(..., callback=_existing, help="run dir or shard dir"),
                   n: int = typer.Option(5, "-n", help="how many samples")):
    """The first samples: key, size, source, OCR line count and captions per language."""
    from polycap.sharding.preview import preview

    _filesystems(ctx)
    typer.echo(json.dumps(preview(path, n), indent=2, ensure_ascii=False))


@shards_app.command("export", context_settings=PASSTHROUGH)
def shards_export(ctx: typer.Context,
                  path: str = typer.Argument(..., callback=_existing, help="run dir or shard dir"),
                  fmt: str = typer.Option("llava", "--format", help="llava|sharegpt|alpaca|swift|internvl"),
                  out: str = typer.Option(..., "--out", help="output JSON/JSONL file (images beside it)"),
                  force: bool = typer.Option(False, "--force", help="export shards that fail validation")):
    """Write the shards' conversations for other trainers (LLaVA, LLaMA-Factory, ms-swift, InternVL)."""
    from polycap.sharding.export import export

    _filesystems(ctx)
    try:
        typer.echo(json.dumps(export(path, fmt, out, force=force), indent=2, ensure_ascii=False))
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 1)


def _train(stage: str, config: str, shards: str | None, set_: list[str]) -> None:
    from polycap.schemas.config import ConfigError
    from polycap.trainer.train import run as run_train

    try:
        metrics = run_train(stage, config, shards, set_)
    except ConfigError as e:
        _fail(f"config: {e}")
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 1)
    typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))


@train_app.command("pretrain")
def train_pretrain(config: str = typer.Argument(..., help="trainer YAML (`polycap init --example train-tiny`)"),
                   shards: str | None = typer.Option(None, "--shards", callback=_existing, help="run dir or shard dir"),
                   set_: list[str] = typer.Option([], "--set", help="override a trainer value: a.b=c")):
    """Pretraining on (image, caption) pairs."""
    _train("pretrain", config, shards, set_)


@train_app.command("sft")
def train_sft(config: str = typer.Argument(..., help="trainer YAML (`polycap init --example train-tiny`)"),
              shards: str | None = typer.Option(None, "--shards", callback=_existing, help="run dir or shard dir"),
              set_: list[str] = typer.Option([], "--set", help="override a trainer value: a.b=c")):
    """Supervised fine-tuning on conversations (loss on assistant turns only)."""
    _train("sft", config, shards, set_)


@app.command()
def report(run_dir: str = typer.Argument(..., metavar="OUT", callback=_existing, help="run output dir"),
           out: str | None = typer.Option(None, "--out", help="HTML file to write (default OUT/report.html)"),
           gallery: int = typer.Option(48, "--gallery", help="kept samples shown with OCR boxes and captions"),
           per_shard: int = typer.Option(4, "--per-shard", help="gallery samples taken from each shard"),
           scan: int = typer.Option(64, "--scan", help="shards read for caption and translation lengths")):
    """One self-contained HTML page of a run: stats and charts, a gallery of samples, the rejects."""
    from polycap.pipelines.report import write_report

    try:
        path = write_report(run_dir, out, gallery_size=gallery, per_shard=per_shard, scan_limit=scan)
    except FileNotFoundError as e:
        _fail(str(e))
    typer.echo(path)


@app.command()
def doctor(config: str | None = typer.Option(None, "--config", help="YAML whose caption/translate endpoints "
                                             "and ocr.model_dir to check"),
           as_json: bool = typer.Option(False, "--json", help="print as JSON")):
    """The environment, for bug reports: versions, extras, OCR models, endpoints. Never fails."""
    from polycap.pipelines.doctor import collect, lines

    info = collect(config)
    typer.echo(json.dumps(info, indent=2, ensure_ascii=False) if as_json else "\n".join(lines(info)))


@app.command("init")
def init(path: str = typer.Argument("polycap.yaml", help="where to write the config"),
         example: str = typer.Option("starter", "--example", "-e", help="which bundled config (--list shows them)"),
         list_: bool = typer.Option(False, "--list", help="list the bundled configs and exit"),
         force: bool = typer.Option(False, "--force", help="overwrite an existing file")):
    """Write a starter job config (or one of the bundled examples) to edit and pass to `polycap run`."""
    from polycap.pipelines.starter import bundled_configs, write_config

    if list_:
        for name, summary in bundled_configs().items():
            typer.echo(f"{name:22s} {summary}")
        return
    try:
        typer.echo(write_config(path, example, force))
    except (FileExistsError, KeyError) as e:
        _fail(str(e.args[0]) if e.args else str(e))


def main() -> None:
    app()


def entry() -> None:
    """The `polycap` script and `python -m polycap`: `main()`, then leave the process without tearing the
    interpreter down. Once the command is done, freeing every module and object of a Beam job (Beam, its
    GCP clients, pyarrow, numpy...) took ~0.4 s of CPU and wall time per command, a seventh of a 10-image
    run (bench/results/pipeline.json). What an exit must still do is done first: wait for non-daemon
    threads, run the atexit handlers, flush stdout and stderr. An uncaught exception exits as Python does."""
    try:
        main()
        code: Any = 0
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    _leave(code or 0)


def _leave(code: int) -> None:
    import atexit
    import threading

    # what the interpreter's own exit runs first: the thread-exit hooks (concurrent.futures wakes its idle
    # workers there) and a join of every non-daemon thread
    getattr(threading, "_shutdown", lambda: None)()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):      # a closed pipe (`polycap ... | head`): nothing more to say
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    entry()
