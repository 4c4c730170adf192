"""Evaluation metrics against brute-force references on random embeddings with multi-positive groups and ties."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from multigeometry.evaluation.hierarchy import blockwise_auc
from multigeometry.evaluation.retrieval import (
    block_rankings,
    blockwise_topk,
    mask_to_lists,
    positive_lists,
    rank_by_groups,
    recall_curve,
    summarize,
)
from multigeometry.evaluation.uncertainty import certain_recall, spearman
from multigeometry.geometry.mixture import MixtureParams, point_similarity


def _reference(scores: np.ndarray, qg: np.ndarray, ig: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """One query at a time: sort items by score, ties broken against the positives (pessimistic)."""
    firsts, aps = [], []
    for s, g in zip(scores, qg, strict=True):
        pos = ig == g
        if not pos.any():
            continue
        # a positive ranks after every negative with the same score: sort by (-score, positive last)
        order = sorted(range(len(s)), key=lambda j: (-s[j], 1 if pos[j] else 0))
        ranks = [r + 1 for r, j in enumerate(order) if pos[j]]
        n_pos = len(ranks)
        firsts.append(ranks[0])
        aps.append(sum((t + 1) / r for t, r in enumerate(ranks) if r <= n_pos) / n_pos)
    out = {f"R@{k}": float(np.mean([f <= k for f in firsts])) for k in ks}
    out["median_rank"] = float(statistics.median(firsts))
    out["mean_rank"] = float(np.mean(firsts))
    out["mAP@R"] = float(np.mean(aps))
    out["n_queries"] = float(len(firsts))
    return out


@pytest.mark.parametrize("block_size", [1, 7, 1000])
def test_retrieval_metrics_match_brute_force_with_groups_and_ties(block_size: int):
    g = torch.Generator().manual_seed(0)
    n_q, n_i, d = 37, 53, 6
    # few distinct values so that many scores tie; groups with several positives; some queries with none
    queries = torch.randint(-2, 3, (n_q, d), generator=g).float()
    items = torch.randint(-2, 3, (n_i, d), generator=g).float()
    qg = torch.randint(0, 15, (n_q,), generator=g)
    ig = torch.randint(0, 12, (n_i,), generator=g)

    def sim(a: MixtureParams, b: MixtureParams) -> torch.Tensor:
        return a.mu[:, 0] @ b.mu[:, 0].T

    rankings = rank_by_groups(MixtureParams.point(queries), MixtureParams.point(items), sim, qg, ig, block_size)
    got = summarize(rankings, (1, 3, 10))
    want = _reference((queries @ items.T).numpy(), qg.numpy(), ig.numpy(), (1, 3, 10))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    curve = recall_curve(rankings, 12)
    assert curve[0] == pytest.approx(want["R@1"]) and curve[2] == pytest.approx(want["R@3"])
    assert all(a <= b for a, b in zip(curve, curve[1:], strict=False))


def _sorting_ranks(scores: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ranks by sorting every row (the implementation counting replaced): negatives sorted ascending, each
    positive's count of negatives at or above it found by binary search."""
    n_items = scores.shape[1]
    n_pos = positives.sum(dim=1)
    p_max = int(n_pos.max())
    neg_sorted = scores.masked_fill(positives, float("-inf")).sort(dim=1).values
    pos_vals = scores.masked_fill(~positives, float("-inf")).topk(p_max, dim=1).values
    ranks = n_items - torch.searchsorted(neg_sorted, pos_vals.contiguous(), side="left") + torch.arange(1, p_max + 1)
    t = torch.arange(1, p_max + 1)
    inside = (t[None, :] <= n_pos[:, None]) & (ranks <= n_pos[:, None])
    ap = (t[None, :].double() / ranks.double() * inside).sum(dim=1) / n_pos.clamp_min(1)
    first = torch.where(n_pos > 0, ranks[:, 0], torch.zeros_like(ranks[:, 0]))
    return first, ap, n_pos


