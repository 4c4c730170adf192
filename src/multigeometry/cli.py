"""The `multigeometry` command line: one subcommand per stage, plus `params` and `deps`.

Heavy libraries are imported inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

STAGES: dict[str, tuple[str, str]] = {
    "fingerprint": ("multigeometry.stages.fingerprint", "Fingerprint the files behind data.source (re-runs prepare)."),
    "prepare": ("multigeometry.stages.prepare", "Raw pairs from data.source into data/raw/<dataset>/."),
    "validate": ("multigeometry.stages.validate", "Check the raw manifest and media; quarantine bad rows."),
    "shard": ("multigeometry.stages.shard", "WebDataset shards per split with audio and pretrained features."),
    "train": ("multigeometry.stages.train", "Train the PairModel on the shards (run under torchrun for DDP)."),
    "evaluate": ("multigeometry.stages.evaluate", "Retrieval, uncertainty and hierarchy metrics of the trained model."),
    "register": ("multigeometry.stages.register", "Register the model in MLflow with an alias when the gate passes."),
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
    p = sub.add_parser("params", help="print the resolved params as YAML (or write a full params file)",
                       description="Print the resolved params, every knob with its doc; --write FILE writes them "
                                   "(atomically) as a full params file: params.yaml from the defaults, a preset from "
                                   "its overlay (--params presets/overlays/NAME.yaml).")
    _common(p)
    p.add_argument("--write", type=Path, metavar="FILE", help="write the params file instead of printing it")
    p.add_argument("--defaults", action="store_true", help="the code's defaults (config.py), not --params")
    p.set_defaults(run=_print_params, pass_args=True)
    for name, (_module, text) in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        _common(p)
        p.set_defaults(run=_stage_runner(name))
    _registry_commands(sub)
    _deps_command(sub)
    return parser


def _deps_command(sub: argparse._SubParsersAction) -> None:
    text = ("Each stage's code deps in dvc.yaml, computed from its import closure (multigeometry.stage_deps): print "
            "them, --write them into dvc.yaml, or --check that dvc.yaml has them (exit 1 when it is stale).")
    p = sub.add_parser("deps", help=text, description=text)
    p.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"), metavar="FILE", help="default: dvc.yaml")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the code deps of every stage in FILE")
    mode.add_argument("--check", action="store_true", help="fail (exit 1) when FILE's code deps are not the computed")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(run_without_params=_deps)


def _deps(args: argparse.Namespace) -> int:
    from multigeometry import stage_deps

    if args.write:
        changed = stage_deps.write(args.dvc_yaml)
        logging.getLogger("multigeometry").info("%s: code deps %s", args.dvc_yaml,
                                                "rewritten" if changed else "already current")
        return 0
    reports = stage_deps.check(args.dvc_yaml)
    if args.check:
        if stale := stage_deps.describe(reports):
            print(f"multigeometry deps: {args.dvc_yaml} is stale; run `multigeometry deps --write`:\n{stale}",
                  file=sys.stderr)
            return 1
        logging.getLogger("multigeometry").info("%s: every stage's code deps are current", args.dvc_yaml)
        return 0
    for report in reports:
        sys.stdout.write(f"{report.stage}:\n" + "".join(f"  - {d}\n" for d in report.computed))
    return 0


def _model_inputs(parser: argparse.ArgumentParser, text_flag: str) -> None:
    parser.add_argument("--model", required=True, help="a registered model, e.g. models:/multigeometry@champion")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(text_flag, dest="text", metavar="TEXT", help="a text input")
    group.add_argument("--image", metavar="PATH", help="an image file")
    group.add_argument("--audio", metavar="PATH", help="an audio file")
    group.add_argument("--code", metavar="FILE", help="a source file")
    group.add_argument("--video", metavar="PATH", help="a video file (MP4, WebM, ...)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a summary")


def _registry_commands(sub: argparse._SubParsersAction) -> None:
    text = "Embed one raw input with a registered model and print its distribution."
    p = sub.add_parser("embed", help=text, description=text)
    _model_inputs(p, "--text")
    _common(p)
    p.set_defaults(run=_embed, pass_args=True)
    text = ("Search an index of a split (built once in --index DIR) with one query, or with one query a line from "
            "standard input (--query -: the model stays loaded); top k items with scores and match probabilities.")
    p = sub.add_parser("search", help=text, description=text)
    _model_inputs(p, "--query")
    p.add_argument("--index", required=True, type=Path, metavar="DIR", help="the index folder (built when missing)")
    p.add_argument("--split", choices=["train", "val", "test"], help="split to index (default: registry.search_split)")
    p.add_argument("--target", action="append", metavar="MODALITY", help="item modality to search (repeatable; "
                   "default: every modality of the index)")
    p.add_argument("-k", type=int, help="results per modality (default: registry.search_k)")
    _common(p)
    p.set_defaults(run=_search, pass_args=True)


def _embed(params: object, args: argparse.Namespace) -> None:
    import json

    from multigeometry.registry.tools import embed_one, format_summary, load_registered, one_record

    record = one_record(args.text, args.image, args.audio, args.code, params.validate.code_max_bytes,  # type: ignore[attr-defined]
                        args.video)
    row = embed_one(load_registered(params, args.model), record)  # type: ignore[arg-type]
    sys.stdout.write((json.dumps(row) if args.json else format_summary(row)) + "\n")


def _search(params: object, args: argparse.Namespace) -> None:
    import json

    from multigeometry.registry.tools import format_results, load_registered, one_record, open_index, query_index

    if args.k is not None and args.k < 1:
        raise ValueError(f"-k {args.k}: must be >= 1")
    cfg = params.registry  # type: ignore[attr-defined]
    model = load_registered(params, args.model)  # type: ignore[arg-type]
    index, built = open_index(params, model, args.index, args.split or cfg.search_split)  # type: ignore[arg-type]
    logging.getLogger("multigeometry").info("index %s: %s", args.index, "built" if built else "reused")
    # `--query -`: one query a line from standard input, the model and the index loaded once
    texts = (line.rstrip("\n") for line in sys.stdin) if args.text == "-" else [args.text]
    for text in texts:
        if args.text == "-" and not text.strip():
            continue
        record = one_record(text, args.image, args.audio, args.code, params.validate.code_max_bytes,  # type: ignore[attr-defined]
                            args.video)
        rows = query_index(params, model, index, record, args.k or cfg.search_k, args.target)  # type: ignore[arg-type]
        sys.stdout.write((json.dumps(rows) if args.json else format_results(rows)) + "\n")
        sys.stdout.flush()


def _print_params(params: object, args: argparse.Namespace | None = None) -> None:
    from multigeometry.config import params_from_dict
    from multigeometry.params_file import header_for, render

    target = getattr(args, "write", None)
    source = None if getattr(args, "defaults", False) else getattr(args, "params", None)
    if source is None:
        params = params_from_dict({}, getattr(args, "overrides", ()))
    text = render(params, header_for(source, target))  # type: ignore[arg-type]
    if target is None:
        sys.stdout.write(text)
        return
    from multigeometry.io import atomic_path

    with atomic_path(Path(target)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    logging.getLogger("multigeometry").info("wrote %s", target)


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
    if run_without_params := getattr(args, "run_without_params", None):
        return _without_params(run_without_params, args)
    from multigeometry.config import ParamsError, load_params

    try:
        params = load_params(args.params, args.overrides)
    except ParamsError as e:
        print(f"multigeometry: bad params: {e}", file=sys.stderr)
        return 2
    from multigeometry.processes import Terminated, sigterm_raises

    try:
        with sigterm_raises():  # SIGTERM unwinds the stage: staging folders removed, workers stopped, runs closed
            args.run(params, args) if getattr(args, "pass_args", False) else args.run(params)
    except Terminated as e:
        print(f"multigeometry {args.command}: {e}; nothing half-written was kept", file=sys.stderr)
        return 128 + 15
    except Exception as e:  # a stage failure: say which stage and why, without a wall of traceback
        logging.getLogger("multigeometry").debug("stage failed", exc_info=True)
        print(f"multigeometry {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def _without_params(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A command that reads no params file (`deps`): its errors name the file, exit 2."""
    from multigeometry.stage_deps import StageDepsError

    try:
        return run(args)
    except (StageDepsError, OSError) as e:
        print(f"multigeometry {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
