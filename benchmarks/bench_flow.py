"""The Prefect flow's cost and the Dask shard fan-out's speed-up, on the CPU.

1. `overhead`: the six stages called directly in this process (prepare, validate, shard with the process pool, train,
   evaluate, register) against the `pipeline` flow on the same params in a fresh root (Dask fan-out for the shards,
   torchrun for training, one task per stage, results persisted); ratio = flow wall time / direct wall time. Also the
   flow's cached re-run (nothing changed: no stage runs). The Prefect test harness (a temporary API server) serves the
   flow; its start-up is not timed.
2. `fanout`: writing the same planned shards with the serial writer (`shard.workers=1`), and with the Dask fan-out on
   a local cluster of 1 and of `--workers` worker processes (one Prefect task per shard); speed-up = 1 worker / N
   workers. Cluster start-up and each worker's feature-model loading are inside the timing, as in a flow run.

Usage: python benchmarks/bench_flow.py [--items 40] [--fanout-items 160] [--shard-samples 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # pipelines/ is not an installed package


def tiny_params_file(folder: Path, items: int, shard_samples: int) -> Path:
    """params.yaml with the end-to-end test's tiny settings (tests/test_dvc_pipeline.py) and `items` world items."""
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    tree["data"]["world"].update(n_items=items, image_size=48, workers=1)
    tree["validate"]["image_min_side"] = 16
    tree["shard"].update(workers=2, max_samples=shard_samples)
    tree["features"]["code"]["model"] = ""
    tree["pairs"]["pairs"] = [{"a": "image", "b": "text", "weight": 1.0}, {"a": "audio", "b": "text", "weight": 1.0}]
    tree["loader"].update(batch_size=4, workers=0)
    tree["train"].update(epochs=1, tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - started, out


def direct(params_file: Path, root: Path) -> float:
    from multigeometry.config import load_params
    from multigeometry.stages import evaluate, prepare, register, shard, train, validate

    params = load_params(params_file)
    started = time.perf_counter()
    for stage in (prepare.prepare, validate.validate, shard.shard, train.train, evaluate.evaluate, register.register):
        stage(params, root)
    return time.perf_counter() - started


def overhead(folder: Path, items: int, shard_samples: int) -> dict[str, Any]:
    from pipelines.flows import pipeline

    params_file = tiny_params_file(folder, items, shard_samples)
    (folder / "direct").mkdir()
    (folder / "flow").mkdir()
    direct_s = direct(params_file, folder / "direct")
    flow_s, first = timed(pipeline, str(params_file), [], str(folder / "flow"))
    cached_s, again = timed(pipeline, str(params_file), [], str(folder / "flow"))
    assert again["ran"] == [], again
    return {"items": items, "direct_s": round(direct_s, 2), "flow_s": round(flow_s, 2),
            "ratio": round(flow_s / direct_s, 3), "cached_rerun_s": round(cached_s, 2), "flow_ran": first["ran"]}


def fanout(folder: Path, items: int, shard_samples: int, workers: int) -> dict[str, Any]:
    import dataclasses

    from multigeometry.config import load_params
    from multigeometry.data.shards import write_shards_with_pool
    from multigeometry.stages.prepare import prepare
    from multigeometry.stages.shard import plan
    from multigeometry.stages.validate import validate
    from pipelines.fanout import dask_writer

    params = load_params(tiny_params_file(folder, items, shard_samples))
    root = folder / "fanout"
    prepare(params, root)
    validate(params, root)
    plans, _ = plan(params, root)
    raw = root / "data/raw" / params.data.dataset
    serial = dataclasses.replace(params, shard=dataclasses.replace(params.shard, workers=1))
    result: dict[str, Any] = {"items": items, "shards": len(plans)}
    result["serial_s"] = round(timed(write_shards_with_pool, plans, root / "serial", raw, serial)[0], 2)
    for n in (1, workers):
        cfg = dataclasses.replace(params.orchestration, dask_workers=n, shards_per_task=1)
        result[f"dask_{n}_s"] = round(timed(dask_writer(cfg), plans, root / f"dask{n}", raw, params)[0], 2)
    result["speedup"] = round(result["dask_1_s"] / result[f"dask_{workers}_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=40, help="world items for the overhead run")
    parser.add_argument("--fanout-items", type=int, default=160, help="world items for the fan-out run")
    parser.add_argument("--shard-samples", type=int, default=16, help="shard.max_samples")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers of the fan-out against 1")
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args()

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(), \
            temporary_settings({PREFECT_LOCAL_STORAGE_PATH: Path(tmp) / "results"}):
        folder = Path(tmp)
        (folder / "o").mkdir()
        (folder / "f").mkdir()
        results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                               "load_avg_start": [round(x, 2) for x in os.getloadavg()]}}
        results["overhead"] = overhead(folder / "o", args.items, args.shard_samples)
        results["fanout"] = fanout(folder / "f", args.fanout_items, args.shard_samples, args.workers)
        results["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(results, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
