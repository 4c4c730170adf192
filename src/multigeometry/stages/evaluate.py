"""Stage `evaluate`: the trained model on `eval.split`: retrieval, uncertainty and hierarchy metrics and top-k image
grids in `data/eval/<run>/` (`metrics.json`, `grids/`), the headline metrics and plot data for `dvc plots` in
`metrics/runs/<run>/` (`headline.json`, `plots/`).

Under torchrun (`torchrun --standalone --nproc-per-node=N -m multigeometry evaluate`) every rank embeds the split and
ranks the queries of each retrieval direction against its 1/N slice of the items, the ranks combining their counts
(`evaluation.sharded`); the other metrics are computed on every rank alike, and rank 0 writes the report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from multigeometry.config import Params

log = logging.getLogger(__name__)


def evaluate(params: Params, root: Path = Path(".")) -> Path:
    import torch.distributed as dist

    from multigeometry.distributed import init_from_env, rank_and_world
    from multigeometry.evaluation.report import write_report
    from multigeometry.evaluation.suite import eval_device, evaluate_split
    from multigeometry.inference import load_trained
    from multigeometry.paths import MODEL_FILE, eval_dir, models_dir, run_reports_dir, shards_dir

    started = time.perf_counter()
    device = eval_device(params.eval)
    joined = init_from_env(device.type == "cuda")
    try:
        trained = load_trained(models_dir(params, root) / MODEL_FILE, device)
        result = evaluate_split(trained, root, params.eval.split, params.eval)
        rank, world = rank_and_world()
    finally:
        if joined:
            dist.destroy_process_group()
    out = eval_dir(params, root)
    if rank != 0:
        return out
    if params.eval.cascade and any({p.a, p.b} == {"audio", "text"} for p in params.pairs.pairs):
        from multigeometry.evaluation.cascade import cascade_metrics

        result.metrics.update(cascade_metrics(params, shards_dir(params, root), params.eval.split, out))
    metrics = write_report(result, out, run_reports_dir(params, root), shards_dir(params, root))
    log.info(
        "evaluate: %s split, mean R@1 %.3f, %d metrics into %s in %.1f s (%d rank(s))",
        params.eval.split, metrics.get("mean_R@1", float("nan")), len(metrics), out, time.perf_counter() - started,
        world,
    )
    return out
