"""Stage `shard`: the validated dataset into WebDataset shards per split, with audio log-mels, optional pretrained
features and `index.json`, under `data/shards/<dataset>/`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from multigeometry.config import SPLITS, Params
from multigeometry.data.manifest import MANIFEST, carve_val_split, read_manifest
from multigeometry.data.shard_index import INDEX
from multigeometry.data.shards import (
    FeatureModels,
    ShardPlan,
    ShardResult,
    build_index,
    estimate_bytes,
    plan_shards,
    write_shards_with_pool,
)
from multigeometry.io import atomic_dir, write_json_atomic
from multigeometry.paths import raw_dir, shards_dir, validated_dir

log = logging.getLogger(__name__)

__all__ = ["INDEX", "plan", "shard"]

# writes every planned shard into a folder and returns the results in plan order: (plans, out_dir, raw_root, params)
ShardWriter = Callable[[Sequence[ShardPlan], Path, Path, Params], list[ShardResult]]


def plan(params: Params, root: Path = Path(".")) -> tuple[list[ShardPlan], FeatureModels]:
    manifest_path = validated_dir(params, root) / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no validated manifest; run `multigeometry validate` first")
    frame, moved = carve_val_split(read_manifest(manifest_path), params.shard.val_from_train)
    if moved:
        log.warning("shard: %s has no val rows; %d train rows (shard.val_from_train=%g of the train groups) form the "
                    "val split", manifest_path, moved, params.shard.val_from_train)
    raw_root = raw_dir(params, root)
    models = FeatureModels(params)
    dims = models.dims()
    rows_by_split = {s: frame[frame["split"] == s].to_dict("records") for s in SPLITS}
    sizes = {s: [estimate_bytes(r, raw_root, params, dims) for r in rows] for s, rows in rows_by_split.items()}
    return plan_shards(rows_by_split, sizes, params.shard), models


def shard(params: Params, root: Path = Path("."), write_all: ShardWriter = write_shards_with_pool) -> Path:
    """`write_all` writes the planned shards: a process pool by default; the Prefect flow passes its Dask fan-out."""
    started = time.perf_counter()
    plans, models = plan(params, root)
    out = shards_dir(params, root)
    with atomic_dir(out) as staging:
        results = write_all(plans, staging, raw_dir(params, root), params)
        index = build_index(results, models.specs(), params)
        write_json_atomic(staging / INDEX, index)
    counts = {s: v["samples"] for s, v in index["splits"].items()}
    log.info("shard: %d shards (%s) into %s in %.1f s", len(plans), counts, out, time.perf_counter() - started)
    return out
