"""Calibrated match scores for search: the model's raw similarity says which item is best, not whether any item
matches. Platt scaling (a logistic curve over the similarity) fitted on a split's own pairs (same group: a match,
else not, classes weighted equally) turns a score into a match probability, so a query whose best item scores like a
non-match gets `no_match`: "a purple elephant playing the violin" is answered with its nearest shapes, flagged."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from multigeometry.models.pair_model import Distribution

MAX_QUERIES = 1000  # calibration pairs come from at most this many query rows (all their items each)


def fit_platt(positives: Tensor, negatives: Tensor, iters: int = 200) -> tuple[float, float]:
    """(a, b) of P(match | s) = sigmoid(a * s + b), by weighted logistic regression with the two classes weighted
    equally; scores are standardised for the fit and the result mapped back."""
    if positives.numel() == 0 or negatives.numel() == 0:
        raise ValueError(f"calibration needs matching and non-matching pairs, got {positives.numel()} and "
                         f"{negatives.numel()}")
    scores = torch.cat([positives, negatives]).double()
    labels = torch.cat([torch.ones_like(positives), torch.zeros_like(negatives)]).double()
    weights = torch.where(labels > 0, 0.5 / positives.numel(), 0.5 / negatives.numel()).double()
    mean, std = scores.mean(), scores.std().clamp_min(1e-12)
    z = (scores - mean) / std
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=iters, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimizer.zero_grad()
        logits = params[0] * z + params[1]
        value = (weights * torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")).sum()
        value = value + 1e-4 * params[0] ** 2  # keeps a perfectly separable split finite
        value.backward()
        return value

    optimizer.step(loss)
    a, b = (float(v) for v in params.detach())
    return a / float(std), b - a * float(mean) / float(std)


def match_probability(score: float, a: float, b: float) -> float:
    x = a * score + b
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@torch.no_grad()
def pair_scores(queries: Distribution, query_groups: Tensor, items: Distribution, item_groups: Tensor,
                similarity: Callable[[Distribution, Distribution], Tensor],
                block_size: int = 256) -> tuple[Tensor, Tensor]:
    """(scores of matching pairs, scores of the others) of the first MAX_QUERIES queries against every item."""
    n = min(queries.batch_size, MAX_QUERIES)
    positives, negatives = [], []
    for i0 in range(0, n, block_size):
        i1 = min(n, i0 + block_size)
        block = queries.map(lambda t, i0=i0, i1=i1: t[i0:i1])
        scores = similarity(block, items).float().cpu()
        same = query_groups[i0:i1, None].cpu() == item_groups[None, :].cpu()
        positives.append(scores[same])
        negatives.append(scores[~same])
    return torch.cat(positives), torch.cat(negatives)
