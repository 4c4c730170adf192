"""The pipeline as a Prefect flow: one task per stage, calling the stage functions of `multigeometry.stages`.

- Caching: a stage's key is its dvc.yaml params sections and the content of its deps (`stage_cache.stage_key`), so a
  re-run with nothing changed runs no stage, and a training knob re-runs train, evaluate and register only. Before
  them the `fingerprint` task (never cached, as DVC's always-changed stage) records the files behind `data.source`,
  which prepare's key includes through its deps.
- Retries with exponential backoff on prepare and register (`orchestration.retries`, `orchestration.retry_delay_s`);
  a failure is a `StageFailed` that names the stage and its cause.
- Shards are written by a Dask fan-out (`fanout.dask_writer`); training and evaluation run under torchrun
  (`launch.run_stage`).

Run it with `python -m pipelines.flows [--params FILE] [--set key=value ...] [--root DIR]`, or deploy it (prefect.yaml).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import Task, exponential_backoff

from multigeometry.config import Params, load_params
from pipelines.stage_cache import load_stage, missing_outputs, stage_key

STAGES = ("prepare", "validate", "shard", "train", "evaluate", "register")
FINGERPRINT = "fingerprint"  # runs first, every time; not one of the cached STAGES
RETRIED = ("prepare", "register")  # the stages that touch the outside world (a dataset source, the model registry)


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage and the cause."""


def _call_stage(name: str, params: Params, params_file: Path, overrides: Sequence[str], root: Path) -> Path:
    import importlib

    if name in ("train", "evaluate"):
        from multigeometry.paths import eval_dir, models_dir
        from pipelines.launch import run_stage

        run_stage(name, params, params_file, overrides, root)
        return models_dir(params, root) if name == "train" else eval_dir(params, root)
    if name == "shard":
        from multigeometry.stages.shard import shard
        from pipelines.fanout import dask_writer

        return shard(params, root, write_all=dask_writer(params.orchestration))
    return getattr(importlib.import_module(f"multigeometry.stages.{name}"), name)(params, root)


def _cache_key(context: TaskRunContext, inputs: dict[str, Any]) -> str:
    params = load_params(inputs["params_file"], inputs["overrides"])
    return stage_key(context.task.name, params, Path(inputs["root"]))


def _relative(out: Path, root: Path) -> str:
    """`out` relative to `root`: a cached result stays true in any folder with the same key."""
    try:
        return Path(out).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(out)


def _stage_task(name: str, cached: bool = True) -> Task[..., str]:
    def run(params_file: str, overrides: list[str], root: str) -> str:
        params = load_params(params_file, overrides)
        try:
            out = _call_stage(name, params, Path(params_file), overrides, Path(root))
        except Exception as e:
            raise StageFailed(f"stage {name!r} failed: {type(e).__name__}: {e}") from e
        return _relative(out, Path(root))

    run.__name__ = run.__qualname__ = f"{name}_stage"  # a distinct task key per stage
    if not cached:
        return task(run, name=name, cache_policy=NO_CACHE)
    return task(run, name=name, cache_key_fn=_cache_key, persist_result=True)


STAGE_TASKS: dict[str, Task[..., str]] = {name: _stage_task(name) for name in STAGES}
FINGERPRINT_TASK = _stage_task(FINGERPRINT, cached=False)


def _with_retries(stage: Task[..., str], params: Params) -> Task[..., str]:
    cfg = params.orchestration
    delays = exponential_backoff(backoff_factor=cfg.retry_delay_s)(cfg.retries) if cfg.retries else 0
    return stage.with_options(retries=cfg.retries, retry_delay_seconds=delays)


@flow(name="pipeline")
def pipeline(params_file: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
             force: bool = False) -> dict[str, Any]:
    """Run the six stages in order on `params_file` with `overrides` (dotted `key=value`, as `--set`) in the project
    folder `root`, after fingerprinting the source. Stages whose params and inputs are unchanged come from the cache;
    `force` re-runs every one. Returns each stage's output path and which of the six ran or were cached."""
    logger = get_run_logger()
    overrides = list(overrides or [])
    params_path = Path(params_file).resolve()
    params = load_params(params_path, overrides)  # a bad params file fails the run here, before any stage
    folder = str(Path(root).resolve())
    outputs: dict[str, str] = {FINGERPRINT: FINGERPRINT_TASK(str(params_path), overrides, folder)}
    ran: list[str] = []
    cached: list[str] = []
    for name in STAGES:
        stage = STAGE_TASKS[name]
        if name in RETRIED:
            stage = _with_retries(stage, params)
        missing = missing_outputs(load_stage(name, params), Path(folder))
        if force or missing:  # run it and overwrite its cache entry
            if missing and not force:
                logger.info("%s: %s missing; the stage runs", name, ", ".join(missing))
            stage = stage.with_options(refresh_cache=True)
        state = stage(str(params_path), overrides, folder, return_state=True)
        outputs[name] = str(Path(folder) / state.result())  # raises the stage's StageFailed when it failed
        (cached if state.name == "Cached" else ran).append(name)
    logger.info("pipeline in %s: ran %s; cached %s", folder, ", ".join(ran) or "nothing",
                ", ".join(cached) or "nothing")
    return {"outputs": outputs, "ran": ran, "cached": cached}


CHECK_REPORT = "data/prefect/check.json"  # below the run's root


@flow(name="pipeline-check")
def check(params_file: str = "params.yaml", overrides: list[str] | None = None, root: str = ".") -> dict[str, Any]:
    """Load and validate the params and read every stage's declaration in dvc.yaml; log and return, per stage, its
    cache key as the `pipeline` flow would compute it now and its missing outputs (a stage with any will run), and
    write the same report to `<root>/data/prefect/check.json`. Runs no stage."""
    from multigeometry.io import write_json_atomic

    logger = get_run_logger()
    params = load_params(Path(params_file).resolve(), list(overrides or []))
    folder = Path(root).resolve()
    report = {name: {"key": stage_key(name, params, folder),
                     "missing": missing_outputs(load_stage(name, params), folder)} for name in STAGES}
    for name, entry in report.items():
        missing = ", ".join(entry["missing"])
        logger.info("%-8s key %s; %s", name, entry["key"], f"missing {missing}: runs" if missing else "outputs present")
    write_json_atomic(folder / CHECK_REPORT, {"root": str(folder), "params_file": str(Path(params_file).resolve()),
                                               "stages": report})
    logger.info("check report: %s", folder / CHECK_REPORT)
    return report


def main(argv: Sequence[str] | None = None, run: Callable[..., Any] = pipeline) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flows", description="Run the pipeline flow once.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--set", "-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--root", default=".", help="project folder the stages read and write (default: .)")
    parser.add_argument("--force", action="store_true", help="re-run every stage, ignoring the cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(params_file=args.params, overrides=args.overrides, root=args.root, force=args.force)
    logging.getLogger("pipelines").info("ran %s; cached %s", result["ran"], result["cached"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
