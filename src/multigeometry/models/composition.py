"""The compositional layer: the distribution of a compound concept from the distributions of its parts.

A Deep Sets network (Zaheer et al., 2017): each part's distribution parameters go through the same MLP φ, the
results are pooled by mean and max over the parts of each compound (both invariant to their order and defined for
any number of them), and an MLP ρ plus a head of the model's geometry turns the pool into the compound's
distribution. It is trained with the composition term of the objective, so that compose("red", "a circle") lands
where the caption "a red circle" does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from multigeometry.config import ModelConfig
from multigeometry.geometry.distribution import Distribution, FlatScale, family_of
from multigeometry.geometry.groups import pad_groups
from multigeometry.models.heads import make_head


def distribution_features(dist: Distribution, cfg: ModelConfig) -> Tensor:
    """A distribution's parameters as one flat vector a row, (B, F), each piece on a scale near [−1, 1] (its
    geometry's `Family.flat_features`): weights, unit means, and log-variances or apertures mapped onto [0, 1] by
    their configured bounds; independent of the order of a mixture's components."""
    return family_of(dist).flat_features(dist, FlatScale(cfg.theta_max, cfg.logvar_min, cfg.logvar_max))


def feature_dim(cfg: ModelConfig) -> int:
    d, k = cfg.embed_dim, cfg.n_components
    if cfg.geometry == "cone":
        return d + 1
    if cfg.geometry == "point":
        return 1 + d
    return k + 2 * k * d


def _mlp(in_dim: int, hidden: int, layers: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.GELU()]
    return nn.Sequential(*blocks)


class Composer(nn.Module):
    """compose(parts, owner, n) -> the n compounds' distributions; `parts` holds every part of every compound (P rows)
    and `owner[p]` in [0, n) says whose part row p is. Besides the pooled φ, ρ sees the plain mean of the parts'
    parameters, a linear path from "the average of the parts" (which, for unit means, points between them as a
    composed cone's direction does) that the network only has to correct. A compound without parts gets the
    composition of nothing (pools of zeros): callers pass only compounds that have parts."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hidden, width = cfg.composer.hidden_dim, feature_dim(cfg)
        self.phi = _mlp(width, hidden, cfg.composer.layers)
        self.rho = _mlp(2 * hidden + width, hidden, cfg.composer.layers)
        self.head = make_head(hidden, cfg)

    def forward(self, parts: Distribution, owner: Tensor, n: int) -> Distribution:
        x = distribution_features(parts, self.cfg)
        h = self.phi(x)
        owner = owner.to(h.device)
        # the mean as a segment sum (index_add: O(P·F), where a product with an (n, P) assignment matrix costs
        # O(n·P·F), a sixth of a full-batch step), the max over the parts padded to the largest count
        counts = torch.bincount(owner, minlength=n).clamp_min(1).to(h.dtype)[:, None]
        mean = h.new_zeros(n, h.shape[1]).index_add_(0, owner, h) / counts
        raw_mean = x.new_zeros(n, x.shape[1]).index_add_(0, owner, x) / counts.to(x.dtype)
        padded, _ = pad_groups(h, owner, n, float("-inf"))
        peak = padded.amax(1)
        peak = torch.where(torch.isinf(peak), torch.zeros_like(peak), peak)
        return self.head(self.rho(torch.cat([mean, peak, raw_mean], dim=-1)))
