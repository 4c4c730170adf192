"""Evaluation metrics against brute-force references on random embeddings with multi-positive groups and ties."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from multigeometry.evaluation.hierarchy import blockwise_auc
from multigeometry.evaluation.retrieval import blockwise_topk, rank_by_groups, recall_curve, summarize
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
