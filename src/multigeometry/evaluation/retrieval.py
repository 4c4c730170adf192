"""Ranking metrics computed in blocks of queries: R@K, median and mean rank, mAP@R, with multi-positive ground truth.

Scores are produced one block of queries at a time (`block_size` × all items), reduced to a few numbers per query and
dropped, so that 25,000 × 5,000 items never hold more than one block of pair scores in memory.

Ties are counted pessimistically: a positive that scores the same as a negative ranks after it. (A collapsed model
that gives every item the same score thus gets the worst ranks, not ranks that depend on the order of the items.)
Tied positives among themselves need no rule: the metrics only see which ranks hold positives. This is the one R@1 of
the project: training's validation (`training/validation.py`) ranks with these functions too.

With a query's positives sorted by score, the t-th of them (t = 1..R) has rank r_t = t + #{negatives scoring ≥ it}.
Then: the first positive's rank is r_1; R@K = [r_1 ≤ K]; AP@R = (1/R) Σ_{t: r_t ≤ R} t / r_t (precision at each
positive inside the top R, as in Musgrave et al.'s MAP@R).

Ranks are counted, not sorted: #{negatives ≥ s} is #{items ≥ s} − #{positives ≥ s}, one comparison pass over the
block's scores per positive (or one bucketing pass for rows with many positives), against the O(N log N) sort of every
row; positives come as index lists (`positive_lists`), so no Q × N mask is built either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from multigeometry.geometry.distribution import Distribution, device_of
from multigeometry.geometry.similarity import SimilarityFn

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


def positive_lists(query_groups: Tensor, item_groups: Tensor) -> Tensor:
    """The items that share each query's group, as indices (Q, P) padded with −1, P the largest count (at least 1).

    Sorting the items' groups once and looking each query's group up in them costs O((Q + N) log N), never a Q × N
    mask."""
    order = torch.argsort(item_groups, stable=True)
    sorted_groups = item_groups[order]
    qg = query_groups.to(sorted_groups.dtype).contiguous()
    start = torch.searchsorted(sorted_groups, qg, side="left")
    count = torch.searchsorted(sorted_groups, qg, side="right") - start
    width = max(int(count.max()) if count.numel() else 0, 1)
    slot = torch.arange(width, device=item_groups.device)
    real = slot[None, :] < count[:, None]
    idx = (start[:, None] + slot[None, :]).clamp(max=max(order.numel() - 1, 0))
    picked = order[idx] if order.numel() else torch.zeros_like(idx)
    return torch.where(real, picked, torch.full_like(picked, -1))


def mask_to_lists(mask: Tensor) -> Tensor:
    """A dense positive mask (b, N) as padded index lists (b, P), −1 where a row has fewer than P positives."""
    mask = mask.to(torch.bool)
    counts = mask.sum(dim=1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: each row's columns in order
    slot = torch.arange(rows.numel(), device=mask.device) - (torch.cumsum(counts, 0) - counts)[rows]
    out = torch.full((mask.shape[0], width), -1, dtype=torch.long, device=mask.device)
    out[rows, slot] = cols
    return out


# Up to this many positives a row, each positive's count is one comparison pass over the block's scores; above it,
# one bucketing pass (a binary search of every score among the row's sorted positive scores) serves them all.
COUNT_PASSES_MAX = 8


def at_or_above(scores: Tensor, thresholds: Tensor, workspace: Tensor | None = None) -> Tensor:
    """How many entries of each row of `scores` (b, N) are >= each of that row's `thresholds` (b, P) -> (b, P).

    `workspace`, a float tensor of at least b·N elements, takes the comparisons: a fresh block-sized tensor per
    comparison would cost more in page faults than the comparison itself, and sums over bool tensors are slow."""
    b, p = thresholds.shape
    if p <= COUNT_PASSES_MAX:
        n = scores.shape[1]
        if workspace is None or workspace.numel() < b * n or workspace.dtype != scores.dtype:
            workspace = scores.new_empty(b * n)
        hits = workspace[: b * n].view(b, n)
        out = torch.empty(b, p, dtype=torch.long, device=scores.device)
        for t in range(p):
            torch.ge(scores, thresholds[:, t, None], out=hits)
            # float32 sums of ones are exact below 2^24 items
            out[:, t] = hits.sum(dim=1) if n < 1 << 24 else hits.sum(dim=1, dtype=torch.float64)
        return out
    ascending, order = thresholds.sort(dim=1)
    # bucket[i, j] = how many thresholds of row i are <= scores[i, j]; an entry is >= the u-th smallest threshold
    # exactly when its bucket is above u
    bucket = torch.searchsorted(ascending.contiguous(), scores.contiguous(), right=True)
    hist = torch.zeros(b, p + 1, dtype=torch.long, device=scores.device)
    hist.scatter_add_(1, bucket, torch.ones_like(bucket))
    ge_ascending = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # [u] = entries whose bucket >= u + 1
    return torch.empty_like(ge_ascending).scatter_(1, order, ge_ascending)


def block_rankings(
    scores: Tensor, positives: Tensor, workspace: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """First-positive rank, AP@R and positive count of each row of one block of scores (b, N).

    `positives` is a bool mask (b, N) or index lists (b, P) padded with −1 (`positive_lists`). Ranks are counted,
    never sorted: the t-th best positive's rank is t plus the number of negatives scoring at or above it, which is
    the number of items at or above it minus the number of positives at or above it. `workspace`: see
    `at_or_above`. Raises on a non-finite score: a NaN would silently rank anywhere.
    """
    lists = mask_to_lists(positives) if positives.dtype == torch.bool else positives.to(torch.long)
    if positives.dtype == torch.bool and positives.shape != scores.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} disagree")
    if lists.dim() != 2 or lists.shape[0] != scores.shape[0]:
        raise ValueError(f"positive lists {tuple(lists.shape)} do not match {scores.shape[0]} score rows")
    check_finite(scores)
    n_pos = (lists >= 0).sum(dim=1)
    if scores.shape[0] == 0 or int(n_pos.max()) == 0:
        return no_positives(n_pos)
    values = sorted_positive_scores(scores, lists[:, : int(n_pos.max())])
    first, ap = ranks_from_counts(values, at_or_above(scores, values, workspace), n_pos)
    return first, ap, n_pos


def check_finite(scores: Tensor) -> None:
    """Raises on a non-finite score: a NaN would silently rank anywhere."""
    if not bool(torch.isfinite(scores.sum())) and not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"non-finite similarity scores (first in block row {bad}); the model output is broken")


def no_positives(n_pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The results of a block in which no query has a positive: first rank 0, AP 0."""
    zeros = torch.zeros(n_pos.shape[0], dtype=torch.long, device=n_pos.device)
    return zeros, zeros.to(torch.float64), n_pos


