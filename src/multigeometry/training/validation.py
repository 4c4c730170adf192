"""Validation during training: the loss terms and a quick retrieval R@1 per pair and direction on the val split."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from multigeometry.training.objective import TrainModule, concat


def recall_at_1(similarity: Tensor, query_groups: Tensor, item_groups: Tensor) -> float:
    """The share of queries whose best-scored item belongs to their group (any of a group's items counts)."""
    best = similarity.argmax(dim=1)
    return float((item_groups[best] == query_groups).float().mean())


@torch.no_grad()
def validate_model(module: TrainModule, batches: Iterable[dict[str, Any]], device: torch.device) -> dict[str, float]:
    module.eval()
    losses: dict[str, list[float]] = {}
    features: dict[str, list] = {}
    groups: list[Tensor] = []
    pairs: list[tuple[str, str, float]] = []
    for batch in batches:
        if not batch["pairs"]:  # a last batch of one sample scores no pair: its rows would have no features
            continue
        batch = to_device(batch, device)
        pairs = batch["pairs"]
        for name, value in module(batch).items():
            losses.setdefault(name, []).append(float(value))
        for m, dist in module.features(batch).items():
            features.setdefault(m, []).append(dist)
        groups.append(batch["group_ids"])
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
            metrics[f"val/{q}_to_{i}/R@1"] = r
            recalls.append(r)
    if recalls:
        metrics["val/mean_R@1"] = sum(recalls) / len(recalls)
    return metrics


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return move(batch)
