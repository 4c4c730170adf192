"""Heads: an encoder's output (B, H) as a distribution in the configured geometry.

Each head has a `mean` map (the mixture's component means, the cone's axis, the point) and a `rest` map (mixture
weights and log-variances, the cone's aperture). The mean map starts random, or at the identity (`init: identity`, its
input being frozen features in the space the embedding should keep, e.g. a text model's), or is the identity and stays
it (`lock`): the embedding's directions are then the pretrained features themselves and only the uncertainty trains,
which on a few hundred pairs keeps the text model's semantic space instead of forgetting it.

The `rest` map reads what the mean map reads, or (``rest_dim``, `model.uncertainty_input: features`) an input of its
own that the caller passes as ``forward(x, rest_x)``: the modality's features as the shards hold them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multigeometry.config import ModelConfig
from multigeometry.geometry.cone import ConeParams, cone_from_raw
from multigeometry.geometry.mixture import MixtureParams, mixture_from_raw


class MeanMap(nn.Module):
    """(B, H) -> (B, K, D) unnormalised directions: a Linear, identity-initialised or locked to the identity."""

    def __init__(self, in_dim: int, k: int, d: int, init: str = "random", lock: bool = False) -> None:
        super().__init__()
        self.k, self.d, self.locked = k, d, lock
        if (init == "identity" or lock) and in_dim != d:
            raise ValueError(f"an identity mean map needs input and embedding dims equal, got {in_dim} and {d}")
        self.proj = None if lock else nn.Linear(in_dim, k * d)
        if init == "identity" and self.proj is not None:
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(d).repeat(k, 1))
                self.proj.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is None:
            return x[:, None, :].expand(-1, self.k, -1)
        return self.proj(x).reshape(x.shape[0], self.k, self.d)


class MixtureEmbedding(nn.Module):
    """K diagonal Gaussians: weight logits (B,K), means (B,K,D) on the unit sphere, log-variances (B,K,D) bounded by
    the config (`model.variance: isotropic`: one log-variance a component, the same in every dimension). Unit means
    keep ‖μ − μ'‖² in [0, 4] as CLIP's cosine is in [−1, 1], so the learnable logit scale starts where it does for
    CLIP; unbounded means made CSD logits saturate from the first step."""

    def __init__(self, in_dim: int, cfg: ModelConfig, init: str = "random", lock: bool = False,
                 rest_dim: int | None = None) -> None:
        super().__init__()
        self.k, self.d = cfg.n_components, cfg.embed_dim
        self.variance_dims = self.d if cfg.variance == "diagonal" else 1
        self.bounds = (cfg.logvar_min, cfg.logvar_max)
        self.mean = MeanMap(in_dim, self.k, self.d, init, lock)
        self.rest = nn.Linear(rest_dim or in_dim, self.k * (1 + self.variance_dims))

    def forward(self, x: Tensor, rest_x: Tensor | None = None) -> MixtureParams:
        out = self.rest(x if rest_x is None else rest_x)
        logits = out[:, : self.k]
        raw_logvar = out[:, self.k :].reshape(x.shape[0], self.k, self.variance_dims).expand(-1, -1, self.d)
        return mixture_from_raw(logits, F.normalize(self.mean(x), dim=-1), raw_logvar, *self.bounds)


class PointEmbedding(nn.Module):
    """CLIP's baseline: one unit vector, no variance (a mixture of one component)."""

    def __init__(self, in_dim: int, cfg: ModelConfig, init: str = "random", lock: bool = False,
                 rest_dim: int | None = None) -> None:
        super().__init__()
        self.mean = MeanMap(in_dim, 1, cfg.embed_dim, init, lock)

    def forward(self, x: Tensor, rest_x: Tensor | None = None) -> MixtureParams:
        return MixtureParams.point(F.normalize(self.mean(x)[:, 0], dim=-1))


class ConeEmbedding(nn.Module):
    """A unit direction (B,D) and an aperture (B,) in [theta_min, theta_max]."""

    def __init__(self, in_dim: int, cfg: ModelConfig, init: str = "random", lock: bool = False,
                 rest_dim: int | None = None) -> None:
        super().__init__()
        self.bounds = (cfg.theta_min, cfg.theta_max)
        self.mean = MeanMap(in_dim, 1, cfg.embed_dim, init, lock)
        self.rest = nn.Linear(rest_dim or in_dim, 1)

    def forward(self, x: Tensor, rest_x: Tensor | None = None) -> ConeParams:
        return cone_from_raw(self.mean(x)[:, 0], self.rest(x if rest_x is None else rest_x)[:, 0], *self.bounds)


HEADS = {"mixture": MixtureEmbedding, "point": PointEmbedding, "cone": ConeEmbedding}


def make_head(in_dim: int, cfg: ModelConfig, init: str = "random", lock: bool = False,
              rest_dim: int | None = None) -> nn.Module:
    return HEADS[cfg.geometry](in_dim, cfg, init, lock, rest_dim)
