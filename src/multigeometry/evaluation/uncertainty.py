"""Uncertainty against retrieval error: a per-query uncertainty from the geometry, its Spearman correlation with the
rank of the query's first positive, and R@1 on the most certain q% of the queries.

The uncertainty is what the geometry gives (`geometry.distribution.uncertainty`): a mixture's total variance (or the
entropy of its weights), a cone's aperture. A point embedding has none. A useful uncertainty correlates positively
with the error, and R@1 on the most certain queries rises as q falls.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of x (N,), ties sharing the mean of their ranks (scipy's rankdata 'average')."""
    n = x.numel()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    # groups of equal values: start index of each run
    new_run = torch.ones(n, dtype=torch.bool, device=x.device)
    if n > 1:
        new_run[1:] = sorted_x[1:] != sorted_x[:-1]
    run_id = torch.cumsum(new_run.long(), 0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    n_runs = int(run_id[-1]) + 1 if n else 0
    run_sum = torch.zeros(n_runs, dtype=torch.float64, device=x.device).index_add_(0, run_id, positions)
    run_len = torch.bincount(run_id, minlength=n_runs).to(torch.float64)
    ranks = torch.empty(n, dtype=torch.float64, device=x.device)
    ranks[order] = (run_sum / run_len)[run_id]
    return ranks


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two (N,) tensors, ties averaged; NaN when either is constant or N < 2."""
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"spearman needs two (N,) tensors of one length, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.numel() < 2:
        return math.nan
    rx, ry = average_ranks(x.double()), average_ranks(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    if denom == 0.0:
        return math.nan
    return float((rx * ry).sum()) / denom


def certain_recall(uncertainty: Tensor, first_rank: Tensor, quantiles: tuple[int, ...], k: int = 1) -> dict[int, float]:
    """R@k on the q% most certain queries, for each q in `quantiles` (percent): the ceil(q·N/100) queries of lowest
    uncertainty (ties kept in query order)."""
    if uncertainty.shape != first_rank.shape:
        raise ValueError(f"uncertainty {tuple(uncertainty.shape)} and ranks {tuple(first_rank.shape)} disagree")
    n = uncertainty.numel()
    if n == 0:
        return {}
    hits = (first_rank[torch.argsort(uncertainty.cpu(), stable=True)].cpu() <= k).to(torch.float64)
    return {q: float(hits[: max(1, -(-q * n // 100))].mean()) for q in quantiles}


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of `scores` for the True `labels` (the Mann-Whitney statistic, ties counting half);
    NaN when either class is empty."""
    labels = labels.to(torch.bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(scores.double())
    return (float(ranks[labels].sum()) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def decile_recall(uncertainty: Tensor, first_rank: Tensor, bins: int = 10, k: int = 1) -> list[float]:
    """R@k in each of `bins` equal groups of queries, from the most certain to the least (PCME++'s plot): a useful
    uncertainty gives a falling curve."""
    n = uncertainty.numel()
    if n < bins:
        return []
    hits = (first_rank[torch.argsort(uncertainty.cpu(), stable=True)].cpu() <= k).to(torch.float64)
    edges = [round(i * n / bins) for i in range(bins + 1)]
    return [float(hits[a:b].mean()) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def severities(ambiguity: list[dict], modality: str) -> Tensor:
    """The injected severity of `modality` per row (NaN where the source records none)."""
    return torch.tensor([float(a.get(modality, {}).get("severity", math.nan)) if a else math.nan for a in ambiguity],
                        dtype=torch.float64)


def ambiguity_metrics(uncertainty: Tensor, severity: Tensor) -> dict[str, float]:
    """How well a query's uncertainty tracks the ambiguity injected into it: the Spearman correlation, and the AUROC
    of the uncertainty for flagging the most corrupted quarter of the queries. Empty where the split records no
    varying severity."""
    known = ~torch.isnan(severity)
    u, s = uncertainty.cpu().double()[known], severity[known]
    if s.numel() < 4 or float(s.max() - s.min()) == 0.0:
        return {}
    out = {"uncertainty_ambiguity_spearman": spearman(u, s)}
    worst = s >= torch.quantile(s, 0.75)
    value = auroc(u, worst)
    if not math.isnan(value):
        out["corrupted_auroc"] = value
    return {k: v for k, v in out.items() if not math.isnan(v)}
