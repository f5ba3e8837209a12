"""The `polycap` command line: parses arguments, loads config, calls a `run()`; no logic lives here."""
from __future__ import annotations

import json
import sys

import typer

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, context_settings=HELP,
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


def _load(config: str | None, overrides: list[str], **extra):
    from polycap.schemas.config import ConfigError, load_config

    try:
        sets = list(overrides) + [f"{k}={v}" for k, v in extra.items() if v is not None]
        return load_config(config, sets)
    except ConfigError as e:
        _fail(f"config: {e}")


@app.command(context_settings=PASSTHROUGH)
def run(ctx: typer.Context,
        config: str = typer.Argument(..., help="job config YAML"),
        output: str | None = typer.Option(None, "--output", "-o", help="output dir (overrides `output`)"),
        set_: list[str] = typer.Option([], "--set", help="override a config value: a.b=c (repeatable)")):
    """Run the main job. Extra arguments after `--` go to Beam (e.g. --runner, --direct_num_workers)."""
    cfg = _load(config, set_, output=output)   # before importing Beam: a bad config fails at once
    from polycap.pipelines.run import run as run_job
    from polycap.pipelines.run import summary_lines
    from polycap.schemas.config import ConfigError

    try:
        stats = run_job(cfg, ctx.args, config_path=config)
    except ConfigError as e:
        _fail(f"config: {e}")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        _fail(str(e), 1)
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
              fmt: str = typer.Option("auto", "--format", help="auto|llava|sharegpt|messages|captions|shards"),
              field: str = typer.Option("caption", "--field", help="text field for caption files"),
              set_: list[str] = typer.Option([], "--set", help="override translate.* values: a.b=c")):
    """Translate an English dataset into other languages, keeping its format and structure."""
    from polycap.pipelines.translate import run as run_translate
    from polycap.schemas.config import ConfigError, TranslateConfig, load_section

    langs = [t.strip() for t in to.split(",") if t.strip()]
    try:
        tcfg = load_section(TranslateConfig, "translate", config, [*set_, f"to={json.dumps(langs)}"],
                            defaults={"enabled": True})
        stats = run_translate(inp, langs, out, tcfg, fmt=fmt, field=field, pipeline_args=ctx.args)
    except ConfigError as e:
        _fail(f"config: {e}")
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 1)
    typer.echo(json.dumps(stats, indent=2, ensure_ascii=False))


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
def shards_validate(ctx: typer.Context, path: str = typer.Argument(..., help="run dir or shard dir")):
    """Check every tar end to end against the manifest; exit 1 on any problem. Beam options after `--`."""
    from polycap.sharding.validate import validate_dir

    _filesystems(ctx)
    report = validate_dir(path)
    typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    if not report.ok:
        raise typer.Exit(1)


@shards_app.command("stats", context_settings=PASSTHROUGH)
def shards_stats(ctx: typer.Context, path: str = typer.Argument(..., help="run dir or shard dir")):
    """Counts, languages and image sizes of a shard set. Beam filesystem options after `--`."""
    from polycap.sharding.stats import shard_stats

    _filesystems(ctx)
    typer.echo(json.dumps(shard_stats(path), indent=2, ensure_ascii=False))


@shards_app.command("preview", context_settings=PASSTHROUGH)
def shards_preview(ctx: typer.Context, path: str = typer.Argument(..., help="run dir or shard dir"),
                   n: int = typer.Option(5, "-n", help="how many samples")):
    """The first samples: key, size, source, OCR line count and captions per language."""
    from polycap.sharding.preview import preview

    _filesystems(ctx)
    typer.echo(json.dumps(preview(path, n), indent=2, ensure_ascii=False))


@shards_app.command("export", context_settings=PASSTHROUGH)
def shards_export(ctx: typer.Context, path: str = typer.Argument(..., help="run dir or shard dir"),
                  fmt: str = typer.Option("llava", "--format", help="llava|sharegpt|internvl"),
                  out: str = typer.Option(..., "--out", help="output JSON/JSONL file (images beside it)")):
    """Write the shards' conversations for other trainers (LLaVA, LLaMA-Factory, ms-swift, InternVL)."""
    from polycap.sharding.export import export

    _filesystems(ctx)
    try:
        typer.echo(json.dumps(export(path, fmt, out), indent=2, ensure_ascii=False))
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
def train_pretrain(config: str = typer.Argument(..., help="trainer YAML, e.g. configs/train-tiny.yaml"),
                   shards: str | None = typer.Option(None, "--shards", help="run dir or shard dir"),
                   set_: list[str] = typer.Option([], "--set", help="override a trainer value: a.b=c")):
    """Pretraining on (image, caption) pairs."""
    _train("pretrain", config, shards, set_)


@train_app.command("sft")
def train_sft(config: str = typer.Argument(..., help="trainer YAML"),
              shards: str | None = typer.Option(None, "--shards", help="run dir or shard dir"),
              set_: list[str] = typer.Option([], "--set", help="override a trainer value: a.b=c")):
    """Supervised fine-tuning on conversations (loss on assistant turns only)."""
    _train("sft", config, shards, set_)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
