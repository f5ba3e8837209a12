"""`python -m polycap.trainer.cli pretrain|sft CONFIG [--shards DIR] [--set k=v]`: the entry torchrun launches.

`polycap train ...` is the same call through the typer app; torchrun needs a module or script, e.g.
`python -m torch.distributed.run --nproc_per_node 2 -m polycap.trainer.cli sft configs/train-tiny.yaml --shards DIR`.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m polycap.trainer.cli", description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["pretrain", "sft"])
    ap.add_argument("config")
    ap.add_argument("--shards", default=None, help="run dir or shard dir")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override: a.b=value")
    args = ap.parse_args(argv)
    from polycap.schemas.config import ConfigError
    from polycap.trainer.train import run

    try:
        metrics = run(args.stage, args.config, args.shards, args.overrides)
    except ConfigError as e:
        print(f"error: config: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if metrics.get("rank", 0) == 0:
        print(json.dumps(metrics, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