def sorted_positive_scores(scores: Tensor, lists: Tensor) -> Tensor:
    """Each row's positive scores (b, P), best first; padding (−1 in `lists`) scores −inf and comes last."""
    values = scores.gather(1, lists.clamp_min(0)).masked_fill(lists < 0, float("-inf"))
    return values.sort(dim=1, descending=True).values


def ranks_from_counts(values: Tensor, items_at_or_above: Tensor, n_pos: Tensor) -> tuple[Tensor, Tensor]:
    """First-positive rank and AP@R (b,) from each row's positive scores `values` (b, P, best first, −inf padding)
    and the number of items (positives included) scoring at or above each of them, counted over the whole gallery."""
    t = torch.arange(1, values.shape[1] + 1, device=values.device)
    ranks = items_at_or_above - at_or_above(values, values) + t  # (b, P), rank of the t-th best positive
    real = t[None, :] <= n_pos[:, None]
    first = torch.where(n_pos > 0, ranks[:, 0], torch.zeros_like(ranks[:, 0]))
    inside = real & (ranks <= n_pos[:, None])
    ap = (t[None, :].to(torch.float64) / ranks.to(torch.float64) * inside).sum(dim=1) / n_pos.clamp_min(1)
    return first, ap


class Workspace:
    """One block's comparisons (see `at_or_above`), grown when a block needs more and reused by every block."""

    def __init__(self) -> None:
        self.buffer: Tensor | None = None

    def take(self, like: Tensor, numel: int) -> Tensor:
        if self.buffer is None or self.buffer.numel() < numel or self.buffer.dtype != like.dtype:
            self.buffer = like.new_empty(numel)
        return self.buffer


BlockRanker = Callable[[int, int], tuple[Tensor, Tensor, Tensor]]  # (i0, i1) -> block_rankings of queries i0:i1


def rank_query_blocks(rank_block: BlockRanker, n_queries: int, block_size: int) -> Rankings:
    """Rankings of `n_queries` queries, `block_size` of them at a time, each block ranked by `rank_block`."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    firsts, aps, counts = [], [], []
    for i0 in range(0, n_queries, block_size):
        first, ap, n_pos = rank_block(i0, min(n_queries, i0 + block_size))
        firsts.append(first.cpu())
        aps.append(ap.cpu())
        counts.append(n_pos.cpu())
    if not firsts:
        empty = torch.zeros(0, dtype=torch.long)
        return Rankings(empty, torch.zeros(0, dtype=torch.float64), empty)
    return Rankings(torch.cat(firsts), torch.cat(aps), torch.cat(counts))


def rank_blocks(
    score_block: ScoreBlock, positive_block: ScoreBlock, n_queries: int, block_size: int
) -> Rankings:
    """Rankings of `n_queries` queries, scoring and reducing `block_size` of them at a time; `positive_block` gives
    the block's positives as a bool mask or as index lists (see `block_rankings`)."""
    workspace = Workspace()

    def rank_block(i0: int, i1: int) -> tuple[Tensor, Tensor, Tensor]:
        scores = score_block(i0, i1)
        return block_rankings(scores, positive_block(i0, i1), workspace.take(scores, scores.numel()))

    return rank_query_blocks(rank_block, n_queries, block_size)


def slice_rows(dist: Distribution, i0: int, i1: int) -> Distribution:
    return dist.map(lambda t: t[i0:i1])


def rank_by_groups(
    queries: Distribution,
    items: Distribution,
    similarity: SimilarityFn,
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
    lists = positive_lists(query_groups.to(device_of(items)), item_groups.to(device_of(items)))
    return rank_blocks(
        lambda i0, i1: similarity(slice_rows(queries, i0, i1), items),
        lambda i0, i1: lists[i0:i1],
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
    similarity: SimilarityFn,
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
