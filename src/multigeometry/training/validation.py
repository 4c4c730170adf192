"""Validation during training: the loss terms and a quick retrieval R@1 per pair and direction on the val split."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from multigeometry.data.batch import Batch
from multigeometry.evaluation.retrieval import positive_lists, rank_blocks, summarize
from multigeometry.geometry.distribution import concat
from multigeometry.training.objective import TrainModule


def recall_at_1(similarity: Tensor, query_groups: Tensor, item_groups: Tensor, block_size: int = 1024) -> float:
    """R@1 of the queries (rows of `similarity`) that have a positive (an item of their group), with the evaluate
    stage's ranks (`evaluation.retrieval`: ties counted against the model), so that `train.best_metric` and the
    registry's gate measure the same thing; NaN when no query has a positive."""
    lists = positive_lists(query_groups.to(similarity.device), item_groups.to(similarity.device))
    rankings = rank_blocks(lambda i0, i1: similarity[i0:i1], lambda i0, i1: lists[i0:i1], similarity.shape[0],
                           block_size)
    return summarize(rankings, (1,)).get("R@1", float("nan"))


@torch.no_grad()
def validate_model(module: TrainModule, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
    module.eval()
    losses: dict[str, list[float]] = {}
    features: dict[str, list] = {}
    groups: list[Tensor] = []
    pairs: list[tuple[str, str, float]] = []
    for batch in batches:
        if not batch.pairs:  # a last batch of one sample scores no pair: its rows would have no features
            continue
        batch = batch.to(device)
        pairs = batch.pairs
        for name, value in module(batch).items():
            losses.setdefault(name, []).append(float(value))
        for m, dist in module.features(batch).items():
            features.setdefault(m, []).append(dist)
        groups.append(batch.group_ids)
    module.train()
    if not groups:
        return {}
    metrics = {f"val/{name}": sum(v) / len(v) for name, v in losses.items()}
    all_groups = torch.cat(groups)
    recalls = []
    for a, b, _w in pairs:
        sim = module.criterion.similarity(concat(features[a]), concat(features[b]))
        for (q, i), s in (((a, b), sim), ((b, a), sim.T)):
            r = recall_at_1(s, all_groups, all_groups)
            if math.isnan(r):
                continue
            metrics[f"val/{q}_to_{i}/R@1"] = r
            recalls.append(r)
    if recalls:
        metrics["val/mean_R@1"] = sum(recalls) / len(recalls)
    return metrics
