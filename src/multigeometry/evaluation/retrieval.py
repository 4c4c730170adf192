"""Ranking metrics computed in blocks of queries: R@K, median and mean rank, mAP@R, with multi-positive ground truth.

Scores are produced one block of queries at a time (`block_size` × all items), reduced to a few numbers per query and
dropped, so that 25,000 × 5,000 items never hold more than one block of pair scores in memory.

Ties are counted pessimistically: a positive that scores the same as a negative ranks after it. (A collapsed model
that gives every item the same score thus gets the worst ranks, not ranks that depend on the order of the items.)
Tied positives among themselves need no rule: the metrics only see which ranks hold positives.

With a query's positives sorted by score, the t-th of them (t = 1..R) has rank r_t = t + #{negatives scoring ≥ it}.
Then: the first positive's rank is r_1; R@K = [r_1 ≤ K]; AP@R = (1/R) Σ_{t: r_t ≤ R} t / r_t (precision at each
positive inside the top R, as in Musgrave et al.'s MAP@R).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from multigeometry.geometry.distribution import Distribution, device_of

ScoreBlock = Callable[[int, int], Tensor]  # (i0, i1) -> scores of queries i0:i1 against all items, (i1 - i0, N)


@dataclass(frozen=True)
class Rankings:
    """Per-query ranking results (Q,): the rank (1-based) of the best-ranked positive, AP@R, and the number of
    positives. Queries without any positive have first_rank 0 and ap_at_r 0 and are left out of every summary."""

    first_rank: Tensor
    ap_at_r: Tensor
    n_positive: Tensor

    @property
    def valid(self) -> Tensor:
        return self.n_positive > 0


def block_rankings(scores: Tensor, positives: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """First-positive rank, AP@R and positive count of each row of one block of scores (b, N) with its positive mask.

    Raises on a non-finite score: a NaN would silently rank anywhere.
    """
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} disagree")
    if not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"non-finite similarity scores (first in block row {bad}); the model output is broken")
    b, n_items = scores.shape
    positives = positives.to(torch.bool)
    n_pos = positives.sum(dim=1)
    first = torch.zeros(b, dtype=torch.long, device=scores.device)
    ap = torch.zeros(b, dtype=torch.float64, device=scores.device)
    p_max = int(n_pos.max()) if b else 0
    if p_max == 0:
        return first, ap, n_pos
    # negatives sorted ascending; positives' places hold -inf, which no finite score is at or below
    neg_sorted = scores.masked_fill(positives, float("-inf")).sort(dim=1).values
    pos_vals = scores.masked_fill(~positives, float("-inf")).topk(p_max, dim=1).values  # descending
    neg_at_or_above = n_items - torch.searchsorted(neg_sorted, pos_vals.contiguous(), side="left")
    t = torch.arange(1, p_max + 1, device=scores.device)
    ranks = neg_at_or_above + t  # (b, p_max), rank of the t-th best positive
    real = t[None, :] <= n_pos[:, None]
    first = torch.where(n_pos > 0, ranks[:, 0], torch.zeros_like(ranks[:, 0]))
    inside = real & (ranks <= n_pos[:, None])
    ap = (t[None, :].to(torch.float64) / ranks.to(torch.float64) * inside).sum(dim=1) / n_pos.clamp_min(1)
    return first, ap, n_pos


def rank_blocks(
    score_block: ScoreBlock, positive_block: ScoreBlock, n_queries: int, block_size: int
) -> Rankings:
    """Rankings of `n_queries` queries, scoring and reducing `block_size` of them at a time."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    firsts, aps, counts = [], [], []
    for i0 in range(0, n_queries, block_size):
        i1 = min(n_queries, i0 + block_size)
        first, ap, n_pos = block_rankings(score_block(i0, i1), positive_block(i0, i1))
        firsts.append(first.cpu())
        aps.append(ap.cpu())
        counts.append(n_pos.cpu())
    if not firsts:
        empty = torch.zeros(0, dtype=torch.long)
        return Rankings(empty, torch.zeros(0, dtype=torch.float64), empty)
    return Rankings(torch.cat(firsts), torch.cat(aps), torch.cat(counts))


def slice_rows(dist: Distribution, i0: int, i1: int) -> Distribution:
    return dist.map(lambda t: t[i0:i1])


def rank_by_groups(
    queries: Distribution,
    items: Distribution,
    similarity: Callable[[Distribution, Distribution], Tensor],
    query_groups: Tensor,
    item_groups: Tensor,
    block_size: int = 1024,
) -> Rankings:
    """Rank all `items` for every query by `similarity` (the geometry's own); an item is a positive of a query when
    they share a group id."""
    n_q, n_i = queries.batch_size, items.batch_size
    if query_groups.shape != (n_q,) or item_groups.shape != (n_i,):
        raise ValueError(
            f"group ids {tuple(query_groups.shape)} / {tuple(item_groups.shape)} do not match {n_q} queries / "
            f"{n_i} items"
        )
    device = device_of(items)
    qg, ig = query_groups.to(device), item_groups.to(device)
    return rank_blocks(
        lambda i0, i1: similarity(slice_rows(queries, i0, i1), items),
        lambda i0, i1: qg[i0:i1, None] == ig[None, :],
        n_q,
        block_size,
    )


def summarize(rankings: Rankings, ks: tuple[int, ...] | list[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K for each K, median and mean rank of the first positive, and mAP@R, over the queries with a positive."""
    keep = rankings.valid
    first = rankings.first_rank[keep].to(torch.float64)
    n = int(keep.sum())
    out: dict[str, float] = {}
    if n == 0:
        return out
    for k in ks:
        out[f"R@{k}"] = float((first <= k).to(torch.float64).mean())
    out["median_rank"] = float(first.quantile(0.5))  # the mean of the two middle ranks when n is even
    out["mean_rank"] = float(first.mean())
    out["mAP@R"] = float(rankings.ap_at_r[keep].mean())
    out["n_queries"] = float(n)
    return out


def recall_curve(rankings: Rankings, max_k: int) -> list[float]:
    """R@K for K = 1..max_k over the queries with a positive."""
    first = rankings.first_rank[rankings.valid]
    if first.numel() == 0:
        return []
    counts = torch.bincount(first.clamp(max=max_k + 1), minlength=max_k + 2)[1 : max_k + 1]
    return [float(v) for v in (counts.cumsum(0).to(torch.float64) / first.numel())]


def blockwise_topk(
    queries: Distribution,
    items: Distribution,
    similarity: Callable[[Distribution, Distribution], Tensor],
    k: int,
    block_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """The k best items of every query by `similarity`, computed a block of queries at a time: (scores, indices),
    each (Q, min(k, N)), best first."""
    k = min(k, items.batch_size)
    values, indices = [], []
    for i0 in range(0, queries.batch_size, block_size):
        i1 = min(queries.batch_size, i0 + block_size)
        top = similarity(slice_rows(queries, i0, i1), items).topk(k, dim=1)
        values.append(top.values.cpu())
        indices.append(top.indices.cpu())
    if not values:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(values), torch.cat(indices)
