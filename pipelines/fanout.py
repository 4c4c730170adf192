"""Shard writing fanned out on Dask: one Prefect task per shard (or group of `orchestration.shards_per_task`
shards) on `prefect_dask.DaskTaskRunner`.

The shard stage plans the shards and builds the index; this module only replaces its writer (`shard(...,
write_all=dask_writer(cfg))`), and every task calls the library's own `write_shard`, so the shards are the same bytes
as the process pool's. With `orchestration.dask_address` the tasks run on that scheduler's workers, which need the
project installed and the run's root on a shared file system.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from prefect import flow, task
from prefect_dask import DaskTaskRunner

from multigeometry.config import OrchestrationConfig, Params
from multigeometry.data.shards import FeatureModels, ShardPlan, ShardResult, write_shard
from multigeometry.stages.shard import ShardWriter

# per worker process: the feature models of each params seen, loaded once (a scheduler may serve several runs)
_MODELS: dict[str, FeatureModels] = {}
_MODELS_LOCK = threading.Lock()


def _models(params: Params) -> FeatureModels:
    key = params.section_hash("features", "audio")
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = FeatureModels(params)
        return _MODELS[key]


@task(name="write-shards", task_run_name="write-{label}")
def write_group(plans: Sequence[ShardPlan], out_dir: Path, raw_root: Path, params: Params, label: str) -> list[
        ShardResult]:
    models = _models(params)
    return [write_shard(plan, out_dir, raw_root, params, models) for plan in plans]


def groups(plans: Sequence[ShardPlan], size: int) -> list[list[ShardPlan]]:
    return [list(plans[i : i + size]) for i in range(0, len(plans), size)]


def task_runner(cfg: OrchestrationConfig) -> DaskTaskRunner:
    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.dask_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def dask_writer(cfg: OrchestrationConfig) -> ShardWriter:
    """A `write_all` for the shard stage that writes on Dask as configured by `orchestration.*`: a subflow whose
    task runner is the Dask cluster, one task per group of shards, results gathered in plan order."""

    def write_all(plans: Sequence[ShardPlan], out_dir: Path, raw_root: Path, params: Params) -> list[ShardResult]:
        # the plans are closed over, not flow parameters: Prefect would send parameters (every row) to its API
        @flow(name="shard-fanout", task_runner=task_runner(cfg))
        def shard_fanout() -> list[ShardResult]:
            futures = [
                write_group.submit(group, out_dir, raw_root, params,
                                   label=f"{group[0].split}-{group[0].index:06d}+{len(group)}")
                for group in groups(plans, cfg.shards_per_task)
            ]
            return [result for future in futures for result in future.result()]

        return shard_fanout() if plans else []

    return write_all
