"""Heads: an encoder's output (B, H) as a distribution in the configured geometry."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from multigeometry.config import ModelConfig
from multigeometry.geometry.cone import ConeParams, cone_from_raw
from multigeometry.geometry.mixture import MixtureParams, mixture_from_raw


class MixtureEmbedding(nn.Module):
    """K diagonal Gaussians: weight logits (B,K), means (B,K,D) on the unit sphere, log-variances (B,K,D) bounded by
    the config. Unit means keep ‖μ − μ'‖² in [0, 4] as CLIP's cosine is in [−1, 1], so the learnable logit scale
    starts where it does for CLIP; unbounded means made CSD logits saturate from the first step."""

    def __init__(self, in_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.k, self.d = cfg.n_components, cfg.embed_dim
        self.bounds = (cfg.logvar_min, cfg.logvar_max)
        self.proj = nn.Linear(in_dim, self.k * (1 + 2 * self.d))

    def forward(self, x: Tensor) -> MixtureParams:
        out = self.proj(x)
        logits = out[:, : self.k]
        mu, raw_logvar = out[:, self.k :].reshape(x.shape[0], self.k, 2, self.d).unbind(2)
        return mixture_from_raw(logits, F.normalize(mu, dim=-1), raw_logvar, *self.bounds)


class PointEmbedding(nn.Module):
    """CLIP's baseline: one unit vector, no variance (a mixture of one component)."""

    def __init__(self, in_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, cfg.embed_dim)

    def forward(self, x: Tensor) -> MixtureParams:
        return MixtureParams.point(F.normalize(self.proj(x), dim=-1))


class ConeEmbedding(nn.Module):
    """A unit direction (B,D) and an aperture (B,) in [theta_min, theta_max]."""

    def __init__(self, in_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.d = cfg.embed_dim
        self.bounds = (cfg.theta_min, cfg.theta_max)
        self.proj = nn.Linear(in_dim, self.d + 1)

    def forward(self, x: Tensor) -> ConeParams:
        out = self.proj(x)
        return cone_from_raw(out[:, : self.d], out[:, self.d], *self.bounds)


HEADS = {"mixture": MixtureEmbedding, "point": PointEmbedding, "cone": ConeEmbedding}


def make_head(in_dim: int, cfg: ModelConfig) -> nn.Module:
    return HEADS[cfg.geometry](in_dim, cfg)
