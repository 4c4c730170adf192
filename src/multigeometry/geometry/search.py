"""Vectors whose Euclidean nearest neighbours are a similarity's best pairs: what an approximate index (FAISS)
stores for an item and searches with for a query, so that its candidates are ranked as the geometry ranks them.

Each item (and query) becomes one row per component, `owner` saying whose row it is:
- point (cosine of the means): the unit means; ‖q − y‖² = 2 − 2 cos, so nearest is most similar;
- cone (`cone_similarity`, the cosine of the lifted unit vectors [cos θ·μ, sin θ·μ]): the lifted vectors, likewise
  exact;
- csd: one row per component, items y_l = [μ_l/√τ, sqrt(Σσ²_l/τ − log γ_l)], queries x_k = [μ_k/√τ, 0]. Then
  ‖x_k − y_l‖² = ‖μ_k − μ_l‖²/τ + Σσ²_l/τ − log γ_l, which is minus the (k, l) term of the CSD log-sum-exp up to
  a constant of the query component: the nearest item component is the one with the largest term, and the mixture's
  score lies within log(K·K') of its largest term;
- product_kernel: the means alone (pair-dependent variances have no such form): candidates to re-rank exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from multigeometry.geometry.cone import ConeParams, lift
from multigeometry.geometry.mixture import MixtureParams
from multigeometry.geometry.similarity import SimilarityKind


def search_vectors(
    dist: MixtureParams | ConeParams, kind: SimilarityKind, side: Literal["item", "query"], tau: float = 1.0
) -> tuple[Tensor, Tensor]:
    """(rows (M, E) float32, owner (M,)) for a batch of B distributions: M = B·K rows, row-major by sample."""
    if kind == "cone":
        if not isinstance(dist, ConeParams):
            raise TypeError(f"kind 'cone' needs ConeParams, got {type(dist).__name__}")
        rows = lift(dist).float()
        return rows, torch.arange(dist.batch_size, device=rows.device)
    if not isinstance(dist, MixtureParams):
        raise TypeError(f"kind {kind!r} needs MixtureParams, got {type(dist).__name__}")
    b, k, d = dist.mu.shape
    owner = torch.arange(b, device=dist.mu.device).repeat_interleave(k)
    mu = dist.mu.float().reshape(b * k, d)
    if kind == "point":
        return F.normalize(mu, dim=-1), owner
    if kind == "product_kernel":
        return mu, owner
    if kind != "csd":
        raise ValueError(f"unknown similarity kind {kind!r}; expected point, csd, product_kernel or cone")
    scale = tau ** -0.5
    if side == "query":
        return torch.cat([mu * scale, mu.new_zeros(b * k, 1)], dim=1), owner
    spread = -dist.log_weights().float().reshape(b * k)
    if dist.logvar is not None:
        spread = spread + dist.logvar.float().exp().sum(-1).reshape(b * k) / tau
    return torch.cat([mu * scale, spread.clamp_min(0.0).sqrt()[:, None]], dim=1), owner
