"""Cones on the unit sphere: a direction μ and an angular radius (aperture) θ; angles, containment, composition.

A cone is the spherical cap of unit vectors within angle θ of μ. A general concept is a wide cap that contains the
caps of its specific instances; cap B lies inside cap A exactly when ∠(μ_A, μ_B) + θ_B ≤ θ_A.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from multigeometry.geometry.groups import pad_groups

# acos has an infinite derivative at ±1; its gradient is computed as if 1 − cos² were at least this, so that it stays
# finite (at most 1/sqrt(ACOS_GRAD_EPS)) while the value stays exact.
ACOS_GRAD_EPS = 1e-6


@dataclass(frozen=True)
class ConeParams:
    """A batch of cones: unit directions (..., D) and apertures θ (...) in radians."""

    direction: Tensor
    theta: Tensor

    def __post_init__(self) -> None:
        if tuple(self.direction.shape[:-1]) != tuple(self.theta.shape):
            raise ValueError(
                f"direction (..., D) and theta (...) disagree: "
                f"{tuple(self.direction.shape)} vs {tuple(self.theta.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return self.direction.shape[0]

    @property
    def dim(self) -> int:
        return self.direction.shape[-1]

    def map(self, fn: Callable[[Tensor], Tensor]) -> ConeParams:
        return ConeParams(fn(self.direction), fn(self.theta))

    @property
    def device(self) -> torch.device:
        return self.direction.device

    def select(self, rows: Tensor) -> ConeParams:
        """The rows `rows` (indices or a bool mask)."""
        return self.map(lambda t: t[rows])

    def to(self, device: torch.device | str) -> ConeParams:
        return self.map(lambda t: t.to(device))

    @classmethod
    def cat(cls, parts: Sequence[ConeParams]) -> ConeParams:
        return cls(torch.cat([p.direction for p in parts]), torch.cat([p.theta for p in parts]))


def bound_aperture(raw: Tensor, theta_min: float, theta_max: float) -> Tensor:
    """Map an unconstrained head output into [theta_min, theta_max] smoothly (a scaled sigmoid)."""
    return theta_min + (theta_max - theta_min) * torch.sigmoid(raw)


def cone_from_raw(raw_direction: Tensor, raw_theta: Tensor, theta_min: float, theta_max: float) -> ConeParams:
    return ConeParams(F.normalize(raw_direction, dim=-1), bound_aperture(raw_theta, theta_min, theta_max))


class _SafeAcos(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cos: Tensor) -> Tensor:  # type: ignore[override]
        cos = cos.clamp(-1.0, 1.0)
        ctx.save_for_backward(cos)
        return torch.acos(cos)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (cos,) = ctx.saved_tensors
        return -grad * torch.rsqrt((1.0 - cos * cos).clamp_min(ACOS_GRAD_EPS))


def angles(u: Tensor, v: Tensor) -> Tensor:
    """Angles between row-aligned unit vectors (..., D) -> (...).

    2·atan2(‖u − v‖, ‖u + v‖) is exact near 0 and π, where acos of a rounded dot product is off by ~sqrt(ulp), and
    its gradient stays bounded; identical directions give exactly 0.
    """
    return 2.0 * torch.atan2(torch.linalg.vector_norm(u - v, dim=-1), torch.linalg.vector_norm(u + v, dim=-1))


def pairwise_angles(u: Tensor, v: Tensor) -> Tensor:
    """Angles between all rows of u (B, D) and v (B', D), unit vectors -> (B, B'), through one matrix product."""
    return _SafeAcos.apply(u @ v.T)


def containment(outer: ConeParams, inner: ConeParams) -> Tensor:
    """How far each inner cone sticks out of its outer cone, row-aligned: max(0, ∠(μ_o, μ_i) + θ_i − θ_o).

    0 exactly when the inner cap lies inside the outer one; otherwise the angle by which its farthest point leaves
    the outer cap (the directed Hausdorff distance between the caps). With θ_i = 0 this is MERU's entailment loss.
    """
    return F.relu(angles(outer.direction, inner.direction) + inner.theta - outer.theta)


def pairwise_containment(outer: ConeParams, inner: ConeParams) -> Tensor:
    """containment of every inner cone (B') in every outer cone (B) -> (B, B')."""
    ang = pairwise_angles(outer.direction, inner.direction)
    return F.relu(ang + inner.theta[None, :] - outer.theta[:, None])


def cone_similarity(a: ConeParams, b: ConeParams) -> Tensor:
    """cos ∠(μ_a, μ_b) · cos(θ_a − θ_b) for all pairs -> (B, B'), in [−1, 1], 1 only for identical cones.

    It equals the cosine of the lifted unit vectors w = [cos θ · μ, sin θ · μ] ∈ R^{2D}, so it is one matrix product,
    smooth everywhere (unlike angles at 0), a positive-definite kernel, and CLIP's cosine when apertures agree;
    as in CLIP it is meant to be scaled by the learnable logit scale.
    """
    return lift(a) @ lift(b).T


def lift(c: ConeParams) -> Tensor:
    """The unit vectors [cos θ · μ, sin θ · μ] (..., 2D) whose inner products are `cone_similarity`."""
    return torch.cat([c.direction * c.theta.cos()[..., None], c.direction * c.theta.sin()[..., None]], dim=-1)


def compose_cones(parts: ConeParams, weights: Tensor | None = None) -> ConeParams:
    """Compose N cones into one, over the next-to-last dim: parts (..., N, D), (..., N) -> (..., D), (...).

    Direction: the normalised weighted sum of the parts' directions (uniform weights by default). Aperture: the widest
    cap around that direction that fits inside every part, min_n(θ_n − ∠(μ, μ_n)), floored at 0, so never wider than
    the narrowest part. When the parts' caps all contain the composed direction the result is contained in each of
    them; when they do not overlap there, the result is a ray (θ = 0) that still lies outside some part, and
    `containment(part, composed) > 0` says so.
    """
    u = parts.direction
    if weights is None:
        weights = torch.ones_like(parts.theta)
    direction = F.normalize((weights[..., None] * u).sum(-2), dim=-1)
    gap = parts.theta - angles(u, direction[..., None, :])
    theta = gap.amin(dim=-1).clamp_min(0.0)
    return ConeParams(direction, theta)


def compose_cone_groups(parts: ConeParams, owner: Tensor, n: int) -> ConeParams:
    """`compose_cones` over groups of any size: parts (P, D) with `owner` (P,) in [0, n) -> n composed cones. Groups
    are padded to the largest with zero-weight parts whose aperture (2π) never binds the minimum."""
    direction, mask = pad_groups(parts.direction, owner, n, 0.0)
    theta, _ = pad_groups(parts.theta, owner, n, 2 * math.pi)
    return compose_cones(ConeParams(direction, theta), mask.to(theta.dtype))