@pytest.mark.parametrize("max_positives", [3, 30])  # one comparison pass per positive; the bucketing pass
def test_counting_ranks_equal_sorting_ranks_with_ties(max_positives: int):
    g = torch.Generator().manual_seed(max_positives)
    b, n = 64, 200
    scores = torch.randint(-4, 5, (b, n), generator=g).float() / 4  # 9 distinct values: ties everywhere
    scores[:8] = 0.5  # rows that are all one value (a collapsed model)
    positives = torch.zeros(b, n, dtype=torch.bool)
    for row in range(b):
        count = int(torch.randint(0, max_positives + 1, (1,), generator=g))
        positives[row, torch.randperm(n, generator=g)[:count]] = True
    positives[9] = True  # every item a positive
    have = positives.any(dim=1)
    want = _sorting_ranks(scores[have], positives[have])
    for given in (positives, mask_to_lists(positives)):
        got = block_rankings(scores, given)
        for g_, w in zip(got, want, strict=True):
            torch.testing.assert_close(g_[have], w)
        assert torch.equal(got[0][~have], torch.zeros(int((~have).sum()), dtype=torch.long))


def test_positive_lists_are_the_groups_members():
    qg = torch.tensor([3, 1, 7, 3, 0])
    ig = torch.tensor([1, 3, 3, 5, 1, 3, 0])
    lists = positive_lists(qg, ig)
    for row, g in enumerate(qg.tolist()):
        got = sorted(i for i in lists[row].tolist() if i >= 0)
        assert got == [j for j, h in enumerate(ig.tolist()) if h == g]
    assert lists.shape == (5, 3)


def test_non_finite_scores_are_refused():
    scores = torch.zeros(3, 5)
    scores[1, 2] = float("nan")
    with pytest.raises(ValueError, match="block row 1"):
        block_rankings(scores, torch.eye(3, 5, dtype=torch.bool))


def test_a_collapsed_model_gets_the_worst_ranks():
    n = 10
    flat = MixtureParams.point(torch.ones(n, 4))
    groups = torch.arange(n)
    rankings = rank_by_groups(flat, flat, point_similarity, groups, groups, 4)
    assert summarize(rankings)["mean_rank"] == n


def test_blockwise_topk_equals_a_full_sort():
    g = torch.Generator().manual_seed(1)
    q = MixtureParams.point(torch.randn(9, 5, generator=g))
    items = MixtureParams.point(torch.randn(31, 5, generator=g))
    values, idx = blockwise_topk(q, items, point_similarity, 4, block_size=2)
    full = point_similarity(q, items).sort(dim=1, descending=True)
    torch.testing.assert_close(values, full.values[:, :4])
    assert torch.equal(idx, full.indices[:, :4])


def test_spearman_and_certain_recall_match_references():
    g = torch.Generator().manual_seed(2)
    u = torch.randint(0, 6, (40,), generator=g).double()  # ties
    ranks = torch.randint(1, 9, (40,), generator=g)
    assert spearman(u, ranks.double()) == pytest.approx(spearmanr(u.numpy(), ranks.numpy()).statistic)
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))
    curve = certain_recall(u, ranks, (10, 50, 100))
    order = np.argsort(u.numpy(), kind="stable")
    for q, value in curve.items():
        n = math.ceil(q * 40 / 100)
        assert value == pytest.approx(float(np.mean(ranks.numpy()[order][:n] <= 1)))


def test_blockwise_auc_matches_the_pairwise_definition():
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (13, 17), generator=g).double()  # ties count one half
    labels = torch.rand(13, 17, generator=g) < 0.3
    got = blockwise_auc(lambda i0, i1: scores[i0:i1], lambda i0, i1: labels[i0:i1], 13, 4)
    pos, neg = scores[labels], scores[~labels]
    want = float(((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean())
    assert got == pytest.approx(want)


def test_validation_r1_is_the_evaluation_r1():
    """training's validation R@1 (train.best_metric) ranks as evaluation does: ties count against the model."""
    from multigeometry.training.validation import recall_at_1

    g = torch.Generator().manual_seed(3)
    feats = torch.randint(-1, 2, (40, 3), generator=g).float()  # 27 distinct rows among 40: ties between groups
    groups = torch.randint(0, 25, (40,), generator=g)
    dist = MixtureParams.point(feats)

    def sim(a: MixtureParams, b: MixtureParams) -> torch.Tensor:
        return a.mu[:, 0] @ b.mu[:, 0].T

    want = summarize(rank_by_groups(dist, dist, sim, groups, groups, 7), (1,))["R@1"]
    assert recall_at_1(sim(dist, dist), groups, groups, block_size=7) == pytest.approx(want)
    flat = torch.zeros(10, 10)  # a collapsed model: every item ties, argmax would call the first one a hit
    assert recall_at_1(flat, torch.arange(10), torch.arange(10)) == 0.0
