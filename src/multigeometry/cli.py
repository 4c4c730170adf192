"""The `multigeometry` command line: one subcommand per stage, plus `params`.

Heavy libraries are imported inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

STAGES: dict[str, tuple[str, str]] = {
    "prepare": ("multigeometry.stages.prepare", "Raw pairs from data.source into data/raw/<dataset>/."),
    "validate": ("multigeometry.stages.validate", "Check the raw manifest and media; quarantine bad rows."),
    "shard": ("multigeometry.stages.shard", "WebDataset shards per split with audio and pretrained features."),
    "train": ("multigeometry.stages.train", "Train the PairModel on the shards (run under torchrun for DDP)."),
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", type=Path, help="params file (default: params.yaml)")
    parser.add_argument(
        "--set",
        "-S",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param by dotted key, as `dvc exp run -S` (repeatable), e.g. --set data.world.n_items=50",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multigeometry",
        description="Learn one embedding space of distributions for images, text, audio and code.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("params", help="print the resolved params as YAML", description="Print the resolved params.")
    _common(p)
    p.set_defaults(run=_print_params)
    for name, (_module, text) in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        _common(p)
        p.set_defaults(run=_stage_runner(name))
    return parser


def _print_params(params: object) -> None:
    import yaml

    sys.stdout.write(yaml.safe_dump(params.to_dict(), sort_keys=False))  # type: ignore[attr-defined]


def _stage_runner(name: str) -> Callable[[object], None]:
    def run(params: object) -> None:
        import importlib

        module = importlib.import_module(STAGES[name][0])
        out = getattr(module, name)(params)
        logging.getLogger("multigeometry").info("%s: done -> %s", name, out)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from multigeometry.config import ParamsError, load_params

    try:
        params = load_params(args.params, args.overrides)
    except ParamsError as e:
        print(f"multigeometry: bad params: {e}", file=sys.stderr)
        return 2
    try:
        args.run(params)
    except Exception as e:  # a stage failure: say which stage and why, without a wall of traceback
        logging.getLogger("multigeometry").debug("stage failed", exc_info=True)
        print(f"multigeometry {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
